"""Extracted patches (``extract_patches.py``) to network input arrays, without TensorFlow.

The numpy side of the training data: listing and reading the ``.npy`` patches and mapping one patch to
``[images, np_target, hv_target(, tp_target)]`` (:class:`TrainingDataPreprocessor`). ``dataset.dataflow``
wraps these in tensorpack dataflows; ``xla_runner`` (no TensorFlow) uses them directly.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataset.augment import AugParams, apply_geometry, augment_photometric, centre_crop, sample_geometry
from misc.io import InputError
from src.targets import gen_targets

__all__ = ["TrainingDataPreprocessor", "load_patch", "list_patches", "check_patch_shape", "npy_shape",
           "datapoint_names", "PATCH_CHANNELS"]

PATCH_CHANNELS = 5  # R, G, B, instance id, type id (see extract_patches.py)


def datapoint_names(nr_types: int | None) -> list[str]:
    """Names of the mapped datapoint's components, in order; they match the model's input names."""
    names = ["images", "np_target", "hv_target"]
    return names + ["tp_target"] if nr_types is not None else names


def list_patches(data_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted paths of the ``.npy`` patches in a folder or list of folders; InputError if none or no folder."""
    dirs = [data_dir] if isinstance(data_dir, (str, os.PathLike)) else list(data_dir)
    if not dirs:
        raise InputError("no patch folder given")
    paths = []
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder")
        found = sorted(str(p) for p in folder.glob("*.npy") if not p.name.startswith("."))
        if not found:
            raise InputError(f"{folder}: no .npy patches (make them with extract_patches.py)")
        paths += found
    return paths


def load_patch(path: str | os.PathLike, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one extracted patch.

    Args:
        path: ``.npy`` holding an HxWx5 array (R, G, B, instance id, type id).
        min_size: smallest acceptable H and W (the network input, cfg.MODEL.INPUT_SHAPE).

    Returns:
        ``(image, labels)``: HxWx3 uint8 RGB and HxWx2 int32 (instance id, type id).
        Raises :class:`InputError` for an unreadable file or a wrong shape.
    """
    try:
        patch = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy patch ({exc})") from exc
    check_patch_shape(path, patch.shape, min_size)
    return patch[..., :3].astype(np.uint8), patch[..., 3:].astype(np.int32)


def check_patch_shape(path, shape: tuple[int, ...], min_size: int) -> None:
    if len(shape) != 3 or shape[2] != PATCH_CHANNELS or shape[0] < min_size or shape[1] < min_size:
        raise InputError(f"{path}: patch has shape {tuple(shape)}; expected HxWx{PATCH_CHANNELS} "
                         f"(RGB, instance, type) with H, W >= {min_size}")


def npy_shape(path: str) -> tuple[int, ...]:
    """The array shape recorded in a ``.npy`` header, without reading the data."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, _ = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy patch ({exc})") from exc
    return shape


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
        targets_from = cfg.TARGETS.FROM
        if targets_from not in ("input", "patch"):
            raise ValueError(f"TARGETS.FROM must be 'input' or 'patch', got {targets_from!r}")
        self.input_shape = int(cfg.MODEL.INPUT_SHAPE)
        self.output_shape = int(cfg.MODEL.OUTPUT_SHAPE)
        self.nr_types = cfg.MODEL.NR_TYPES
        self.min_instance_size = int(cfg.TARGETS.MIN_INSTANCE_SIZE)
        self.hv_published_offset = bool(cfg.TARGETS.HV_PUBLISHED_OFFSET)
        self.aug = AugParams.from_config(cfg)
        self.is_training = is_training
        self.targets_from = targets_from

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
               np.asarray(targets["np"], np.int32),
               np.asarray(targets["hv"], np.float32)]
        if self.nr_types is not None:
            out.append(np.asarray(targets["tp"], np.int32))
        return out
