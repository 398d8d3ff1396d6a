"""Whole-slide inference: large tiles with centroid ownership, per-tile part files, streamed assembly.

A slide is processed at the model's resolution ("working" pixels of ``WSI.MODEL_MPP`` microns); level-0
coordinates are working coordinates times ``scale`` = model mpp / slide mpp (1 when within the tolerance).
The working plane is cut into square *cores* of ``tile_size`` px (a multiple of the network output), each
read with a *margin* on every side (a multiple of the output too, see :func:`tile_margin`): the block grid of
:mod:`src.infer.blocks`, which tiles larger than ``INFER.BLOCK_SIZE`` share. Every region goes through the tile path
unchanged - :func:`src.infer.windows.predict_tile` (reflect padding at the region's edge, the 270/80 or 256/164
window grid), :func:`src.maps.postproc.process` - and a nucleus is kept only by the tile whose core contains its
centroid (:func:`src.infer.blocks.owned_ids`). The cores partition the slide, so no nucleus is lost or counted
twice at a tile border.

Why the result equals the tile path on the same pixels: core and margin are multiples of the output
size and regions start at multiples of it, so every window of a region is a window of the whole-image
grid of :func:`src.infer.windows.window_layout`; only windows within ``ceil(margin_net / out) * out`` px of
an interior region edge see reflected instead of true pixels, and the margin adds room for the widest
nucleus and the Sobel kernel beyond that band. What can still differ: post-processing min-max normalises
the hv maps over the region instead of the whole image (identical whenever a region holds a complete
nucleus, whose hv maps span [-1, 1]), and a blob wider than ``WSI.MAX_NUCLEUS_PX`` may be cut.

Resume: each finished tile writes ``<out>/<name>.parts/<row>_<col>.json`` atomically (its owned nuclei
in level-0 coordinates and its timings); the slide's outputs are assembled, streaming one part at a
time, only when every tissue tile has its part, then the parts folder is removed. A killed run redoes
only the tiles without a part. ``plan.json`` in the parts folder records the tiling; a different plan
(other settings) starts the slide over.

Memory: a worker holds one region (RGB, HxWxC float32 maps and post-processing buffers); the client
holds the tile list and one part at a time while assembling, whatever the slide size.

Nothing here imports TensorFlow or Dask: :func:`run_wsi` takes any client with ``submit`` returning
futures that :func:`distributed.as_completed` accepts (``src/infer/cluster.py`` makes them).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from misc.io import IMAGE_SUFFIXES, DiskFullError, InputError, atomic_path, write_json_atomic
from misc.outputs import all_or_none, nuclei_stream, nucleus_record
from misc.slide_io import SLIDE_SUFFIXES, SlideReader, is_slide
from misc.summary import SUMMARY_NAME, read_summary, write_summary
from misc.viz import save_image, type_entry, type_name
from src.infer.blocks import Block, block_grid, nucleus_margin, owned_ids
from src.infer.tiles import TileSettings, mpp_scale, split_channels
from src.infer.tissue import load_user_mask, tissue_mask
from src.infer.windows import predict_tile
from src.maps.postproc import process

log = logging.getLogger(__name__)

__all__ = ["input_suffixes", "split_inputs",
           "SLIDE_FORMATS", "WsiSettings", "tile_margin", "SlidePlan", "plan_slide",
           "TileJob", "run_tile", "run_tile_task", "assemble_slide", "slide_output_paths", "WsiReport", "run_wsi",
           "cached_predictor"]

SLIDE_FORMATS = ("json", "geojson", "png")  # no .mat for slides: a level-0 instance map does not fit in memory
PARTS_SUFFIX = ".parts"
PLAN_NAME = "plan.json"


def input_suffixes(mode: str) -> tuple[str, ...]:
    """File types a folder or glob picks up in ``--mode`` tile / wsi / auto."""
    if mode == "tile":
        return IMAGE_SUFFIXES
    return tuple(dict.fromkeys(IMAGE_SUFFIXES + SLIDE_SUFFIXES if mode == "auto" else SLIDE_SUFFIXES))


def split_inputs(files: Iterable[Path], mode: str) -> tuple[list[Path], list[Path]]:
    """``(slides, tiles)``: every file in ``wsi`` mode, none in ``tile`` mode, OpenSlide's verdict in ``auto``."""
    files = list(files)
    if mode == "tile":
        return [], files
    if mode == "wsi":
        return files, []
    slides = [f for f in files if is_slide(f)]
    return slides, [f for f in files if f not in slides]


