"""Tiles in, per-nucleus outputs out: the model-agnostic driver behind ``infer.py``.

Given any ``predict_fn(batch N x in x in x 3) -> N x out x out x C`` (in/out: the config's geometry; the
TensorFlow predictor in ``src/predictor.py``, or a fake in tests), this module finds the input images, skips those whose
outputs are already complete (so a killed run resumes), runs the sliding-window forward pass
(``src/inference.py``), post-processes (``src/postproc.py``) and writes every output atomically
(``misc/outputs.py``), overlapping the post-processing and writing of image k with the forward pass
of image k+1. Bad images are reported by name with the reason and skipped. No TensorFlow here.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from misc.io import (
    IMAGE_SUFFIXES,
    DiskFullError,
    InputError,
    atomic_path,
    load_label_mat,
    read_image_rgb,
    remove_stale_temporaries,
)
from misc.outputs import FORMATS, output_paths, outputs_complete, write_outputs
from misc.slide_io import resample
from src.inference import predict_tile
from src.postproc import instance_info, process

log = logging.getLogger(__name__)

__all__ = ["collect_inputs", "split_channels", "postproc_kwargs", "mpp_scale", "to_model_mpp", "instances_to_input",
           "InferenceReport", "run_inference", "check_output_dir", "SUMMARY_NAME", "RUN_INFO_NAME"]

SUMMARY_NAME = "summary.csv"
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

    The channel order is the one ``src/predictor.py`` produces: foreground probability, hv x, hv y,
    then the type probabilities if the model has a type branch.
    """
    if maps.ndim != 3 or maps.shape[2] < 3:
        raise ValueError(f"expected HxWxC maps with C >= 3, got {maps.shape}")
    tp = maps[..., 3:] if maps.shape[2] > 3 else None
    return maps[..., 0], maps[..., 1:3], tp


def postproc_kwargs(cfg) -> dict:
    """The POSTPROC section of the config as keyword arguments of :func:`src.postproc.process`."""
    p = cfg.POSTPROC
    return {"np_threshold": p.NP_THRESHOLD, "marker_threshold": p.MARKER_THRESHOLD, "sobel_ksize": p.SOBEL_KSIZE,
            "min_size": p.MIN_SIZE, "energy_blur": p.ENERGY_BLUR, "marker_opening": p.MARKER_OPENING}


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


