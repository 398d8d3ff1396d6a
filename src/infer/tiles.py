"""Tiles in, per-nucleus outputs out: the model-agnostic driver behind ``infer.py``.

Given any ``predict_fn(batch N x in x in x 3) -> N x out x out x C`` (in/out: the config's geometry; the
TensorFlow predictor in ``src/infer/predictor.py``, or a fake in tests), this module finds the input images, skips
those whose outputs are already complete (so a killed run resumes), runs the sliding-window forward pass
(``src/infer/windows.py``), post-processes (``src/maps/postproc.py``) and writes every output atomically
(``misc/outputs.py``), overlapping the post-processing and writing of image k with the forward pass
of image k+1. Bad images are reported by name with the reason and skipped. No TensorFlow here.

A tile with a side longer than ``INFER.BLOCK_SIZE`` (at the model's resolution) is done in blocks instead
(:func:`segment_in_blocks`): overlapping blocks of at most that side are predicted (the windows of the tile's own
grid), post-processed and merged by the whole-slide path's rule (``src/infer/blocks.py``: a nucleus belongs to the
block whose core holds its centroid); the maps and the label map wait in scratch files (:class:`BlockStore`), so
memory holds the image, the nuclei and one block, whatever the tile's size.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from misc.arrays import BAND_BYTES, relabel_contiguous
from misc.io import (
    IMAGE_SUFFIXES,
    DiskFullError,
    InputError,
    ScratchArray,
    read_image_rgb,
    remove_stale_temporaries,
    write_json_atomic,
)
from misc.outputs import FORMATS, output_paths, outputs_complete, write_outputs
from misc.slide_io import resample
from misc.summary import SUMMARY_NAME, read_summary, restore_summary_rows, summary_row, write_summary
from src.infer.blocks import NucleusTable, block_core, block_grid, merge_block, nucleus_margin
from src.infer.windows import predict_tile, region_windows, window_layout
from src.maps.postproc import PostprocParams, hv_sobel, instance_info, process

log = logging.getLogger(__name__)

__all__ = ["collect_inputs", "split_channels", "TileSettings", "mpp_scale", "to_model_shape",
           "to_model_mpp", "instances_to_input", "InferenceReport", "OutputSink", "postprocess_and_write",
           "BlockStore", "segment_in_blocks", "blocks_and_write", "WindowProgress", "run_inference",
           "check_output_dir", "run_record", "SUMMARY_NAME", "RUN_INFO_NAME"]

RUN_INFO_NAME = "run_info.json"  # which model and settings made the outputs in a folder
_RUN_INFO_NOTES = ("model_path",)  # recorded for the reader, not compared: weights are compared by content


def collect_inputs(spec: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Images named by ``spec``: one file, a folder (its images, not recursive) or a glob pattern.

    ``suffixes``: the file types a folder or glob picks up (whole-slide mode adds the slide formats).

    Raises :class:`InputError` when nothing matches or when two inputs share a name (their outputs
    would overwrite each other).
    """
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise InputError(f"{path}: no images ({', '.join(suffixes)}) in this folder")
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        files = [p for p in files if p.suffix.lower() in suffixes]
        if not files:
            raise InputError(f"{spec}: the pattern matches no images")
    else:
        raise InputError(f"{spec}: no such file or folder")
    by_name: dict[str, list[Path]] = {}
    for file in files:
        by_name.setdefault(file.stem, []).append(file)
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(", ".join(str(p) for p in paths) for paths in clashes.values())
        raise InputError(f"inputs with the same name would write the same outputs: {listed}")
    return files


