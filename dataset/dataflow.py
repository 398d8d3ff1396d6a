"""tensorpack dataflows from extracted patches (``extract_patches.py``) to network input batches.

Pipeline (one factory each, :func:`get_train_dataflow` and :func:`get_valid_dataflow`)::

    PatchDataFlow          [path, seed]           lists the .npy patches; shuffles with self.rng
      -> map with TrainingDataPreprocessor         (ZMQ worker processes, or in-process when num_workers=0)
         [images, np_target, hv_target(, tp_target)]
      -> BatchData

Each datapoint carries its own augmentation seed drawn from the source's ``self.rng`` in the main process,
so every patch gets a different random draw whichever worker maps it, a run is reproducible from one seed,
and nothing touches the global ``random``/``np.random`` state (the published loader shuffled with the global
``random`` inside every forked process, so workers could yield duplicates).

Datapoint components, in the order of :func:`datapoint_names` (the graph's ``inputs()``):

- ``images``: 270x270x3 float32 RGB in [0, 255] (cfg.MODEL.INPUT_SHAPE);
- ``np_target``: 80x80 int32 in {0, 1} (cfg.MODEL.OUTPUT_SHAPE);
- ``hv_target``: 80x80x2 float32 in [-1, 1], channel 0 horizontal (x), channel 1 vertical (y);
- ``tp_target``: 80x80 int32 type id in [0, nr_types), only when cfg.MODEL.NR_TYPES is not None.

Run ``python -m benchmarks.dataflow_speed`` for throughput.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorpack.dataflow import BatchData, MapData, MultiProcessMapDataZMQ, RNGDataFlow

from dataset.augment import AugParams, apply_geometry, augment_photometric, centre_crop, sample_geometry
from misc.io import InputError
from misc.proc import DieWithParent
from src.targets import gen_targets

__all__ = [
    "PatchDataFlow", "TrainingDataPreprocessor", "load_patch", "datapoint_names", "resolve_num_workers",
    "get_train_dataflow", "get_valid_dataflow", "PATCH_CHANNELS",
]

PATCH_CHANNELS = 5  # R, G, B, instance id, type id (see extract_patches.py)
_SEED_RANGE = 2**31 - 1


def datapoint_names(nr_types: int | None) -> list[str]:
    """Names of the mapped datapoint's components, in order; they match the model's input names."""
    names = ["images", "np_target", "hv_target"]
    return names + ["tp_target"] if nr_types is not None else names


def resolve_num_workers(num_workers: int | str | None, cfg=None) -> int:
    """Worker processes to use: an int as given (0 = map in the main process), ``None`` -> ``cfg.DATA.NUM_WORKERS``,
    ``'auto'`` -> the CPU cores this process may use minus one (the main process batches and feeds), at least 1."""
    if num_workers is None:
        num_workers = cfg.DATA.NUM_WORKERS if cfg is not None else "auto"
    if num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores - 1)
    num_workers = int(num_workers)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 or 'auto', got {num_workers}")
    return num_workers


def _list_patches(data_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
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
    _check_patch_shape(path, patch.shape, min_size)
    return patch[..., :3].astype(np.uint8), patch[..., 3:].astype(np.int32)


def _check_patch_shape(path, shape: tuple[int, ...], min_size: int) -> None:
    if len(shape) != 3 or shape[2] != PATCH_CHANNELS or shape[0] < min_size or shape[1] < min_size:
        raise InputError(f"{path}: patch has shape {tuple(shape)}; expected HxWx{PATCH_CHANNELS} "
                         f"(RGB, instance, type) with H, W >= {min_size}")


def _npy_shape(path: str) -> tuple[int, ...]:
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


class PatchDataFlow(RNGDataFlow):
    """Yields ``[path, seed]`` for every ``.npy`` patch in ``data_dir`` (a folder or a list of folders).

    ``path`` is a str; ``seed`` an int in [0, 2**31 - 1) from ``self.rng``, to seed that patch's augmentation.
    With ``shuffle`` the order is a fresh permutation of ``self.rng`` each pass, else sorted by path. ``seed``
    fixes ``self.rng`` at :meth:`reset_state` for reproducible runs; by default tensorpack seeds it from time
    and process id. Every patch's header is checked at construction (a fraction of a millisecond each): a
    malformed patch found later, inside a worker process, would stall the pipeline instead of failing.
    """

    def __init__(self, data_dir, shuffle: bool = True, min_size: int = 1, seed: int | None = None):
        self.paths = _list_patches(data_dir)
        self.shuffle = shuffle
        self.seed = seed
        for path in self.paths:
            _check_patch_shape(path, _npy_shape(path), min_size)

    def reset_state(self):
        super().reset_state()
        if self.seed is not None:
            self.rng = np.random.RandomState(self.seed)

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        order = self.rng.permutation(len(self.paths)) if self.shuffle else range(len(self.paths))
        for index in order:
            yield [self.paths[index], int(self.rng.randint(_SEED_RANGE))]


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


def _mapped(source, mapper, workers: int, buffer_size: int, strict: bool):
    """``source`` mapped in this process (``workers == 0``, for debugging and tests) or by ZMQ workers.

    ``strict``: every datapoint exactly once per pass (validation); otherwise an endless stream.
    """
    if workers == 0:
        return MapData(source, mapper)
    # Workers die with the main process even when it is SIGKILLed (tensorpack would need python-prctl).
    return MultiProcessMapDataZMQ(source, num_proc=workers, map_func=DieWithParent(mapper),
                                  buffer_size=min(buffer_size, len(source)), strict=strict)


def get_train_dataflow(cfg, data_dir, batch_size: int, num_workers: int | str | None = None,
                       seed: int | None = None, buffer_size: int = 200):
    """Shuffled, augmented training batches from the patches in ``data_dir`` (folder or list of folders).

    Args:
        cfg: finalised config.
        batch_size: patches per batch; an incomplete last batch is dropped.
        num_workers: ZMQ worker processes (``None`` -> cfg.DATA.NUM_WORKERS, ``'auto'`` -> cores - 1);
            0 maps in the main process, for debugging and tests.
        seed: fixes the shuffle and every augmentation draw (``None``: seeded from time and pid).
        buffer_size: datapoints in flight between the workers and the main process.

    Returns:
        A dataflow of lists of batched components (:func:`datapoint_names`); ``len()`` = batches per epoch.
        With workers the stream is endless (tensorpack's non-strict ``MultiProcessMapDataZMQ`` keeps
        re-reading the source, reshuffled each pass); in-process it ends after one epoch.
    """
    source = PatchDataFlow(data_dir, shuffle=True, min_size=int(cfg.MODEL.INPUT_SHAPE), seed=seed)
    if len(source) < batch_size:
        raise InputError(f"{len(source)} patches in {data_dir} cannot fill one batch of {batch_size}")
    flow = _mapped(source, TrainingDataPreprocessor(cfg, is_training=True),
                   resolve_num_workers(num_workers, cfg), buffer_size, strict=False)
    return BatchData(flow, batch_size, remainder=False)


def get_valid_dataflow(cfg, data_dir, batch_size: int, num_workers: int = 0):
    """Validation batches: every patch exactly once per pass, centre crop only, the last batch may be short.

    In-process and in sorted order by default; with ``num_workers > 0`` mapped by ZMQ workers in tensorpack's
    strict mode (the same set each pass, order not kept). Components as :func:`datapoint_names`.
    """
    source = PatchDataFlow(data_dir, shuffle=False, min_size=int(cfg.MODEL.INPUT_SHAPE))
    flow = _mapped(source, TrainingDataPreprocessor(cfg, is_training=False),
                   resolve_num_workers(num_workers, cfg), buffer_size=200, strict=True)
    return BatchData(flow, batch_size, remainder=True)
