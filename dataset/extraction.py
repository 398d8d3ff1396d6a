"""Tiles -> training patches on disk: the mirror-padded patch grid and the atomic extraction of a data set
(spec section 4). ``extract_patches.py`` is its command line.

The patch grid (:func:`window_origins`, :func:`mirror_pad`, :func:`cut_patches`) reproduces the published
extractor's ``'mirror'`` mode: pad by ``(window - step) / 2`` on each side with reflection, then slide by
``step`` and add one last window flush with the far edge, so the central ``step x step`` regions of the
windows tile the whole image and each lies inside it. Its index logic is :func:`src.infer.windows.window_grid`
(``last='flush'``), the one shared with the inference grid.

:func:`extract_dataset` cuts every image of a data set (read by :mod:`dataset.readers`) into named patches,
``<image>_<row>_<col>``, written in a patch format of :mod:`dataset.patches`. ``row``/``col`` (4 digits,
zero-padded) are the image coordinates of the top-left of the patch's central ``step x step`` region. The set is
written atomically as a whole: patches go to a sibling ``<output_dir>.partial-<pid>`` folder, which is renamed to
``<output_dir>`` only once every image has succeeded; a non-empty output folder is refused unless ``overwrite``,
which moves the old one aside to ``<output_dir>.old-<timestamp>`` (kept) once the new set is complete.

Kept apart from :mod:`dataset.patches` (the patch formats and their mapping to network inputs, which the
dataflow and the XLA runner read) because this is the writing side: it needs the readers and the tile grid,
never the augmentation or the targets. numpy/scipy/OpenCV only; no TensorFlow.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.patches import save_patch, split_by_source
from dataset.readers import get_reader, merge_types
from misc.io import InputError, move_aside, remove_stale_partials, write_json_atomic
from src.infer.windows import grid_starts, window_grid

__all__ = ["window_origins", "mirror_pad", "cut_patches", "sample_patches", "extract_dataset",
           "extract_sets"]


# --- patch grid (spec section 4: 540x540 windows, step 80, mirror padded) ---

def window_origins(length: int, window: int, step: int) -> list[int]:
    """Start offsets of windows of ``window`` px sliding by ``step`` over ``length`` px, no padding.

    Starts at 0, advances by ``step`` while a window fits, then adds one window flush with the far edge when
    the last regular one stops short of it (the published extractor's edge rule). Requires
    ``length >= window``.
    """
    if window <= 0 or step <= 0:
        raise ValueError(f"window ({window}) and step ({step}) must be positive")
    if length < window:
        raise ValueError(f"length {length} is shorter than the window {window}")
    # Windows starting at s end at s + window <= length: the flush grid of step-long pieces over the
    # length - window + step first pixels.
    return grid_starts(length - window + step, step, "flush")


def mirror_pad(array: np.ndarray, window: int, step: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad the two leading axes so that windows' central ``step`` regions cover the whole array.

    Pads ``(window - step) // 2`` before and the rest after each axis (numpy ``'reflect'``, the edge pixel
    not repeated, as the published extractor), plus, for an image shorter than ``step`` along an axis, enough
    extra reflection after it for one window to fit (that window's centre then runs past the image edge).

    Returns:
        ``(padded, (pad_top, pad_left))``; ``padded`` has the dtype and trailing axes of ``array``.
    """
    pads = [tuple(window_grid(size, window, step, "flush")[1:]) for size in array.shape[:2]]
    pads += [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads, mode="reflect"), (pads[0][0], pads[1][0])


def cut_patches(array: np.ndarray, window: int, step: int,
                mode: str = "mirror") -> list[tuple[tuple[int, int], np.ndarray]]:
    """Cut ``array`` (HxW[xC], any dtype) into ``window x window`` patches on a ``step`` grid.

    Args:
        array: the tile, e.g. HxWx5 int32 (R, G, B, instance id, type id).
        window: patch side (cfg.DATA.PATCH_SIZE, 540).
        step: grid stride (cfg.DATA.PATCH_STEP, 80 = the network output).
        mode: ``'mirror'`` (published training extraction; see :func:`mirror_pad`) or ``'valid'`` (no
            padding; the tile must be at least one window large).

    Returns:
        ``[((row, col), patch), ...]`` in row-major order; ``patch`` is a view into a (padded) copy,
        ``window x window`` with the trailing axes of ``array``. In ``'mirror'`` mode ``(row, col)`` is the
        top-left, in image pixels, of the patch's central ``step x step`` region (the area the network's
        output covers), and ``patch[c:c+step, c:c+step] == array[row:row+step, col:col+step]`` with
        ``c = (window - step) // 2``. In ``'valid'`` mode it is the patch's own top-left.
    """
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"array must be at least 2-D, got shape {array.shape}")
    if mode == "mirror":
        padded, _ = mirror_pad(array, window, step)
        rows, cols = (window_grid(size, window, step, "flush")[0] for size in array.shape[:2])
    elif mode == "valid":
        padded = array
        rows, cols = (window_origins(size, window, step) for size in array.shape[:2])
    else:
        raise ValueError(f"unknown mode {mode!r}; choose 'mirror' or 'valid'")
    return [((r, c), padded[r:r + window, c:c + window]) for r in rows for c in cols]