def check_output_dir(out_dir, files: Iterable[Path], formats=FORMATS, run_info: dict | None = None,
                     overwrite: bool = False) -> None:
    """Refuse an output folder that would destroy inputs or mix results of different runs.

    Raises :class:`InputError` when ``out_dir`` is a file; when an output would land on an input image
    (``--output`` the folder of PNG inputs: the overlay ``<name>.png`` would replace the image); or when
    the folder holds outputs of another model or post-processing setting (``run_info.json``) and
    ``overwrite`` is not set, since resuming would then silently mix two runs' results.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --output exists and is not a folder")
    inputs = {file.resolve() for file in files}
    for file in files:
        for path in output_paths(out_dir, file.stem, formats).values():
            if path.resolve() in inputs:
                raise InputError(f"writing {path} would overwrite the input image {path}; choose another --output")
    recorded = out_dir / RUN_INFO_NAME
    if run_info is not None and recorded.is_file() and not overwrite:
        previous = json.loads(recorded.read_text())
        changed = sorted(k for k in set(previous) | set(run_info)
                         if k not in _RUN_INFO_NOTES and previous.get(k) != run_info.get(k))
        if changed:
            raise InputError(f"{out_dir} holds outputs made with other settings ({', '.join(changed)} differ: "
                             f"{ {k: previous.get(k) for k in changed} }); choose another --output or pass "
                             "--overwrite to redo them")


def split_channels(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split stitched HxWxC maps into (np foreground prob HxW, hv HxWx2, tp probs HxWxT or None).

    The channel order is the one ``src/infer/predictor.py`` produces: foreground probability, hv x, hv y,
    then the type probabilities if the model has a type branch.
    """
    if maps.ndim != 3 or maps.shape[2] < 3:
        raise ValueError(f"expected HxWxC maps with C >= 3, got {maps.shape}")
    tp = maps[..., 3:] if maps.shape[2] > 3 else None
    return maps[..., 0], maps[..., 1:3], tp


def mpp_scale(input_mpp: float | None, model_mpp: float, tolerance: float) -> float:
    """Input px per model px, ``model_mpp / input_mpp`` (0.5 for a 0.5-um/px 20x tile and a 0.25-um/px model).

    1.0 (the input is used as it is) without ``input_mpp`` or when the ratio is within the relative
    ``tolerance`` of 1. ``ValueError`` for a non-positive ``input_mpp``.
    """
    if input_mpp is None:
        return 1.0
    if not input_mpp > 0:
        raise ValueError(f"microns per pixel must be > 0, got {input_mpp}")
    scale = model_mpp / input_mpp
    return 1.0 if abs(scale - 1.0) <= tolerance else scale


def to_model_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resampled to the model's resolution by :func:`to_model_mpp`."""
    if scale == 1.0:
        return int(shape[0]), int(shape[1])
    return max(1, round(shape[0] / scale)), max(1, round(shape[1] / scale))


def to_model_mpp(image: np.ndarray, scale: float) -> np.ndarray:
    """An HxWx3 uint8 tile resampled to the model's resolution: ``round(H / scale) x round(W / scale)``
    (:func:`misc.slide_io.resample`, the slides' resampling); the image itself when ``scale`` is 1."""
    if scale == 1.0:
        return image
    height, width = to_model_shape(image.shape, scale)
    return resample(image, width, height)


