"""Training patches: the published ``.npy`` layout and the compact ``.npz`` store on disk, the split of a data
set into training and held-out images by source tile, and the mapping of one patch to network inputs
(:class:`TrainingDataPreprocessor`), all without TensorFlow: ``dataset.dataflow`` wraps them in tensorpack
dataflows, ``xla_runner`` uses them directly.

Two formats, told apart by suffix, read by :func:`load_patch` into the same arrays:

``.npy`` (published)
    one HxWx5 int32 array: R, G, B in 0-255, instance id, type id (type 0 for instance-only sets). At
    540x540 a patch takes 5.8 MB; CoNSeP's 27 training tiles cut at step 80 take about 40 GB.
``.npz`` (compact)
    ``np.savez_compressed`` of ``image`` HxWx3 uint8 RGB, ``inst`` HxW uint16 (int32 when an id exceeds
    65535) and ``type`` HxW uint8: the same content in about a tenth of the space before compression,
    and typically 0.2-0.5 MB per 540x540 patch after it (numbers for consep256 in the README).

No TensorFlow or tensorpack here.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataset.augment import AugParams, apply_geometry, augment_photometric, centre_crop, sample_geometry
from misc.io import InputError
from src.config import check_value
from src.maps.targets import gen_targets

__all__ = ["PATCH_FORMATS", "PATCH_CHANNELS", "save_patch", "load_patch", "patch_shape", "check_patch", "list_patches",
           "source_name", "split_by_source", "datapoint_names", "TrainingDataPreprocessor"]

PATCH_FORMATS = ("npy", "npz")  # published single int32 array; compact compressed store
PATCH_CHANNELS = 5  # R, G, B, instance id, type id


def save_patch(stem: str | os.PathLike, image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None,
               fmt: str) -> Path:
    """Write one patch as ``<stem>.npy`` or ``<stem>.npz`` (see the module docstring); returns the path.

    ``image`` HxWx3 uint8 RGB, ``inst_map`` HxW non-negative ints, ``type_map`` HxW ints in 0..255 or None
    (written as zeros).
    """
    if fmt not in PATCH_FORMATS:
        raise ValueError(f"patch format must be one of {PATCH_FORMATS}, got {fmt!r}")
    if type_map is None:
        type_map = np.zeros(inst_map.shape, np.int32)
    path = Path(f"{os.fspath(stem)}.{fmt}")
    if fmt == "npy":
        stacked = np.concatenate([image.astype(np.int32), inst_map[..., None].astype(np.int32),
                                  type_map[..., None].astype(np.int32)], axis=-1)
        np.save(path, np.ascontiguousarray(stacked))
        return path
    inst_dtype = np.uint16 if int(inst_map.max(initial=0)) <= np.iinfo(np.uint16).max else np.int32
    if int(type_map.max(initial=0)) > 255 or int(type_map.min(initial=0)) < 0:
        raise InputError(f"{path}: type ids must lie in 0..255 for the compact store")
    with open(path, "wb") as handle:
        np.savez_compressed(handle, image=np.ascontiguousarray(image, np.uint8),
                            inst=np.ascontiguousarray(inst_map, inst_dtype),
                            type=np.ascontiguousarray(type_map, np.uint8))
    return path


def load_patch(path: str | os.PathLike, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one patch of either format.

    Args:
        path: a ``.npy`` (HxWx5 int32) or ``.npz`` (``image``, ``inst``, ``type``) patch.
        min_size: smallest acceptable H and W (the network input, cfg.MODEL.INPUT_SHAPE).

    Returns:
        ``(image, labels)``: HxWx3 uint8 RGB and HxWx2 int32 (instance id, type id).
        Raises :class:`InputError` for an unreadable file, missing arrays or a wrong shape.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as store:
                missing = [k for k in ("image", "inst", "type") if k not in store.files]
                if missing:
                    raise InputError(f"{path}: compact patch lacks the arrays {missing}")
                image, inst, types = store["image"], store["inst"], store["type"]
            shape = image.shape[:2] + (PATCH_CHANNELS,) if image.ndim == 3 and image.shape[2] == 3 else image.shape
            _check_shape(path, shape, min_size)
            if inst.shape != image.shape[:2] or types.shape != image.shape[:2]:
                raise InputError(f"{path}: inst {inst.shape} / type {types.shape} do not match the image "
                                 f"{image.shape[:2]}")
            return image.astype(np.uint8, copy=False), np.stack([inst, types], axis=-1).astype(np.int32)
        patch = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable patch ({exc})") from exc
    _check_shape(path, patch.shape, min_size)
    return patch[..., :3].astype(np.uint8), patch[..., 3:].astype(np.int32)


def _check_shape(path, shape: tuple[int, ...], min_size: int) -> None:
    if len(shape) != 3 or shape[2] != PATCH_CHANNELS or shape[0] < min_size or shape[1] < min_size:
        raise InputError(f"{path}: patch has shape {tuple(shape)}; expected HxWx{PATCH_CHANNELS} "
                         f"(RGB, instance, type) with H, W >= {min_size}")


def _read_npy_header(handle) -> tuple[int, ...]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    return shape


def patch_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The patch's HxWx5 shape from the file headers alone (no pixel data is read or decompressed)."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive, archive.open("image.npy") as handle:
                shape = _read_npy_header(handle)
            return tuple(shape[:2]) + (PATCH_CHANNELS,) if len(shape) == 3 and shape[2] == 3 else tuple(shape)
        with open(path, "rb") as handle:
            return _read_npy_header(handle)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable patch ({exc})") from exc


def check_patch(path: str | os.PathLike, min_size: int) -> None:
    """Raise :class:`InputError` unless ``path``'s header shows an HxWx5 patch with H, W >= ``min_size``."""
    _check_shape(path, patch_shape(path), min_size)


