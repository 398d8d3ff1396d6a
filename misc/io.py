"""Reading images and CoNSeP-format labels with clear errors, and writing results atomically.

The one place where files enter and leave the project, so every CLI reports bad input the same way:
an :class:`InputError` whose message names the file and the reason, meant to be printed as one line.
numpy/scipy/OpenCV only.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import secrets
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from misc.arrays import check_label_map, column_bands

__all__ = [
    "InputError", "DiskFullError", "check_image_header", "read_image_rgb", "load_label_mat", "check_integer_map",
    "save_label_mat", "ScratchArray", "atomic_path", "check_writable", "pid_alive", "remove_stale_partials",
    "remove_stale_temporaries", "move_aside", "colour_instances_to_ids", "IMAGE_SUFFIXES", "write_json_atomic",
    "json_list_writer", "write_json_list_atomic",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# OpenCV's image codecs (libtiff, libpng, ...) print their complaints about a bad file to the console ("[ WARN:0@0.3]
# global grfmt_tiff.cpp:123 TIFF_Warning TIFFReadDirectory: ...", several per file), beside the one line naming the
# file that every reader here raises instead (InputError). Every module that reads images imports this one, Dask
# workers included.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class InputError(ValueError):
    """Bad user input (missing, unreadable or malformed file); the message is one printable line."""


class DiskFullError(OSError):
    """No space left writing a result (``ENOSPC``): the run must stop, not skip image after image."""


class NonFiniteMapsError(RuntimeError):
    """The network answered NaN or infinity: every later image would be as wrong, so the run stops."""


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return path


def check_image_header(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` unless ``path`` is a non-empty file whose header OpenCV decodes.

    The check of an input before a model loads: it reads the header only (a fraction of a millisecond), so a file
    that is not an image is reported at once. What only the pixels show (a file cut short, grayscale, 16-bit) is
    found by :func:`read_image_rgb`, with the same messages.
    """
    path = _existing_file(path)
    if cv2.imcount(str(path)) < 1:  # 0: no decoder for the file, or its header does not decode
        raise InputError(f"{path}: not a readable image")


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an H&E image as HxWx3 uint8 RGB.

    RGBA is reduced to RGB (the alpha channel is dropped). Grayscale (with or without alpha), 16-bit, empty or
    unreadable files raise :class:`InputError`: HoVer-Net is trained on 8-bit RGB and would silently produce
    nonsense on anything else.
    """
    path = _existing_file(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise InputError(f"{path}: not a readable image")
    if image.dtype != np.uint8:
        raise InputError(f"{path}: {image.dtype} image; an 8-bit RGB image is required (convert 16-bit to 8-bit)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise InputError(f"{path}: grayscale image; an RGB H&E image is required")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"{path}: unsupported image shape {image.shape}")
    if image.shape[2] == 4:
        # OpenCV expands grey + alpha (PNG colour type 4) to four channels with B = G = R
        if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
            raise InputError(f"{path}: grayscale image with alpha; an RGB H&E image is required")
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: a large tile is not held twice
    return np.ascontiguousarray(image)


def load_label_mat(path: str | os.PathLike, with_types: bool = False,
                   need_inst_map: bool = True) -> dict[str, np.ndarray]:
    """Load a CoNSeP-format label ``.mat``.

    Returns ``inst_map`` (HxW int32, 0 background, ids any non-negative integers; with
    ``need_inst_map=False`` only if the file has one: point annotations such as CRCHisto have none) and, when
    ``with_types``, ``type_map`` (HxW int32, if present), ``inst_type`` (N int32) and
    ``inst_centroid`` (Nx2 float64, x then y). Raises :class:`InputError` for a missing or corrupt
    file, a missing key, a non-2D or non-integer map, or negative ids.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for corrupt files
        raise InputError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
    out = {"inst_map": _integer_map(mat, "inst_map", path)} if need_inst_map or "inst_map" in mat else {}
    if with_types:
        for key in ("inst_type", "inst_centroid"):
            if key not in mat:
                raise InputError(f"{path}: missing key '{key}' (needed for type evaluation)")
        inst_type = np.asarray(mat["inst_type"]).reshape(-1)
        centroid = np.asarray(mat["inst_centroid"], dtype=np.float64)
        if centroid.size == 0:
            centroid = centroid.reshape(0, 2)
        if centroid.ndim != 2 or centroid.shape[1] != 2:
            raise InputError(f"{path}: 'inst_centroid' must be Nx2 (x, y), got shape {centroid.shape}")
        if len(inst_type) != len(centroid):
            raise InputError(
                f"{path}: 'inst_type' has {len(inst_type)} entries but 'inst_centroid' has {len(centroid)}")
        out["inst_type"] = inst_type.astype(np.int32)
        out["inst_centroid"] = centroid
        if "type_map" in mat:
            out["type_map"] = _integer_map(mat, "type_map", path)
    return out