def instances_to_input(inst_map: np.ndarray, inst_info: dict, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Instances found at the model's resolution mapped back onto the input tile's ``shape`` (H, W).

    The label map is resized by nearest neighbour (pixel centres, ``INTER_NEAREST_EXACT``), so ids are kept
    and no id is blended with another; a nucleus that covers no input pixel centre disappears and the
    ids are renumbered 1..N in their old order. bbox, centroid and contour are recomputed from the resized
    map (:func:`src.maps.postproc.instance_info`), so the ``.mat``, the JSON/GeoJSON and the overlay describe the
    same pixels; type and type_prob are kept from the model-resolution vote.
    """
    height, width = shape
    resized = cv2.resize(np.asarray(inst_map, np.int32), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    present = np.unique(resized)
    present = present[present > 0]  # old ids, ascending: the new id of present[k] is k + 1
    resized, _ = relabel_contiguous(resized, np.int32)
    info = instance_info(resized)
    for new_id, old_id in enumerate(present.tolist(), start=1):
        info[new_id]["type"] = inst_info[old_id]["type"]
        info[new_id]["type_prob"] = inst_info[old_id]["type_prob"]
    return resized, info


def run_record(weights, cfg, mpp: float | None = None) -> dict:
    """What ``run_info.json`` records of a run, the same for ``infer.py`` and ``xla_runner infer`` so that either
    resumes a folder the other wrote: the weights by content and path (``ModelWeights.run_identity``), the
    post-processing, and ``--mpp`` with the model's resolution when given (folders of runs without it stay as
    they were)."""
    record = {**weights.run_identity(), "postproc": PostprocParams.from_config(cfg).record()}
    if mpp is not None:
        record.update(mpp=mpp, model_mpp=float(cfg.WSI.MODEL_MPP))
    return record


@dataclass(frozen=True)
class TileSettings:
    """How :func:`run_inference` runs each image: network geometry, batch, post-processing, magnification.

    ``scale``: input px per model px (:func:`mpp_scale`; 1 = the images are at the model's mpp). ``block_size``:
    a tile with a longer side (model px) goes in blocks (:meth:`in_blocks`; None: never), each with
    ``block_margin`` px of context (:func:`src.infer.blocks.nucleus_margin`). Build with :meth:`from_config`.
    """

    input_shape: int  # network window side (px)
    output_shape: int  # network output side (px)
    batch_size: int  # windows per forward pass
    postproc: PostprocParams
    scale: float = 1.0
    block_size: int | None = None  # px: INFER.BLOCK_SIZE
    block_margin: int = 0  # px each side of a block's core, a multiple of output_shape

    @classmethod
    def from_config(cls, cfg, *, batch_size: int | None = None, input_mpp: float | None = None) -> TileSettings:
        """Geometry from ``MODEL``, batch from ``INFER.BATCH_SIZE`` unless ``batch_size``, post-processing
        from ``POSTPROC``; ``input_mpp`` (um/px of the images, None = the model's) against ``WSI.MODEL_MPP``;
        blocks of ``INFER.BLOCK_SIZE`` with a margin for ``WSI.MAX_NUCLEUS_PX`` and the Sobel kernel."""
        return cls(input_shape=cfg.MODEL.INPUT_SHAPE, output_shape=cfg.MODEL.OUTPUT_SHAPE,
                   batch_size=int(batch_size or cfg.INFER.BATCH_SIZE), postproc=PostprocParams.from_config(cfg),
                   scale=mpp_scale(input_mpp, cfg.WSI.MODEL_MPP, cfg.WSI.MPP_TOLERANCE),
                   block_size=int(cfg.INFER.BLOCK_SIZE),
                   block_margin=nucleus_margin(cfg.MODEL.OUTPUT_SHAPE, int(cfg.WSI.MAX_NUCLEUS_PX),
                                               int(cfg.POSTPROC.SOBEL_KSIZE)))

    def in_blocks(self, shape: tuple[int, ...]) -> bool:
        """Whether an image of ``shape`` (H, W, ...) at the model's resolution is done in blocks: a side longer
        than ``block_size``. Smaller tiles are processed whole, exactly as without blocks."""
        return self.block_size is not None and max(shape[:2]) > self.block_size


@dataclass
class InferenceReport:
    """What a run did: images written, images already complete, and bad inputs with their reasons."""

    done: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class OutputSink:
    """Where :func:`postprocess_and_write` puts one run's results: the folder, the summary rows (name -> row,
    rewritten to ``summary.csv`` after every image) and the report."""

    out_dir: Path
    type_info: dict
    formats: tuple
    summary: dict
    report: InferenceReport

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_NAME


def postprocess_and_write(sink: OutputSink, name: str, image: np.ndarray, maps: np.ndarray, forward_s: float,
                          settings: TileSettings) -> None:
    """Post-process one image's stitched maps, write its outputs and its summary row, mark it done.

    ``image``: the input HxWx3 uint8; ``maps``: its stitched HxWxC maps at the model's resolution (another
    size than the image when ``settings.scale`` is not 1: the nuclei are then mapped back,
    :func:`instances_to_input`). Runs in the pipeline's writer thread, one image at a time.
    """
    start = time.perf_counter()
    np_prob, hv, tp_prob = split_channels(maps)
    inst_map, inst_info = process(np_prob, hv, tp_prob, settings.postproc)
    if inst_map.shape != image.shape[:2]:  # found at the model's resolution (scale != 1)
        inst_map, inst_info = instances_to_input(inst_map, inst_info, image.shape[:2])
    _write_and_record(sink, name, image, inst_map, inst_info, forward_s + time.perf_counter() - start)


def _write_and_record(sink: OutputSink, name: str, image: np.ndarray, inst_map, inst_info: dict, seconds: float,
                      overlay_rows: int | None = None) -> None:
    """Write one image's outputs, then its summary row (``seconds``: its time so far plus the writing); mark it
    done."""
    start = time.perf_counter()
    write_outputs(sink.out_dir, name, image, inst_map, inst_info, sink.type_info, formats=sink.formats,
                  overlay_rows=overlay_rows)
    seconds += time.perf_counter() - start
    sink.summary[name] = summary_row(name, image.shape, inst_info, sink.type_info, seconds)
    write_summary(sink.summary_path, sink.summary, sink.type_info)
    sink.report.done.append(name)


@dataclass
class BlockStore:
    """Where :func:`segment_in_blocks` keeps a large tile between its passes, each HxW(...) array or
    :class:`misc.io.ScratchArray` (zeros): ``np_prob`` float32, ``hv`` HxWx2 float32 and ``types`` uint8 (each
    pixel's most likely type) hold the network's maps, 13 bytes a pixel, ``labels`` int32 receives the instance
    map. :meth:`scratch` makes them as files in a folder."""

    np_prob: object
    hv: object
    types: object
    labels: object

    @classmethod
    @contextlib.contextmanager
    def scratch(cls, folder: Path, name: str, shape: tuple[int, int]):
        with contextlib.ExitStack() as stack:
            def new(suffix: str, dtype, inner: tuple = (), order: str = "C") -> ScratchArray:
                return stack.enter_context(ScratchArray.scratch(folder, f"{name}.{suffix}", tuple(shape) + inner,
                                                                dtype, order))

            # the label map column-major: the .mat holds it so, and its writer reads it a band of columns at a time
            yield cls(new("np", np.float32), new("hv", np.float32, (2,)), new("types", np.uint8),
                      new("labels", np.int32, order="F"))


def _window(array, rows: slice, cols: slice) -> np.ndarray:
    """A writable view of ``array[rows, cols]`` (an ndarray or a :class:`misc.io.ScratchArray`)."""
    return array.view((rows, cols)) if isinstance(array, ScratchArray) else array[rows, cols]


def segment_in_blocks(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray], settings: TileSettings,
                      store: BlockStore, progress: Callable[[int, int], None] | None = None) -> NucleusTable:
    """The nuclei of a tile too large to process whole, found block by block (``src/infer/blocks.py``), in three passes.

    ``image``: HxWx3 at the model's resolution; ``store``: where the maps and the instance map (ids 1..N) go.
    Blocks of at most ``settings.block_size`` px a side: cores of :func:`src.infer.blocks.block_core`, regions
    ``settings.block_margin`` px larger, row-major.

    1. Forward: each core's windows (:func:`src.infer.windows.predict_tile` ``region``; the cores partition the tile
       and start on its window grid, so every window of the tile is predicted once and the maps are the whole
       tile's); their extremes are the whole tile's hv range.
    2. The whole tile's Sobel range: the responses of each core, computed in its region (the margin holds the
       kernel, so they are the whole tile's).
    3. Each region post-processed with both ranges (:func:`src.maps.postproc.process`: the whole tile's scaling, so the
       same edges, markers and nuclei), keeping the nuclei whose centroid lies in its core
       (:func:`src.infer.blocks.merge_block`, the whole-slide rule).

    What can differ from the tile processed whole: a blob (a clump of touching nuclei) wider than the margin is cut
    at a region's edge, and where two blocks segmented a nucleus on a seam differently the earlier one's pixels
    win. ``progress(done, total)``: windows. Returns id -> nucleus dict in tile coordinates, a
    :class:`src.infer.blocks.NucleusTable`.
    """
    height, width = image.shape[:2]
    core = block_core(settings.block_size, settings.block_margin, settings.output_shape)
    blocks = block_grid(height, width, core, settings.block_margin)
    hv_range, typed = _predict_cores(image, predict_fn, settings, blocks, store, progress)
    sobel_range = _sobel_range(store.hv, blocks, settings.postproc.sobel_ksize, hv_range)
    nuclei = NucleusTable()
    for block in blocks:
        ry0, rx0, ry1, rx1 = block.region
        rows, cols = slice(ry0, ry1), slice(rx0, rx1)
        block_map, block_info = process(store.np_prob[rows, cols], store.hv[rows, cols],
                                        store.types[rows, cols] if typed else None, settings.postproc,
                                        hv_range=hv_range, sobel_range=sobel_range)
        region = _window(store.labels, rows, cols)
        nuclei.add(merge_block(region, block_map, block_info, block, len(nuclei) + 1))
        del region, block_map, block_info  # a scratch file's pages leave memory with their last view
    return nuclei


def _predict_cores(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray], settings: TileSettings,
                   blocks: list, store: BlockStore, progress: Callable[[int, int], None] | None) -> tuple[tuple, bool]:
    """Pass 1 of :func:`segment_in_blocks`: the network over every core into ``store``; returns the hv maps' range
    ((lo, hi) of x, (lo, hi) of y, float32) and whether the model has a type branch."""
    layout = window_layout(image.shape[0], image.shape[1], settings.input_shape, settings.output_shape)
    low, high = np.full(2, np.inf, np.float32), np.full(2, -np.inf, np.float32)
    typed = False
    done = 0
    for block in blocks:
        y0, x0, y1, x1 = block.core

        def report(n: int, _: int, before: int = done) -> None:
            progress(before + n, layout.n_windows)

        maps = predict_tile(image, predict_fn, settings.batch_size, input_shape=settings.input_shape,
                            output_shape=settings.output_shape, progress=report if progress else None,
                            region=block.core)
        done += len(region_windows(layout, block.core)[1])
        np_prob, hv, tp_prob = split_channels(maps)
        store.np_prob[y0:y1, x0:x1] = np_prob
        store.hv[y0:y1, x0:x1] = hv
        low, high = np.minimum(low, hv.min(axis=(0, 1))), np.maximum(high, hv.max(axis=(0, 1)))
        if tp_prob is not None:
            if tp_prob.shape[2] > 256:
                raise ValueError(f"{tp_prob.shape[2]} type channels: at most 256 fit the block store")
            store.types[y0:y1, x0:x1] = _type_argmax(tp_prob)
            typed = True
        del maps, np_prob, hv, tp_prob  # not held while the next core's maps are made
    return ((low[0], high[0]), (low[1], high[1])), typed


def _sobel_range(hv_store, blocks: list, sobel_ksize: int, hv_range: tuple) -> tuple:
    """Pass 2 of :func:`segment_in_blocks`: ((lo, hi) horizontal, (lo, hi) vertical) of the whole tile's Sobel
    responses (:func:`src.maps.postproc.hv_sobel`), each core's computed in its region, whose margin holds the
    kernel."""
    low, high = [np.inf, np.inf], [-np.inf, -np.inf]
    for block in blocks:
        (ry0, rx0, ry1, rx1), (y0, x0, y1, x1) = block.region, block.core
        for k, response in enumerate(hv_sobel(hv_store[ry0:ry1, rx0:rx1], sobel_ksize, hv_range)):
            inner = response[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
            low[k], high[k] = min(low[k], inner.min()), max(high[k], inner.max())
        del response, inner  # not held while the next block's responses are made
    return (low[0], high[0]), (low[1], high[1])


def _type_argmax(tp_prob: np.ndarray, rows: int = 256) -> np.ndarray:
    """HxW per-pixel argmax of HxWxC type probabilities in the smallest unsigned type that holds C - 1, taken
    ``rows`` rows at a time (``np.argmax`` alone makes an 8-byte index per pixel). Post-processing votes with it
    as it does with the probabilities (:func:`src.maps.postproc.process`)."""
    out = np.empty(tp_prob.shape[:2], np.min_scalar_type(tp_prob.shape[2] - 1))
    for r0 in range(0, len(out), rows):
        out[r0:r0 + rows] = np.argmax(tp_prob[r0:r0 + rows], axis=-1)
    return out


def blocks_and_write(sink: OutputSink, name: str, image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray],
                     settings: TileSettings, progress: Callable[[int, int], None] | None = None) -> None:
    """:func:`segment_in_blocks` one large image, its maps and label map kept in scratch files in the output folder
    (17 bytes a pixel), write its outputs (the ``.mat`` read from the label file a band of columns at a time, the
    overlay drawn and written a band of rows at a time) and its summary row, mark it done. Runs in the caller's
    thread: the forward passes are in it."""
    start = time.perf_counter()
    work = to_model_mpp(image, settings.scale)
    with BlockStore.scratch(sink.out_dir, name, work.shape[:2]) as store:
        nuclei = segment_in_blocks(work, predict_fn, settings, store, progress)
        del work
        inst_map = store.labels
        if inst_map.shape != image.shape[:2]:  # found at the model's resolution: mapped back whole (not bounded)
            inst_map, nuclei = instances_to_input(np.asarray(inst_map), nuclei, image.shape[:2])
        _write_and_record(sink, name, image, inst_map, nuclei, time.perf_counter() - start,
                          overlay_rows=max(1, BAND_BYTES // (3 * image.shape[1])))  # 16 MB of the image a band


class WindowProgress:
    """``progress(done, total)`` callback of :func:`src.infer.windows.predict_tile`: a second bar for an image of
    more than one batch of windows, advanced after every batch (made on the first call, closed at the end)."""

    def __init__(self, file: Path, batch_size: int, enabled: bool):
        self.label, self.batch_size, self.enabled = f"  {file.name} windows", batch_size, enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="window", desc=self.label, leave=False,
                            disable=not self.enabled or total <= self.batch_size)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def run_inference(files: Iterable[Path], out_dir, predict_fn: Callable[[np.ndarray], np.ndarray], type_info: dict,
                  settings: TileSettings, *, formats=FORMATS, overwrite: bool = False, run_info: dict | None = None,
                  progress: bool = True, report: InferenceReport | None = None) -> InferenceReport:
    """Run the whole per-image job over ``files`` into ``out_dir``; never raises for one bad image.

    ``settings``: geometry, batch, post-processing and magnification (:meth:`TileSettings.from_config`).
    Images whose outputs in ``formats`` all exist are skipped unless ``overwrite`` (writes are atomic,
    so an existing file is a complete one). ``summary.csv`` (image, size, nuclei per type, seconds)
    is rewritten after every image, so it is current even if the run is killed. ``run_info`` (JSON-able:
    model, settings) is recorded in ``run_info.json``; :func:`check_output_dir` runs first and raises
    :class:`InputError` for an output folder that would overwrite inputs or mix runs. When
    ``settings.scale`` is not 1 each image is resampled to the model's resolution (:func:`to_model_mpp`) and
    its nuclei mapped back (:func:`instances_to_input`), so every output is in the input's own pixels and
    size. An image with a side longer than ``settings.block_size`` at the model's resolution is done in blocks
    (:func:`blocks_and_write`), alone: the previous image is finished first. ``report`` (filled in place) lets
    a caller count what was done when the run is interrupted or stopped by a full disk
    (:class:`misc.io.DiskFullError`, raised: every later image would fail the same way).
    """
    out_dir = Path(out_dir)
    files = list(files)
    check_output_dir(out_dir, files, formats, run_info, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out_dir)
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run in %s", len(stale), out_dir)
    if run_info is not None:
        write_json_atomic(out_dir / RUN_INFO_NAME, run_info, indent=1, sort_keys=True, newline=True)
    report = report if report is not None else InferenceReport()
    sink = OutputSink(out_dir, type_info, tuple(formats), read_summary(out_dir / SUMMARY_NAME), report)

    todo = []
    for file in files:
        if not overwrite and outputs_complete(out_dir, file.stem, formats):
            report.already_complete.append(file.stem)
        else:
            todo.append(file)
    if report.already_complete:
        log.info("%d image(s) already have complete outputs in %s; skipping them (--overwrite redoes them)",
                 len(report.already_complete), out_dir)
        restore_summary_rows(out_dir, report.already_complete, formats, type_info, sink.summary)

    bar = tqdm(total=len(todo), unit="image", desc="HoVer-Net", disable=not progress or not todo)
    pending: tuple[Path, Future] | None = None

    def settle(file: Path, outcome: Callable[[], object]) -> None:
        """Run ``outcome`` (an image's writing, or waiting for it); a bad image is reported, not raised."""
        try:
            outcome()
        except DiskFullError:
            raise  # every later image would fail the same way: stop the run
        except (InputError, ValueError, OSError) as exc:
            report.failed[str(file)] = f"{type(exc).__name__}: {exc}"  # the caller reports it, once

    def collect(item: tuple[Path, Future] | None) -> None:
        if item is not None:
            settle(item[0], item[1].result)

    # One worker: post-processing/writing of image k runs while the forward pass of image k+1 runs.
    with ThreadPoolExecutor(max_workers=1) as pool:
        for file in todo:
            image = None  # the previous image is not held while this one is read
            try:
                image = read_image_rgb(file)
                windows = WindowProgress(file, settings.batch_size, progress)
                if settings.in_blocks(to_model_shape(image.shape, settings.scale)):
                    collect(pending)  # one large image at a time, its blocks in this thread (Ctrl-C stops them)
                    pending = None
                    settle(file, partial(blocks_and_write, sink, file.stem, image, predict_fn, settings, windows))
                    bar.update(1)
                    continue
                start = time.perf_counter()
                maps = predict_tile(to_model_mpp(image, settings.scale), predict_fn, batch_size=settings.batch_size,
                                    input_shape=settings.input_shape, output_shape=settings.output_shape,
                                    progress=windows)
                forward_s = time.perf_counter() - start
            except InputError as exc:
                collect(pending)
                pending = None
                report.failed[str(file)] = str(exc)
                bar.update(1)
                continue
            collect(pending)
            future = pool.submit(postprocess_and_write, sink, file.stem, image, maps, forward_s, settings)
            # The bar moves when an image's outputs are written, not when the next forward pass ends.
            future.add_done_callback(lambda _: bar.update(1))
            pending = (file, future)
        collect(pending)
    bar.close()
    if not sink.summary_path.exists():
        write_summary(sink.summary_path, sink.summary, sink.type_info)
    return report
