"""tensorpack dataflows from extracted patches (``extract_patches.py``) to network input batches.

Pipeline (one factory each, :func:`get_train_dataflow` and :func:`get_valid_dataflow`)::

    PatchDataFlow          [path, seed]           lists the .npy/.npz patches; shuffles with self.rng
      -> map with TrainingDataPreprocessor         (ZMQ worker processes, or in-process when num_workers=0)
         [images, np_target, hv_target(, tp_target)]
      -> BatchData

Each datapoint carries its own augmentation seed drawn from the source's ``self.rng`` in the main process,
so every patch gets a different random draw whichever worker maps it, a run is reproducible from one seed,
and nothing touches the global ``random``/``np.random`` state (the published loader shuffled with the global
``random`` inside every forked process, so workers could yield duplicates).

Datapoint components, in the order of :func:`datapoint_names` (the graph's ``inputs()``):

- ``images``: 270x270x3 float32 RGB in [0, 255] (cfg.MODEL.INPUT_SHAPE);
- ``np_target``: 80x80 int32 instance ids, 0 background (cfg.MODEL.OUTPUT_SHAPE): the released label
  channel 0; the graph binarises it for NP and uses the ids as MSGE focus (cfg.LOSS.MSGE_FOCUS);
- ``hv_target``: 80x80x2 float32 in [-1, 1], channel 0 horizontal (x), channel 1 vertical (y);
- ``tp_target``: 80x80 int32 type id in [0, nr_types), only when cfg.MODEL.NR_TYPES is not None.

Run ``python -m benchmarks.dataflow_speed`` for throughput.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tensorpack.dataflow import BatchData, MapData, MultiProcessMapDataZMQ, RNGDataFlow

# the numpy side (patch files, the training mapper) lives in dataset.patches, without TensorFlow; re-exported
from dataset.patches import (
    PATCH_CHANNELS,
    TrainingDataPreprocessor,
    check_patch,
    datapoint_names,
    list_patches,
    load_patch,
    patch_shape,
)
from misc.io import InputError
from misc.proc import DieWithParent

__all__ = [
    "PatchDataFlow", "TrainingDataPreprocessor", "load_patch", "datapoint_names", "resolve_num_workers",
    "get_train_dataflow", "get_valid_dataflow", "PATCH_CHANNELS",
]

_SEED_RANGE = 2**31 - 1


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


class PatchDataFlow(RNGDataFlow):
    """Yields ``[path, seed]`` for every ``.npy`` / ``.npz`` patch in ``data_dir`` (a folder or a list of folders).

    ``path`` is a str; ``seed`` an int in [0, 2**31 - 1) from ``self.rng``, to seed that patch's augmentation.
    With ``shuffle`` the order is a fresh permutation of ``self.rng`` each pass, else sorted by path. ``seed``
    fixes ``self.rng`` at :meth:`reset_state` for reproducible runs; by default tensorpack seeds it from time
    and process id. Every patch's header is checked at construction (a fraction of a millisecond each): a
    malformed patch found later, inside a worker process, would stall the pipeline instead of failing.
    """

    def __init__(self, data_dir, shuffle: bool = True, min_size: int = 1, seed: int | None = None,
                 patch_size: int | None = None):
        self.paths = list_patches(data_dir)
        self.shuffle = shuffle
        self.seed = seed
        for path in self.paths:
            check_patch(path, min_size)
        if patch_size is not None:
            _check_patch_size(self.paths, patch_size)

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


def _check_patch_size(paths: list[str], patch_size: int) -> None:
    """Refuse patches cut for another geometry: 540 px patches of the original mode in a fast-mode run (512 px)
    would train on crops the run's targets were not designed for, without a word."""
    sizes = {patch_shape(p)[:2] for p in paths}
    if sizes != {(patch_size, patch_size)}:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        raise InputError(f"{Path(paths[0]).parent}: patches are {shown} px but this run's geometry (MODEL.MODE, "
                         f"DATA.PATCH_SIZE) expects {patch_size}x{patch_size}; cut them again with extract_patches.py "
                         "and the same --config, or train with the settings they were cut for")


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
    source = PatchDataFlow(data_dir, shuffle=True, min_size=int(cfg.MODEL.INPUT_SHAPE), seed=seed,
                           patch_size=int(cfg.DATA.PATCH_SIZE))
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
    source = PatchDataFlow(data_dir, shuffle=False, min_size=int(cfg.MODEL.INPUT_SHAPE),
                           patch_size=int(cfg.DATA.PATCH_SIZE))
    flow = _mapped(source, TrainingDataPreprocessor(cfg, is_training=False),
                   resolve_num_workers(num_workers, cfg), buffer_size=200, strict=True)
    return BatchData(flow, batch_size, remainder=True)