@dataclass(frozen=True)
class WsiSettings:
    """How slides are run, picklable (sent to Dask workers): the tile path's own :class:`TileSettings` (network,
    batch, post-processing), under which every region runs as a tile at the model's resolution, plus what only
    slides have. Build with :meth:`from_config`."""

    tile: TileSettings  # scale 1 (regions are read at the model's mpp), never in blocks (a region is one)
    model_mpp: float  # um/px of the working plane
    mpp_tolerance: float  # relative difference under which the slide is read as is
    tile_size: int  # core side, working px, multiple of the network output
    margin: int  # context each side of a core, working px, multiple of the network output
    tissue_mpp: float  # um/px of the tissue mask
    tissue: dict = field(default_factory=dict)  # keyword arguments of src.infer.tissue.tissue_mask
    thumb_max_side: int = 4000  # px of the overlay's longer side
    formats: tuple = SLIDE_FORMATS
    gzip: bool = False  # write <name>.geojson.gz

    @classmethod
    def from_config(cls, cfg, *, batch_size: int | None = None, formats: Iterable[str] = SLIDE_FORMATS,
                    gzip_geojson: bool = False) -> WsiSettings:
        """Geometry, batch and post-processing as :meth:`TileSettings.from_config`; the rest from ``WSI``."""
        w, out = cfg.WSI, cfg.MODEL.OUTPUT_SHAPE
        formats = tuple(f for f in formats if f in SLIDE_FORMATS)
        if not formats:
            raise ValueError(f"slides are written as {', '.join(SLIDE_FORMATS)}; --formats names none of them")
        return cls(
            tile=replace(TileSettings.from_config(cfg, batch_size=batch_size), block_size=None),
            model_mpp=float(w.MODEL_MPP), mpp_tolerance=float(w.MPP_TOLERANCE),
            tile_size=max(out, (int(w.TILE_SIZE) // out) * out),
            margin=tile_margin(cfg.MODEL.INPUT_SHAPE, out, int(w.MAX_NUCLEUS_PX), int(cfg.POSTPROC.SOBEL_KSIZE)),
            tissue_mpp=float(w.TISSUE_MPP),
            tissue={"min_saturation": int(w.TISSUE_MIN_SATURATION), "close_px": int(w.TISSUE_CLOSE_PX),
                    "open_px": int(w.TISSUE_OPEN_PX), "min_area_px": int(w.TISSUE_MIN_AREA_PX)},
            thumb_max_side=int(w.THUMB_MAX_SIDE), formats=formats, gzip=bool(gzip_geojson))

    def plan_record(self) -> dict:
        """The settings that decide a slide's nuclei (JSON-able): finished tiles are reused only under equal ones."""
        return {"input_shape": self.tile.input_shape, "output_shape": self.tile.output_shape,
                "model_mpp": self.model_mpp, "mpp_tolerance": self.mpp_tolerance, "tile_size": self.tile_size,
                "margin": self.margin, "tissue_mpp": self.tissue_mpp, "tissue": dict(self.tissue),
                "postproc": self.tile.postproc.record()}


def tile_margin(input_shape: int, output_shape: int, max_nucleus_px: int, sobel_ksize: int) -> int:
    """Margin (px) around a core: windows fed reflected pixels, then room for a nucleus and the Sobel kernel.

    ``ceil(((in - out) / 2) / out) * out`` px at a region's edge hold outputs of windows that reach past it;
    beyond that, ``max_nucleus_px + sobel_ksize // 2`` rounded up to the output size. 320 px for 270/80,
    328 for 256/164 (with 80 px nuclei and the 21-px Sobel).
    """
    net = (input_shape - output_shape) // 2
    return math.ceil(net / output_shape) * output_shape + nucleus_margin(output_shape, max_nucleus_px, sobel_ksize)


@dataclass
class SlidePlan:
    """How one slide is cut: sizes, resolution, the tissue tiles and the tissue area."""

    name: str
    path: str
    width: int  # level-0 px
    height: int
    mpp: float  # um per level-0 px (file or --mpp)
    scale: float  # level-0 px per working px (1.0 when within the tolerance)
    work_width: int
    work_height: int
    grid: tuple[int, int]  # rows, cols of the full tile grid
    tiles: list[Block]  # large tiles (src.infer.blocks, working px) whose core holds tissue, row-major
    tissue_mm2: float

    def fingerprint(self, settings: WsiSettings) -> dict:
        """What must match for existing part files to be reused (JSON-able)."""
        return {"path": self.path, "size": [self.width, self.height], "mpp": self.mpp, "scale": self.scale,
                "tiles": [t.key for t in self.tiles],
                "settings": settings.plan_record()}


def _slide_scale(slide_mpp: float, settings: WsiSettings) -> float:
    return mpp_scale(slide_mpp, settings.model_mpp, settings.mpp_tolerance)


def plan_slide(path, settings: WsiSettings, *, mpp: float | None = None,
               mask_path: str | os.PathLike | None = None) -> SlidePlan:
    """Open ``path``, find its resolution and tissue, and list the tiles to run.

    ``mpp`` overrides the file's microns per pixel; a slide with neither is refused (:class:`InputError`),
    since a wrong magnification gives plausible-looking but wrong nuclei. ``mask_path``: a user tissue
    mask image instead of the automatic one.
    """
    path = Path(path)
    with SlideReader(path, mpp=mpp) as slide:
        if slide.mpp is None:
            raise InputError(f"{path}: the slide records no microns per pixel (openslide.mpp-x/y); pass --mpp "
                             f"(e.g. --mpp 0.25 for 40x, 0.5 for 20x)")
        scale = _slide_scale(slide.mpp, settings)
        mask_downsample = max(1.0, settings.tissue_mpp / slide.mpp)
        thumb = slide.read_downsampled(mask_downsample)
        width, height, slide_mpp = slide.width, slide.height, slide.mpp
    if mask_path is not None:
        mask = load_user_mask(mask_path, thumb.shape[:2])
    else:
        mask = tissue_mask(thumb, **settings.tissue)
    # level-0 px per mask px, per axis (the mask is rounded to whole pixels)
    mask_sy, mask_sx = height / mask.shape[0], width / mask.shape[1]
    tissue_mm2 = float(mask.sum()) * mask_sy * mask_sx * slide_mpp ** 2 / 1e6
    work_w, work_h = max(1, round(width / scale)), max(1, round(height / scale))
    size = settings.tile_size
    tiles = []
    for tile in block_grid(work_h, work_w, size, settings.margin):
        y0, x0, y1, x1 = tile.core
        my0, my1 = int(y0 * scale / mask_sy), math.ceil(y1 * scale / mask_sy)
        mx0, mx1 = int(x0 * scale / mask_sx), math.ceil(x1 * scale / mask_sx)
        if mask[my0:my1, mx0:mx1].any():
            tiles.append(tile)
    return SlidePlan(name=path.stem, path=str(path.resolve()), width=width, height=height, mpp=slide_mpp,
                     scale=scale, work_width=work_w, work_height=work_h,
                     grid=(math.ceil(work_h / size), math.ceil(work_w / size)), tiles=tiles, tissue_mm2=tissue_mm2)


@dataclass(frozen=True)
class TileJob:
    """One task: a tile of a slide, where its part goes, and the settings (picklable)."""

    slide_path: str
    mpp: float
    scale: float
    tile: Block
    part_path: str
    settings: WsiSettings
    type_info: Mapping


_READERS: dict[tuple[str, float], SlideReader] = {}
_PREDICTORS: dict = {}
_CACHE_LOCK = threading.Lock()


def _reader(path: str, mpp: float) -> SlideReader:
    """An open slide per process and path (opening can take long for some formats; reads are thread-safe)."""
    with _CACHE_LOCK:
        key = (path, mpp)
        if key not in _READERS:
            if len(_READERS) >= 8:
                _READERS.pop(next(iter(_READERS))).close()
            _READERS[key] = SlideReader(path, mpp=mpp)
        return _READERS[key]


def cached_predictor(factory: Callable[[], Callable]) -> Callable:
    """``factory()`` once per process: each Dask worker loads the model on its first tile and keeps it."""
    with _CACHE_LOCK:
        if factory not in _PREDICTORS:
            _PREDICTORS[factory] = factory()
        return _PREDICTORS[factory]


def _read_working(reader: SlideReader, region: tuple[int, int, int, int], scale: float) -> np.ndarray:
    y0, x0, y1, x1 = region
    if scale == 1.0:
        return reader.read(x0, y0, x1 - x0, y1 - y0)
    return reader.read_scaled(x0 * scale, y0 * scale, x1 * scale, y1 * scale, x1 - x0, y1 - y0)


def _to_level0(info: dict, dy: int, dx: int, scale: float) -> dict:
    """A nucleus of region coordinates moved to the slide and scaled to level-0 px."""
    contour = (np.asarray(info["contour"], np.float64) + [dx, dy]) * scale
    (rmin, cmin), (rmax, cmax) = np.asarray(info["bbox"], np.float64)
    return {
        "bbox": [[math.floor((rmin + dy) * scale), math.floor((cmin + dx) * scale)],
                 [math.ceil((rmax + dy) * scale), math.ceil((cmax + dx) * scale)]],
        "centroid": (np.asarray(info["centroid"], np.float64) + [dx, dy]) * scale,
        "contour": np.rint(contour).astype(np.int64),
        "type": info["type"],
        "type_prob": info["type_prob"],
    }


def run_tile(job: TileJob, predict_fn: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Read, predict, post-process one region; keep the nuclei whose centroid is in the core; write the part.

    Returns ``{"tile": key, "nuclei": n, "seconds": {"read", "forward", "postproc", "write"}}``.
    """
    s = job.settings
    start = time.perf_counter()
    image = _read_working(_reader(job.slide_path, job.mpp), job.tile.region, job.scale)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    maps = predict_tile(image, predict_fn, batch_size=s.tile.batch_size, input_shape=s.tile.input_shape,
                        output_shape=s.tile.output_shape)
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    np_prob, hv, tp_prob = split_channels(maps)
    del maps
    _, inst_info = process(np_prob, hv, tp_prob, s.tile.postproc)
    ry0, rx0 = job.tile.region[:2]
    records = [nucleus_record(0, _to_level0(inst_info[i], ry0, rx0, job.scale), job.type_info)
               for i in owned_ids(inst_info, job.tile)]  # centroid ownership: the cores partition the slide
    post_s = time.perf_counter() - start
    start = time.perf_counter()
    text = json.dumps(records, allow_nan=False)
    seconds = {"read": read_s, "forward": forward_s, "postproc": post_s, "write": time.perf_counter() - start}
    with atomic_path(job.part_path) as tmp:
        # the nuclei text is spliced in as is: serialised once, and its time is part of "write"
        tmp.write_text(f'{{"tile": "{job.tile.key}", "seconds": {json.dumps(seconds)}, "nuclei": {text}}}')
    seconds["write"] = time.perf_counter() - start
    return {"tile": job.tile.key, "nuclei": len(records), "seconds": seconds}


def run_tile_task(job: TileJob, factory: Callable[[], Callable]) -> dict:
    """The Dask task: :func:`run_tile` with this process's cached predictor."""
    return run_tile(job, cached_predictor(factory))


def slide_output_paths(out_dir, name: str, settings: WsiSettings) -> dict[str, Path]:
    """Format -> path of a slide's outputs (``<name>.geojson.gz`` with ``gzip``)."""
    suffix = {"json": ".json", "png": ".png", "geojson": ".geojson.gz" if settings.gzip else ".geojson"}
    return {f: Path(out_dir) / f"{name}{suffix[f]}" for f in settings.formats}


def _parts_dir(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{name}{PARTS_SUFFIX}"


def slide_complete(out_dir, name: str, settings: WsiSettings) -> bool:
    """Outputs all present and no parts folder left (the folder goes only after the summary row is written)."""
    return (all(p.is_file() for p in slide_output_paths(out_dir, name, settings).values())
            and not _parts_dir(out_dir, name).exists())


def assemble_slide(plan: SlidePlan, out_dir, settings: WsiSettings, type_info: Mapping) -> dict:
    """Stream every part of ``plan`` into the slide's outputs; return its summary row (without seconds).

    Nuclei get ids 1..N in tile order (row-major), then in each tile's post-processing order. The JSON
    has the tile outputs' layout plus ``mpp``; coordinates are level-0 px. One part is in memory at a time.
    """
    paths = slide_output_paths(out_dir, plan.name, settings)
    parts = _parts_dir(out_dir, plan.name)
    counts = {tid: 0 for tid in type_info if tid != 0}
    seconds = {"read": 0.0, "forward": 0.0, "postproc": 0.0, "write": 0.0}
    thumb = None
    if "png" in paths:
        downsample = max(1.0, max(plan.width, plan.height) / settings.thumb_max_side)
        with SlideReader(plan.path, mpp=plan.mpp) as slide:
            thumb = slide.read_downsampled(downsample)
        thumb_scale = np.array([thumb.shape[1] / plan.width, thumb.shape[0] / plan.height])
    n = 0
    with all_or_none(paths.values()):
        with nuclei_stream(paths, type_info, (plan.height, plan.width), mpp=plan.mpp,
                           compress_geojson=settings.gzip) as add:
            for tile in plan.tiles:
                part = json.loads((parts / f"{tile.key}.json").read_text())
                for name in seconds:
                    seconds[name] += part["seconds"].get(name, 0.0)
                polygons: dict = {}
                for record in part["nuclei"]:
                    n += 1
                    add(n, record)
                    if record["type"]:
                        counts[record["type"]] = counts.get(record["type"], 0) + 1
                    if thumb is not None:
                        points = np.rint(np.asarray(record["contour"], np.float64).reshape(-1, 2) * thumb_scale)
                        polygons.setdefault(record["type"], []).append(points.astype(np.int32))
                for type_id, polys in polygons.items():
                    colour = type_entry(type_info, type_id)[1]
                    cv2.fillPoly(thumb, polys, colour)
                    cv2.polylines(thumb, polys, True, colour)  # nuclei smaller than a thumbnail pixel stay visible
        if thumb is not None:
            save_image(paths["png"], thumb)
    row = {"image": plan.name, "height": plan.height, "width": plan.width, "nuclei": n}
    for tid, count in sorted(counts.items()):
        row[f"n_{type_name(type_info, tid)}"] = count
    row["tissue_mm2"] = round(plan.tissue_mm2, 4)
    row["nuclei_per_mm2"] = round(n / plan.tissue_mm2, 2) if plan.tissue_mm2 > 0 else ""
    row["_seconds"] = seconds
    return row


@dataclass
class WsiReport:
    """What a slide run did: slides written, already complete, failed (path -> reason), tiles run per slide."""

    done: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tiles_run: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> stage -> summed tile seconds

    @property
    def ok(self) -> bool:
        return not self.failed


def _prepare_parts(out_dir: Path, plan: SlidePlan, settings: WsiSettings, overwrite: bool) -> Path:
    """The slide's parts folder, emptied when ``overwrite`` or when it was made by another plan."""
    parts = _parts_dir(out_dir, plan.name)
    fingerprint = plan.fingerprint(settings)
    recorded = parts / PLAN_NAME
    if parts.exists():
        stale = overwrite or not recorded.is_file() or json.loads(recorded.read_text()) != fingerprint
        if stale:
            log.info("%s: discarding %d finished tile(s) made with other settings%s", plan.name,
                     len(list(parts.glob("*_*.json"))), " (--overwrite)" if overwrite else "")
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not recorded.is_file():
        write_json_atomic(recorded, fingerprint, sort_keys=True)
    return parts


def run_wsi(slides: Iterable[Path], out_dir, factory: Callable[[], Callable], type_info: Mapping,
            settings: WsiSettings, *, client, overwrite: bool = False, mpp: float | None = None,
            tissue_masks: Mapping[str, Path] | None = None, progress: bool = True) -> WsiReport:
    """Run every tissue tile of every slide as a task on ``client`` and assemble each finished slide.

    ``factory()`` builds the ``batch -> maps`` predictor; it is called once per worker process
    (:func:`cached_predictor`), so it must be picklable (a module-level function or a frozen dataclass).
    Tasks write their part files themselves (atomically), so a finished tile survives a dead worker or
    client, and results never travel through the scheduler. ``tissue_masks``: slide name -> user mask.
    Bad slides (unreadable, no mpp, a failing tile) are reported in :attr:`WsiReport.failed` and skipped; a full
    disk (:class:`misc.io.DiskFullError`) stops the run (raised), leaving no output of an unfinished slide under a
    final name and every finished tile's part for the rerun.
    """
    from distributed import as_completed

    from misc.logs import FILE_ONLY  # failures are the report's, which the caller prints: the log file only

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = WsiReport()
    summary_path = out_dir / SUMMARY_NAME
    summary = read_summary(summary_path)
    plans: dict[str, SlidePlan] = {}
    pending: dict[str, int] = {}
    futures = []
    future_slide = {}
    started = {}
    run_id = uuid.uuid4().hex[:8]  # task keys must not repeat those of an earlier run on the same cluster
    for index, path in enumerate(slides):
        path = Path(path)
        name = path.stem
        if not overwrite and slide_complete(out_dir, name, settings):
            report.already_complete.append(name)
            continue
        try:
            plan = plan_slide(path, settings, mpp=mpp, mask_path=(tissue_masks or {}).get(name))
            parts = _prepare_parts(out_dir, plan, settings, overwrite)
        except DiskFullError:
            raise  # every later slide would fail the same way: stop the run
        except (InputError, OSError, ValueError) as exc:
            report.failed[str(path)] = str(exc)
            log.error("skipped: %s", exc, extra=FILE_ONLY)
            continue
        plans[name] = plan
        started[name] = time.perf_counter()
        todo = [t for t in plan.tiles if not (parts / f"{t.key}.json").is_file()]
        pending[name] = len(todo)
        report.tiles_run[name] = len(todo)
        log.info("%s: %d x %d px at %.3f um/px, %.2f mm^2 tissue, %d of %d tiles with tissue, %d to run",
                 name, plan.width, plan.height, plan.mpp, plan.tissue_mm2, len(plan.tiles),
                 plan.grid[0] * plan.grid[1], len(todo))
        for tile in todo:
            job = TileJob(plan.path, plan.mpp, plan.scale, tile, str(parts / f"{tile.key}.json"), settings,
                          dict(type_info))
            future = client.submit(run_tile_task, job, factory, key=f"hovernet-{run_id}-{name}-{tile.key}",
                                   priority=-index, pure=False)
            futures.append(future)
            future_slide[future.key] = name

    total = sum(pending.values())
    cohort = tqdm(total=total, unit="tile", desc="cohort", disable=not progress or not plans, position=0)
    bars = {name: tqdm(total=n, unit="tile", desc=name[:30], disable=not progress, leave=False, position=1 + i)
            for i, (name, n) in enumerate(pending.items())}

    def finish(name: str) -> None:
        bars[name].close()
        start = time.perf_counter()
        try:
            row = assemble_slide(plans[name], out_dir, settings, type_info)
        except DiskFullError:
            raise  # the slide's outputs are gone (all_or_none), its parts kept: the rerun assembles it
        except (InputError, OSError, ValueError) as exc:
            report.failed[plans[name].path] = f"assembling the outputs failed: {exc}"
            log.error("%s: assembling the outputs failed: %s", name, exc, extra=FILE_ONLY)
            return
        report.seconds[name] = row.pop("_seconds")
        report.seconds[name]["write"] += time.perf_counter() - start  # part files + assembly
        row["seconds"] = round(sum(report.seconds[name].values()), 3)
        summary[name] = row
        write_summary(summary_path, summary, type_info)
        shutil.rmtree(_parts_dir(out_dir, name), ignore_errors=True)
        report.done.append(name)
        log.info("%s: %d nuclei written (%.1f s)", name, row["nuclei"], time.perf_counter() - started[name])

    for name, n in pending.items():
        if n == 0:
            finish(name)
    failed_slides = set()
    for future in as_completed(futures):
        name = future_slide[future.key]
        if future.status == "error":
            exc = future.exception()
            if isinstance(exc, DiskFullError):  # the tile's part was not written; finished ones are kept
                client.cancel([f for f in futures if not f.done()])
                for bar in (cohort, *bars.values()):
                    bar.close()
                raise exc
            if name not in failed_slides:
                failed_slides.add(name)
                report.failed[plans[name].path] = f"{type(exc).__name__}: {exc}"
                log.error("%s: a tile failed, slide skipped (finished tiles are kept): %s", name, exc, extra=FILE_ONLY)
                client.cancel([f for f in futures if future_slide[f.key] == name and not f.done()])
                bars[name].close()
        elif future.status == "finished":
            future.release()
            cohort.update(1)
            bars[name].update(1)
            pending[name] -= 1
            if pending[name] == 0 and name not in failed_slides:
                finish(name)
    cohort.close()
    return report