def list_patches(data_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted ``.npy`` / ``.npz`` patch paths in a folder or list of folders (hidden files skipped)."""
    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    if not dirs:
        raise InputError("no patch folder given")
    paths = []
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder")
        found = sorted(str(p) for p in folder.iterdir()
                       if p.suffix in (".npy", ".npz") and not p.name.startswith("."))
        if not found:
            raise InputError(f"{folder}: no .npy/.npz patches (make them with extract_patches.py)")
        paths += found
    return paths


_CROP_SUFFIX = re.compile(r"^(.+)_\d+$")


def source_name(image_name: str) -> str:
    """The source tile an image was cut from: the name without a trailing ``_<digits>`` crop index
    (``train_10_003`` -> ``train_10``); a name without one is its own source."""
    match = _CROP_SUFFIX.match(image_name)
    return match.group(1) if match else image_name


def split_by_source(names: Sequence[str], holdout: int) -> tuple[list[str], list[str]]:
    """Split image names into (kept, held out) so that the crops of one source tile fall on one side only.

    ``holdout`` source tiles are held out, chosen evenly spaced in the sorted list of sources (a fixed,
    documented choice, so the split is reproducible without a seed). Raises ``InputError`` unless
    ``0 < holdout < number of sources``.
    """
    sources = sorted({source_name(n) for n in names})
    if not 0 < holdout < len(sources):
        raise InputError(f"cannot hold out {holdout} of {len(sources)} source tiles")
    step = len(sources) / holdout
    held = {sources[int(step * k + step / 2)] for k in range(holdout)}
    kept = [n for n in names if source_name(n) not in held]
    return kept, [n for n in names if source_name(n) in held]


def datapoint_names(nr_types: int | None) -> list[str]:
    """Names of the mapped datapoint's components, in order; they match the model's input names."""
    names = ["images", "np_target", "hv_target"]
    return names + ["tp_target"] if nr_types is not None else names


class TrainingDataPreprocessor:
    """Maps ``[path, seed]`` to ``[images, np_target, hv_target(, tp_target)]`` (see the module docstring).

    Training (``is_training=True``): geometric augmentation of the whole patch (image and labels together),
    centre crop of both to the input size, photometric augmentation of the image, then
    ``gen_targets(instance, type, output_size)`` on the cropped input-size labels, which crops its
    result to the output size. Computing targets on the input-size crop is the published order
    (``imgaug.CenterCrop(270)`` is a shape augmentor applied to image and labels before ``GenInstanceHV``);
    it gives the targets of the whole patch unless a nucleus reaches 95 px beyond the 80x80 output window.
    ``cfg.TARGETS.FROM = 'patch'`` computes them on the whole augmented patch instead.

    Validation (``is_training=False``): centre crop only, then the same targets; the seed is ignored.

    Args:
        cfg: finalised config; reads MODEL.INPUT_SHAPE, MODEL.OUTPUT_SHAPE, MODEL.NR_TYPES,
            TARGETS.MIN_INSTANCE_SIZE, TARGETS.HV_PUBLISHED_OFFSET, TARGETS.FROM (``'input'``, published, or
            ``'patch'``; anything else raises ValueError) and AUG.
        is_training: augment (True) or centre-crop only (False).

    Holds plain values only, so it pickles and runs the same in any worker process.
    """

    def __init__(self, cfg, is_training: bool = True):
        check_value("TARGETS.FROM", cfg.TARGETS.FROM)  # a hand-made cfg may not have been finalised
        self.input_shape = int(cfg.MODEL.INPUT_SHAPE)
        self.output_shape = int(cfg.MODEL.OUTPUT_SHAPE)
        self.nr_types = cfg.MODEL.NR_TYPES
        self.min_instance_size = int(cfg.TARGETS.MIN_INSTANCE_SIZE)
        self.hv_published_offset = bool(cfg.TARGETS.HV_PUBLISHED_OFFSET)
        self.aug = AugParams.from_config(cfg)
        self.is_training = is_training
        self.targets_from = cfg.TARGETS.FROM

    def __call__(self, datapoint: Sequence) -> list[np.ndarray]:
        path, seed = datapoint[0], datapoint[1]
        image, labels = load_patch(path, self.input_shape)
        return self.process(image, labels, np.random.RandomState(seed))

    def process(self, image: np.ndarray, labels: np.ndarray, rng: np.random.RandomState | None) -> list[np.ndarray]:
        """The mapping on arrays: ``image`` HxWx3 uint8 RGB, ``labels`` HxWx2 int32 (instance, type), H, W >=
        the input size; ``rng`` drives the training augmentation (unused for validation)."""
        if self.is_training:
            image, labels = apply_geometry(image, labels, sample_geometry(rng, image.shape[:2], self.aug))
        image = centre_crop(image, self.input_shape)
        if self.targets_from == "input":
            labels = centre_crop(labels, self.input_shape)
        if self.is_training:
            image = augment_photometric(np.ascontiguousarray(image), rng, self.aug)

        inst_map = np.ascontiguousarray(labels[..., 0])
        type_map = np.ascontiguousarray(labels[..., 1]) if self.nr_types is not None else None
        if type_map is not None and type_map.size and type_map.max() >= self.nr_types:
            raise InputError(f"patch holds type id {int(type_map.max())} but MODEL.NR_TYPES is {self.nr_types}; "
                             "merge CoNSeP's 7 types into 4 with extract_patches.py --merge_types")
        targets = gen_targets(inst_map, type_map, (self.output_shape, self.output_shape),
                              min_instance_size=self.min_instance_size,
                              published_offset=self.hv_published_offset)
        out = [image.astype(np.float32),
               np.asarray(targets["inst"], np.int32),  # ids: NP is binarised in the graph
               np.asarray(targets["hv"], np.float32)]
        if self.nr_types is not None:
            out.append(np.asarray(targets["tp"], np.int32))
        return out