def _integer_map(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise InputError(f"{path}: missing key '{key}'")
    return check_integer_map(mat[key], path, f"'{key}'")


def check_integer_map(array, path, what: str = "instance map") -> np.ndarray:
    """``array`` as HxW int32 after checking it is a 2-D map of non-negative integers.

    Float maps holding whole numbers are accepted (MATLAB saves doubles); anything else raises
    :class:`InputError` naming ``path`` and ``what``.
    """
    try:
        array = check_label_map(array, what, whole_floats=True)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    if array.size and array.max() > np.iinfo(np.int32).max:
        raise InputError(f"{path}: {what} holds ids beyond the int32 range")
    return array.astype(np.int32)


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Raise :class:`InputError` (one line naming ``flag`` and ``folder``) unless ``folder`` can be written.

    Checked before any slow work (loading a model, reading a data set), so a typo or a read-only disk
    fails at once. ``folder`` need not exist: the nearest existing ancestor must be a folder in which a
    file can be created (probed with a temporary file, which also catches read-only mounts and root's
    limits that permission bits do not show). Nothing is left behind.
    """
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {folder}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
    except OSError as exc:
        raise InputError(f"{flag} {folder}: cannot write in {existing} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


LOCK_NAME = ".hovernet.lock"  # in a run or output folder while a run writes into it (hidden: not an output)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str):
    """Hold an exclusive lock on ``folder`` (created if missing) while a run writes into it.

    A second run into the same folder raises :class:`InputError` in one line naming the holder (pid, host, start)
    instead of mixing its checkpoints or outputs with the first one's. The lock is the kernel's (``flock`` on
    ``<folder>/.hovernet.lock``): it ends with the process however that ends, SIGKILL included, so a lock left
    by a killed run never blocks the next one. ``what`` names the holder's kind in the message ("train.py run").
    """
    import fcntl
    import socket

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise InputError(f"{folder} is in use by another {what} ({holder}); wait for it to end or choose another "
                         "folder") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 .encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMPORARY = re.compile(r"^\..*\.(\d+)-[^.]+\.part(\.[^.]*)?$")  # atomic_path's names: .<stem>.<pid>-<rand>.part<ext>


def remove_stale_partials(folder: str | os.PathLike, pattern: re.Pattern, *, own_too: bool = False) -> list[Path]:
    """Remove the entries of ``folder`` whose name matches ``pattern`` (group 1: a writer's pid) and whose
    writer is no longer running: files and folders a killed run left half-written. Returns them.

    ``own_too``: this process's entries too, for a process that writes nothing more (stopped by a Ctrl-C or
    SIGTERM, which can land between a temporary's creation and the block that would remove it)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        pid = int(match.group(1)) if match else None
        if match and (own_too if pid == os.getpid() else not pid_alive(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def remove_stale_temporaries(folder: str | os.PathLike, *, own_too: bool = False) -> list[Path]:
    """Remove :func:`atomic_path` temporary files in ``folder`` left by killed processes (``own_too``: and by this
    one, see :func:`remove_stale_partials`); returns them."""
    return remove_stale_partials(folder, _TEMPORARY, own_too=own_too)


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` to a free sibling ``<name>.old-<YYYYmmdd-HHMMSS>[-N]`` and return it.

    How every CLI makes room for a fresh result without deleting the previous one; the ``-N`` suffix
    keeps two moves in the same second from landing in (or on) an earlier backup.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.old-{stamp}")
    count = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.old-{stamp}-{count}")
        count += 1
    path.rename(backup)
    return backup


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted run never leaves a half-written file under the final name, so "the output exists"
    can be trusted to mean "the output is complete". The temporary name keeps the suffix so writers
    that pick a format from it (OpenCV) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name tells a later run whether the file is stale (see remove_stale_temporaries).
    tmp = _new_temporary(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
            raise DiskFullError(errno.ENOSPC, f"disk full writing {path}") from exc
        raise


def _new_temporary(path: Path) -> Path:
    """Create an empty new file ``.<stem>.<pid>-<random>.part<suffix>`` beside ``path`` and return its path.

    Created with mode 0o666 and ``O_EXCL``, so the kernel gives it exactly the permissions a plain ``open()``
    would (the umask, and a folder's default ACL, applied as usual) without this process reading or
    changing its umask (``os.umask`` can only be read by setting it, which would race with other threads).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.part{path.suffix}"
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def write_json_atomic(path: str | os.PathLike, obj, *, newline: bool = False, **dumps_kwargs) -> Path:
    """Write ``obj`` as JSON to ``path`` through :func:`atomic_path`; returns ``path``.

    ``dumps_kwargs`` go to :func:`json.dumps` (``indent``, ``sort_keys``, ``allow_nan=False`` for files strict
    readers such as QuPath load, ``default``); ``newline`` ends the file with one. The text is made before the
    temporary file, so an object that cannot be serialised leaves nothing behind.
    """
    text = json.dumps(obj, **dumps_kwargs) + ("\n" if newline else "")
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def json_list_writer(path: str | os.PathLike, head: dict, key: str, *, compress: bool = False, **dumps_kwargs):
    """Write ``{**head, key: [items...]}`` as JSON to ``path`` through :func:`atomic_path`, an item per call of
    the yielded ``append(item)``; the file appears under ``path`` when the block ends without an error.

    The bytes are those of ``json.dumps`` of the whole object (default separators, no indent), but only one item
    is held as text: the nuclei of a large tile or a slide are many Python objects once converted. ``head`` must
    not be empty (it supplies the opening brace); ``dumps_kwargs`` as for :func:`write_json_atomic`
    (``allow_nan``); ``compress``: gzip the file. An item that cannot be serialised stops the write and leaves no
    file.
    """
    if not head or key in head:
        raise ValueError(f"head must be a non-empty object without the key {key!r}")
    count = 0
    with atomic_path(path) as tmp, (gzip.open(tmp, "wt", encoding="utf-8") if compress
                                    else open(tmp, "w", encoding="utf-8")) as handle:
        handle.write(json.dumps(head, **dumps_kwargs)[:-1] + f", {json.dumps(key)}: [")

        def append(item) -> None:
            nonlocal count
            handle.write((", " if count else "") + json.dumps(item, **dumps_kwargs))
            count += 1

        yield append
        handle.write("]}")


def write_json_list_atomic(path: str | os.PathLike, head: dict, key: str, items: Iterable, **dumps_kwargs) -> Path:
    """:func:`json_list_writer` over ``items``."""
    with json_list_writer(path, head, key, **dumps_kwargs) as append:
        for item in items:
            append(item)
    return Path(path)


def save_label_mat(path: str | os.PathLike, inst_map, type_map=None, inst_type: np.ndarray | None = None,
                   inst_centroid: np.ndarray | None = None) -> None:
    """Write a CoNSeP-format ``.mat`` atomically (``inst_type`` Nx1, ``inst_centroid`` Nx2 (x, y)).

    The maps (written as int32) may be arrays or anything with an HxW ``shape`` whose ``[:, c0:c1]`` gives those
    columns as an array (a :class:`ScratchArray`; a type map computed band by band): they are converted and
    compressed a band of columns at a time (:func:`misc.arrays.column_bands`), so writing holds 16 MB of them
    besides the inputs, where ``scipy.io.savemat`` made three full-size copies of each map (its bytes, a stream of
    them, that stream's value). The bytes are savemat's
    (``do_compression=True``; header, then the variables in this order), which also writes everything but the
    maps' data.
    """
    maps = {"inst_map": inst_map}
    if type_map is not None:
        maps["type_map"] = type_map
    data = {}
    if inst_type is not None:
        data["inst_type"] = np.asarray(inst_type, dtype=np.int32).reshape(-1, 1)
    if inst_centroid is not None:
        data["inst_centroid"] = np.asarray(inst_centroid, dtype=np.float64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            scipy.io.savemat(handle, {}, do_compression=True)  # the 128-byte header (at offset 0 only)
            for name, array in maps.items():
                if not hasattr(array, "shape"):
                    array = np.asarray(array, dtype=np.int32)
                if len(array.shape) == 2 and array.shape[0] * array.shape[1] > 1:
                    _write_compressed_map(handle, name, array)
                else:  # not a map, or one too small for a data element of its own: savemat as is
                    scipy.io.savemat(handle, {name: np.asarray(array, dtype=np.int32)}, do_compression=True)
            if data:
                scipy.io.savemat(handle, data, do_compression=True)  # past the header: variables only


# MAT-file level 5 codes (MathWorks, "MAT-File Format"): element data types and the int32 array class.
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MX_INT32_CLASS = 12


def _int32_matrix_head(name: bytes, height: int, width: int) -> bytes:
    """An HxW int32 matrix element up to its data, byte for byte as scipy.io.savemat writes it (native byte
    order; tag, array flags, dimensions, name padded to 8 bytes or packed into its tag when <= 4, data tag)."""
    size = height * width * 4
    if len(name) <= 4:
        name_element = struct.pack("=I", (len(name) << 16) | _MI_INT8) + name.ljust(4, b"\0")
    else:
        name_element = struct.pack("=II", _MI_INT8, len(name)) + name + b"\0" * (-len(name) % 8)
    body = (struct.pack("=IIII", _MI_UINT32, 8, _MX_INT32_CLASS, 0) + struct.pack("=IIii", _MI_INT32, 8, height, width)
            + name_element + struct.pack("=II", _MI_INT32, size))
    total = len(body) + size + (-size % 8)
    if total >= 2 ** 32:
        raise ValueError(f"a {height}x{width} map is too large for a MAT-file level 5 element")
    return struct.pack("=II", _MI_MATRIX, total) + body


def _write_compressed_map(handle, name: str, array) -> None:
    """Append ``array`` (HxW, any integer map) as a compressed int32 variable at the handle's position.

    zlib streams its input in pieces to the same bytes as ``zlib.compress`` of the whole, so the element equals
    savemat's; its length, which leads it, is patched in at the end.
    """
    height, width = array.shape
    start = handle.tell()
    handle.write(struct.pack("=II", _MI_COMPRESSED, 0))
    compressor = zlib.compressobj()
    handle.write(compressor.compress(_int32_matrix_head(name.encode("latin1"), height, width)))
    for band in column_bands(array):
        handle.write(compressor.compress(np.asarray(band, dtype=np.int32).tobytes(order="F")))
    handle.write(compressor.compress(b"\0" * (-(height * width * 4) % 8)))
    handle.write(compressor.flush())
    end = handle.tell()
    handle.seek(start + 4)
    handle.write(struct.pack("=I", end - start - 8))
    handle.seek(end)


class ScratchArray:
    """An array kept in a scratch file instead of in memory, read and written a rectangle at a time: what a tile
    larger than ``INFER.BLOCK_SIZE`` (``src/infer/tiles.py``) keeps of itself while its blocks are processed (its
    network maps, 13 bytes a pixel, and its label map, 4: 2.4 GB for 12000x12000 px, which would otherwise sit in
    memory beside the image and the network).

    ``shape`` (H, W, ...) and ``dtype`` as for an ndarray; ``order`` 'C' keeps rows together (a rectangle is a run
    of each of its rows), 'F' columns (the label map: the ``.mat`` writer reads whole columns, one contiguous piece
    of the file per band). Pages are mapped only while used: :meth:`view` maps the rows (or columns) of a rectangle
    and they leave memory with the last view; ``array[r0:r1, c0:c1]`` returns a copy and assigning to it writes
    through. ``np.asarray(array)`` reads all of it. Make one with :meth:`scratch`.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.int32, order: str = "C"):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.order = order

    @classmethod
    @contextlib.contextmanager
    def scratch(cls, folder: str | os.PathLike, name: str, shape: tuple[int, ...], dtype=np.int32,
                order: str = "C"):
        """A zero array in a temporary file beside ``folder/<name>``, removed on exit (named like
        :func:`atomic_path`'s temporaries, so a killed run's file is removed by the next run's
        :func:`remove_stale_temporaries`). Its space is reserved first: a full disk raises
        :class:`DiskFullError` here, not a crash (SIGBUS) when a mapped page is written."""
        tmp = _new_temporary(Path(folder) / name)
        try:
            fd = os.open(tmp, os.O_RDWR)
            try:
                size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
                else:  # macOS: a sparse file (a full disk then shows when a page is written)
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
            yield cls(tmp, shape, dtype, order)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
                raise DiskFullError(errno.ENOSPC, f"disk full writing {tmp}") from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def view(self, key) -> np.ndarray:
        """The rectangle ``[r0:r1, c0:c1]`` mapped for reading and writing (rows, or columns with order 'F', of
        all the other axis are mapped; only the rectangle's pages are touched)."""
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) and k.step in (None, 1)
                                                                   for k in key)):
            raise TypeError(f"a ScratchArray is read by [r0:r1, c0:c1], got {key!r}")
        (r0, r1, _), (c0, c1, _) = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        r1, c1 = max(r0, r1), max(c0, c1)
        inner = self.shape[2:]
        if (r1 - r0) * (c1 - c0) == 0:
            return np.zeros((r1 - r0, c1 - c0) + inner, self.dtype)
        pixel = int(np.prod(inner)) * self.dtype.itemsize
        if self.order == "F":
            return np.memmap(self.path, self.dtype, "r+", offset=c0 * self.shape[0] * pixel,
                             shape=(self.shape[0], c1 - c0) + inner, order="F")[r0:r1]
        return np.memmap(self.path, self.dtype, "r+", offset=r0 * self.shape[1] * pixel,
                         shape=(r1 - r0, self.shape[1]) + inner)[:, c0:c1]

    def __getitem__(self, key) -> np.ndarray:
        return np.array(self.view(key))

    def __setitem__(self, key, value) -> None:
        self.view(key)[...] = value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[:, :]
        return array if dtype is None else array.astype(dtype)


def colour_instances_to_ids(rgb: np.ndarray) -> np.ndarray:
    """Turn a colour-coded instance map (each non-black colour one instance) into HxW int32 ids 1..N.

    Ids follow the order of the packed colour values, so the result is deterministic.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InputError(f"colour-coded instance map must be HxWx3, got shape {rgb.shape}")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    _, ids = np.unique(packed, return_inverse=True)
    ids = ids.reshape(packed.shape).astype(np.int32)
    if np.any(packed == 0):  # black is background and sorts first
        return ids
    return ids + 1