def to_model_mpp(image: np.ndarray, scale: float) -> np.ndarray:
    """An HxWx3 uint8 tile resampled to the model's resolution: ``round(H / scale) x round(W / scale)``
    (:func:`misc.slide_io.resample`, the slides' resampling); the image itself when ``scale`` is 1."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    return resample(image, max(1, round(width / scale)), max(1, round(height / scale)))


def instances_to_input(inst_map: np.ndarray, inst_info: dict, shape: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """Instances found at the model's resolution mapped back onto the input tile's ``shape`` (H, W).

    The label map is resized by nearest neighbour (pixel centres, ``INTER_NEAREST_EXACT``), so ids are kept
    and no id is blended with another; a nucleus that covers no input pixel centre disappears and the
    ids are renumbered 1..N in their old order. bbox, centroid and contour are recomputed from the resized
    map (:func:`src.postproc.instance_info`), so the ``.mat``, the JSON/GeoJSON and the overlay describe the
    same pixels; type and type_prob are kept from the model-resolution vote.
    """
    height, width = shape
    resized = cv2.resize(np.asarray(inst_map, np.int32), (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    present = np.unique(resized)
    present = present[present > 0]
    lut = np.zeros(int(inst_map.max()) + 1 if inst_map.size else 1, np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    resized = lut[resized]
    info = instance_info(resized)
    for new_id, old_id in enumerate(present.tolist(), start=1):
        info[new_id]["type"] = inst_info[old_id]["type"]
        info[new_id]["type_prob"] = inst_info[old_id]["type_prob"]
    return resized, info


@dataclass
class InferenceReport:
    """What a run did: images written, images already complete, and bad inputs with their reasons."""

    done: list[str] = field(default_factory=list)
    already_complete: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> stage -> s

    @property
    def ok(self) -> bool:
        return not self.failed


def _summary_row(name: str, image_shape, inst_info: dict, type_info: dict, seconds: float | None) -> dict:
    counts = {tid: 0 for tid in type_info if tid != 0}
    for info in inst_info.values():
        if info.get("type"):  # untyped (None) and background-typed (0) nuclei count only in 'nuclei'
            counts[info["type"]] = counts.get(info["type"], 0) + 1
    row = {"image": name, "height": image_shape[0], "width": image_shape[1], "nuclei": len(inst_info)}
    for tid, count in sorted(counts.items()):
        row[f"n_{_type_name(type_info, tid)}"] = count
    row["seconds"] = round(seconds, 3) if seconds is not None else ""
    return row


def _type_name(type_info: dict, tid) -> str:
    entry = type_info.get(tid)
    return str(entry[0]) if entry else f"type{tid}"


def _restore_summary_rows(out_dir: Path, names: list[str], formats, type_info: dict, summary: dict) -> None:
    """Rebuild summary rows of complete images that lack one (a run killed between an image's outputs and
    its summary row) from their ``.mat``; the seconds are unknown and left empty."""
    missing = [name for name in names if name not in summary]
    if missing and "mat" not in formats:
        log.warning("summary.csv lacks rows for %s and cannot rebuild them without .mat outputs", missing)
        return
    for name in missing:
        label = load_label_mat(out_dir / f"{name}.mat", with_types=True)
        inst_info = {i + 1: {"type": int(t)} for i, t in enumerate(label["inst_type"])}
        summary[name] = _summary_row(name, label["inst_map"].shape, inst_info, type_info, seconds=None)


def _read_summary(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def _write_summary(path: Path, rows: dict[str, dict]) -> None:
    columns = ["image", "height", "width", "nuclei"]
    for row in rows.values():
        columns.extend(c for c in row if c not in columns)
    if "seconds" in columns:  # keep the timing last, after the per-type counts
        columns.append(columns.pop(columns.index("seconds")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval=0)
    writer.writeheader()
    for name in sorted(rows):
        writer.writerow(rows[name])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def run_inference(files: Iterable[Path], out_dir, predict_fn: Callable[[np.ndarray], np.ndarray], type_info: dict,
                  *, input_shape: int, output_shape: int, formats=FORMATS, overwrite: bool = False,
                  batch_size: int = 16, postproc_kwargs: dict | None = None, run_info: dict | None = None,
                  progress: bool = True, report: InferenceReport | None = None, scale: float = 1.0) -> InferenceReport:
    """Run the whole per-image job over ``files`` into ``out_dir``; never raises for one bad image.

    Images whose outputs in ``formats`` all exist are skipped unless ``overwrite`` (writes are atomic,
    so an existing file is a complete one). ``summary.csv`` (image, size, nuclei per type, seconds)
    is rewritten after every image, so it is current even if the run is killed. ``run_info`` (JSON-able:
    model, settings) is recorded in ``run_info.json``; :func:`check_output_dir` runs first and raises
    :class:`InputError` for an output folder that would overwrite inputs or mix runs. ``scale``: input px per
    model px (:func:`mpp_scale`); when not 1 each image is resampled to the model's resolution
    (:func:`to_model_mpp`) and its nuclei mapped back (:func:`instances_to_input`), so every output is in the
    input's own pixels and size. ``report`` (filled in
    place) lets a caller count what was done when the run is interrupted or stopped by a full disk
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
        with atomic_path(out_dir / RUN_INFO_NAME) as tmp:
            tmp.write_text(json.dumps(run_info, indent=1, sort_keys=True) + "\n")
    report = report if report is not None else InferenceReport()
    summary_path = out_dir / SUMMARY_NAME
    summary = _read_summary(summary_path)
    postproc_kwargs = dict(postproc_kwargs or {})

    todo = []
    for file in files:
        if not overwrite and outputs_complete(out_dir, file.stem, formats):
            report.already_complete.append(file.stem)
        else:
            todo.append(file)
    if report.already_complete:
        log.info("%d image(s) already have complete outputs in %s; skipping them (--overwrite redoes them)",
                 len(report.already_complete), out_dir)
        _restore_summary_rows(out_dir, report.already_complete, formats, type_info, summary)

    def finish(file: Path, image: np.ndarray, maps: np.ndarray, forward_s: float) -> None:
        start = time.perf_counter()
        np_prob, hv, tp_prob = split_channels(maps)
        inst_map, inst_info = process(np_prob, hv, tp_prob, **postproc_kwargs)
        if inst_map.shape != image.shape[:2]:  # found at the model's resolution (scale != 1)
            inst_map, inst_info = instances_to_input(inst_map, inst_info, image.shape[:2])
        post_s = time.perf_counter() - start
        start = time.perf_counter()
        write_outputs(out_dir, file.stem, image, inst_map, inst_info, type_info, formats=formats)
        write_s = time.perf_counter() - start
        report.seconds[file.stem] = {"forward": forward_s, "postproc": post_s, "write": write_s}
        summary[file.stem] = _summary_row(file.stem, image.shape, inst_info, type_info, forward_s + post_s + write_s)
        _write_summary(summary_path, summary)
        report.done.append(file.stem)

    bar = tqdm(total=len(todo), unit="image", desc="HoVer-Net", disable=not progress or not todo)

    def window_progress(file: Path):
        """A second bar for an image of more than one batch of windows, advanced after every batch."""
        state = {}

        def update(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = tqdm(total=total, unit="window", desc=f"  {file.name} windows", leave=False,
                                    disable=not progress or total <= batch_size)
            state["bar"].update(done - state["bar"].n)
            if done >= total:
                state["bar"].close()
        return update
    pending: tuple[Path, Future] | None = None

    def collect(item: tuple[Path, Future] | None) -> None:
        if item is None:
            return
        file, future = item
        try:
            future.result()
        except DiskFullError:
            raise  # every later image would fail the same way: stop the run
        except (InputError, ValueError, OSError) as exc:
            report.failed[str(file)] = f"{type(exc).__name__}: {exc}"  # the caller reports it, once

    # One worker: post-processing/writing of image k runs while the forward pass of image k+1 runs.
    with ThreadPoolExecutor(max_workers=1) as pool:
        for file in todo:
            try:
                image = read_image_rgb(file)
                start = time.perf_counter()
                maps = predict_tile(to_model_mpp(image, scale), predict_fn, batch_size=batch_size,
                                    input_shape=input_shape, output_shape=output_shape, progress=window_progress(file))
                forward_s = time.perf_counter() - start
            except InputError as exc:
                collect(pending)
                pending = None
                report.failed[str(file)] = str(exc)
                bar.update(1)
                continue
            collect(pending)
            future = pool.submit(finish, file, image, maps, forward_s)
            # The bar moves when an image's outputs are written, not when the next forward pass ends.
            future.add_done_callback(lambda _: bar.update(1))
            pending = (file, future)
        collect(pending)
    bar.close()
    if not summary_path.exists():
        _write_summary(summary_path, summary)
    return report