def sample_patches(name: str, image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None,
                   patch_size: int, step: int) -> list[tuple[str, np.ndarray]]:
    """The named patches of one image: ``[(f"{name}_{row:04d}_{col:04d}", HxWx5 int32), ...]``
    (R, G, B, instance id, type id).

    ``image`` HxWx3 uint8 RGB, ``inst_map`` / ``type_map`` HxW int32 (``None`` -> type 0 everywhere).
    """
    if type_map is None:
        type_map = np.zeros_like(inst_map)
    stacked = np.concatenate([image.astype(np.int32), inst_map[..., None].astype(np.int32),
                              type_map[..., None].astype(np.int32)], axis=-1)
    return [(f"{name}_{row:04d}_{col:04d}", patch)
            for (row, col), patch in cut_patches(stacked, patch_size, step, mode="mirror")]


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise InputError(f"{output_dir}: folder is not empty; choose another --output_dir or pass --overwrite")


def _install(partial: Path, output_dir: Path, overwrite: bool) -> Path | None:
    """Rename the complete ``partial`` folder to ``output_dir``; returns where an old non-empty
    ``output_dir`` was moved (``<output_dir>.old-<timestamp>``), or None."""
    _check_output(output_dir, overwrite)  # again: the folder may have changed during the run
    previous = None
    if output_dir.is_dir():
        if any(output_dir.iterdir()):
            previous = move_aside(output_dir)
        else:
            output_dir.rmdir()
    try:
        partial.rename(output_dir)
    except OSError:
        if previous is not None:
            previous.rename(output_dir)  # put the old set back
        raise
    return previous


def extract_dataset(input_dir, output_dir, kind: str, patch_size: int, step: int,
                    type_merge: dict | None = None, overwrite: bool = False, progress: bool = True,
                    fmt: str = "npy", names: list[str] | None = None) -> dict:
    """Extract every image of the data set at ``input_dir`` into ``output_dir``; returns a summary dict
    (``images``, ``patches``, ``bytes``, ``max_type_before_merge``, ``previous``: where ``--overwrite``
    moved the old non-empty output folder, or None).

    ``type_merge`` (old -> new type id, e.g. ``cfg.DATA.TYPE_MERGE``) relabels the types with
    :func:`dataset.readers.merge_types`; only for typed kinds ('consep'). All patches are written to a
    sibling ``<output_dir>.partial-<pid>`` folder that replaces ``output_dir`` only when every image
    succeeded (see the module docstring); on failure ``output_dir`` is untouched. ``fmt``: 'npy' or 'npz'
    (:mod:`dataset.patches`). ``names``: extract only these images (default all).
    """
    if patch_size < step or step <= 0:
        raise InputError(f"--patch_size ({patch_size}) must be >= --step ({step}) > 0")
    if type_merge is not None and kind != "consep":
        raise InputError(f"--merge_types needs typed labels (--kind consep): dataset kind {kind!r} has no type "
                         "labels to merge")
    reader = get_reader(kind, input_dir)
    output_dir = Path(os.path.abspath(output_dir))
    _check_output(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f"{output_dir.name}.partial-{os.getpid()}")
    if partial.exists():  # left by a killed run that had this process id; never a live one
        shutil.rmtree(partial)
    # Partial folders of killed runs (SIGKILL skips every cleanup) hold GBs; running processes' are kept.
    ours = re.compile(rf"^{re.escape(output_dir.name)}\.partial-(\d+)$")
    for stale in remove_stale_partials(output_dir.parent, ours):
        print(f"removed {stale}, left by an interrupted run", file=sys.stderr)
    partial.mkdir()
    summary = {"images": 0, "patches": 0, "bytes": 0, "max_type_before_merge": 0, "previous": None}
    try:
        wanted = set(reader.names if names is None else names)
        for sample in tqdm(reader.samples(wanted), total=len(wanted), desc="images", unit="img", disable=not progress):
            type_map = sample.type_map
            if type_map is not None:
                summary["max_type_before_merge"] = max(summary["max_type_before_merge"],
                                                       int(type_map.max(initial=0)))
                if type_merge is not None:
                    try:
                        type_map = merge_types(type_map, type_merge)
                    except InputError as exc:
                        raise InputError(f"{sample.name}: {exc}") from None
            for patch_name, patch in sample_patches(sample.name, sample.image, sample.inst_map, type_map,
                                                    patch_size, step):
                path = save_patch(partial / patch_name, patch[..., :3].astype(np.uint8), patch[..., 3],
                                  patch[..., 4], fmt)
                summary["patches"] += 1
                summary["bytes"] += path.stat().st_size
            summary["images"] += 1
        previous = _install(partial, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary["previous"] = str(previous) if previous is not None else None
    return summary


def extract_sets(input_dir, output_dir, kind: str, patch_size: int, step: int, holdout: int = 0,
                 holdout_dir=None, **kwargs) -> list[tuple[str, dict]]:
    """:func:`extract_dataset` into ``output_dir``, or, with ``holdout > 0``, split by source tile: the crops of
    ``holdout`` source tiles (:func:`dataset.patches.split_by_source`) go to ``holdout_dir``, the rest to
    ``output_dir``, and both get ``split.json`` (``{"holdout_sources": K, "train": [...], "holdout": [...]}``)
    once both sets are complete.

    ``kwargs`` go to :func:`extract_dataset`. Returns ``[(folder, summary), ...]`` in that order.
    """
    if (holdout > 0) != (holdout_dir is not None):
        raise InputError("a holdout count and a holdout folder go together")
    splits = [(output_dir, None)]
    if holdout:
        kept, held = split_by_source(get_reader(kind, input_dir).names, holdout)
        splits = [(output_dir, kept), (holdout_dir, held)]
    summaries = [(str(folder), extract_dataset(input_dir, folder, kind, patch_size, step, names=names, **kwargs))
                 for folder, names in splits]
    if holdout:
        record = {"holdout_sources": holdout, "train": splits[0][1], "holdout": splits[1][1]}
        for folder, _ in splits:
            write_json_atomic(Path(folder) / "split.json", record, indent=1)
    return summaries
