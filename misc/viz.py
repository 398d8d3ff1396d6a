"""Overlays of nuclear contours on the H&E image, for files and notebooks.

Colours are RGB triples of ints in [0, 255] throughout; images are HxWx3 uint8 RGB. The one BGR
conversion happens in :func:`save_image`, right before OpenCV encodes the file (the banded PNG writer of large
tiles, :func:`write_png_bands`, writes RGB as it is).
numpy/scipy/OpenCV only.
"""
from __future__ import annotations

import colorsys
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage

from misc.arrays import check_label_map, check_rgb_image
from misc.io import atomic_path

__all__ = ["UNTYPED_NAME", "UNTYPED_COLOUR", "type_entry", "type_name", "instance_contour", "instance_contours",
           "visualize_instances", "overlay_bands", "write_png_bands", "save_overlay", "save_image",
           "plot_training_curves"]

# Nuclei without a type (a model trained without the tp branch) are drawn and named neutrally.
# "Unclassified" is also what QuPath calls an object without a classification.
UNTYPED_NAME = "unclassified"
UNTYPED_COLOUR = (128, 128, 128)


def type_entry(type_info: Mapping | None, type_id) -> tuple[str, tuple[int, int, int]]:
    """``(name, (r, g, b))`` of a nucleus type; ``type_id`` None gives the neutral untyped entry.

    Type 0 (the type branch voted background over the whole nucleus, which the released post-processing
    keeps) is untyped as well when ``type_info`` does not list it: TYPE_INFO files often name only the
    classes, and infer.py checks them for ids 1.. only. Raises ``ValueError`` for any other type that
    ``type_info`` does not list: a model with more types than the file describes is a configuration error
    worth stopping for.
    """
    if type_id is None or (int(type_id) == 0 and type_info is not None and 0 not in type_info):
        return UNTYPED_NAME, UNTYPED_COLOUR
    if type_info is None or int(type_id) not in type_info:
        known = sorted(type_info) if type_info is not None else []
        raise ValueError(f"nucleus type {type_id} has no name/colour in type_info (known types: {known})")
    name, colour = type_info[int(type_id)]
    return str(name), tuple(int(v) for v in colour)


def type_name(type_info: Mapping | None, type_id) -> str:
    """The name of :func:`type_entry`, or ``"type<id>"`` for an id ``type_info`` does not list (a summary
    column rebuilt from an old ``.mat`` must not stop a run)."""
    try:
        return type_entry(type_info, type_id)[0]
    except ValueError:
        return f"type{type_id}"


def instance_contour(mask: np.ndarray) -> np.ndarray:
    """Outline of one nucleus: the largest external contour of a uint8 0/1 mask, Kx2 int32 (x, y) in the mask's
    coordinates. The one contour extraction behind the JSON/GeoJSON contours (``src.maps.postproc.process``) and the
    overlays, so an overlay shows exactly the outlines written to the files.

    OpenCV's ``RETR_EXTERNAL`` with ``CHAIN_APPROX_SIMPLE`` (corner points of straight runs): holes are ignored
    (the released code took the first contour of ``RETR_TREE``, which for an instance with a hole can be the
    hole), and of several pieces the one of largest area (then most points) wins. A 1-2 pixel instance gives
    1-2 points, kept as Kx2 (the released ``np.squeeze`` broke on them).
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) > 1:
        contour = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    else:
        contour = contours[0]
    return contour.reshape(-1, 2).astype(np.int32)


def instance_contours(inst_map: np.ndarray) -> dict[int, np.ndarray]:
    """:func:`instance_contour` of every instance of an HxW integer map: id -> Kx2 int32 (x, y) in map
    coordinates, ids ascending (the contours post-processing reports for the same map)."""
    inst_map = check_label_map(inst_map, "inst_map", allow_bool=False)
    contours = {}
    for index, window in enumerate(scipy.ndimage.find_objects(inst_map.astype(np.int64, copy=False))):
        if window is None:  # an id absent from the map
            continue
        inst_id = index + 1
        contour = instance_contour((inst_map[window] == inst_id).astype(np.uint8))
        contours[inst_id] = (contour + [window[1].start, window[0].start]).astype(np.int32)
    return contours


def _distinct_colour(index: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps: neighbouring ids get clearly different, reproducible colours.
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def visualize_instances(image: np.ndarray, instances, type_info: Mapping | None = None,
                        line_thickness: int = 2) -> np.ndarray:
    """Draw nuclear contours on a copy of ``image`` (HxWx3 uint8 RGB); returns HxWx3 uint8 RGB.

    ``instances`` is either an inst_info dict (id -> {"contour": Kx2 (x, y), "type": int or None, ...}),
    drawn in each type's colour from ``type_info`` (id -> (name, (r, g, b))), or an HxW instance map,
    drawn with one distinct colour per instance (no types known).
    """
    overlay = check_rgb_image(image).copy()
    if isinstance(instances, Mapping):
        groups = _colour_groups(instances, type_info)
    else:
        inst_map = np.asarray(instances)
        if inst_map.shape != overlay.shape[:2]:
            raise ValueError(f"inst_map shape {inst_map.shape} does not match the image's {overlay.shape[:2]}")
        groups = {}
        for inst_id, contour in instance_contours(inst_map).items():
            groups.setdefault(_distinct_colour(inst_id), []).append(contour.reshape(-1, 1, 2))
    _draw(overlay, groups, line_thickness)
    return overlay


def _colour_groups(inst_info: Mapping, type_info: Mapping | None) -> dict[tuple[int, int, int], list[np.ndarray]]:
    """Colour of each nucleus's type -> its non-empty contours as OpenCV wants them (Kx1x2 int32), ids ascending."""
    groups: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for inst_id in sorted(inst_info):
        info = inst_info[inst_id]
        _, colour = type_entry(type_info, info.get("type"))
        contour = np.asarray(info["contour"]).astype(np.int32).reshape(-1, 1, 2)
        if len(contour):
            groups.setdefault(colour, []).append(contour)
    return groups


def _draw(canvas: np.ndarray, groups: Mapping, line_thickness: int, dy: int = 0) -> None:
    """Draw every group's contours on ``canvas`` in its colour, moved up by ``dy`` rows."""
    for colour, contours in groups.items():
        if dy:
            contours = [c - np.array([0, dy], np.int32) for c in contours]
        if contours:  # one call per colour: thousands of nuclei per tile, only a handful of types
            cv2.drawContours(canvas, contours, -1, colour, line_thickness)


def overlay_bands(image: np.ndarray, inst_info: Mapping, type_info: Mapping | None = None, line_thickness: int = 2,
                  band_rows: int = 1024):
    """Yield the overlay of :func:`visualize_instances` (an inst_info dict) ``band_rows`` rows at a time, top to
    bottom, so that a large tile's overlay is never held whole: each band is a copy of its rows with the contours
    that reach them drawn on.

    OpenCV rasterises a segment cut at the canvas edge differently from the whole segment, so each band is drawn
    on its rows plus, above and below, the tallest contour and the line width: no segment that reaches the band
    is cut, and the pixels equal the whole overlay's.
    """
    image = check_rgb_image(image)
    groups = _colour_groups(inst_info, type_info)
    spans = {colour: np.array([[c[:, 0, 1].min(), c[:, 0, 1].max()] for c in contours])
             for colour, contours in groups.items()}
    pad = max((int(np.ptp(s, axis=1).max()) for s in spans.values()), default=0) + line_thickness + 1
    height = image.shape[0]
    for y0 in range(0, height, band_rows):
        y1 = min(height, y0 + band_rows)
        e0, e1 = max(0, y0 - pad), min(height, y1 + pad)
        near = {colour: [groups[colour][i] for i in np.flatnonzero((s[:, 1] >= e0 - line_thickness)
                                                                    & (s[:, 0] < e1 + line_thickness))]
                for colour, s in spans.items()}
        canvas = image[e0:e1].copy()
        _draw(canvas, near, line_thickness, dy=e0)
        yield canvas[y0 - e0:y1 - e0]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bands(path: str | os.PathLike, bands, height: int, width: int) -> Path:
    """Write an RGB PNG from bands of rows (``k x width x 3`` uint8, top to bottom, ``height`` rows in all),
    compressing as they come: a large tile's overlay is never held whole, nor its file (OpenCV's encoder needs
    both). Every row uses the PNG 'Up' filter and zlib level 1: as fast as OpenCV's default and a little smaller
    on H&E. Atomic (:func:`misc.io.atomic_path`); ``ValueError`` when the bands do not add up to the image.
    """
    path = Path(path)
    previous = np.zeros((1, width * 3), np.uint8)
    rows = 0
    compressor = zlib.compressobj(1)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for band in bands:
            raw = np.ascontiguousarray(band, dtype=np.uint8).reshape(len(band), width * 3)
            filtered = np.empty((len(raw), width * 3 + 1), np.uint8)
            filtered[:, 0] = 2  # 'Up': each byte minus the one above it (modulo 256)
            np.subtract(raw[:1], previous, out=filtered[:1, 1:])
            np.subtract(raw[1:], raw[:-1], out=filtered[1:, 1:])
            previous = raw[-1:].copy()
            rows += len(raw)
            data = compressor.compress(filtered)
            if data:
                handle.write(_png_chunk(b"IDAT", data))
        if rows != height:
            raise ValueError(f"{path}: the bands hold {rows} rows, the image {height}")
        handle.write(_png_chunk(b"IDAT", compressor.flush()) + _png_chunk(b"IEND", b""))
    return path


def save_overlay(path: str | os.PathLike, image: np.ndarray, inst_info: Mapping, type_info: Mapping | None = None,
                 line_thickness: int = 2, band_rows: int | None = None) -> Path:
    """Write the contour overlay of :func:`visualize_instances` as an image file (format from the suffix).

    ``band_rows``: None draws and encodes the overlay whole (OpenCV's encoder); a number draws and writes it that
    many rows at a time (:func:`overlay_bands`, :func:`write_png_bands`; PNG only), for tiles too large to hold
    twice more: the same pixels, a file of other bytes.
    Atomic (``misc.io.atomic_path``): an interrupted write leaves nothing under ``path``.
    Raises ``OSError`` if OpenCV cannot encode the file.
    """
    path = Path(path)
    if band_rows is not None:
        if path.suffix.lower() != ".png":
            raise ValueError(f"{path}: an overlay written in bands is a PNG")
        height, width = np.shape(image)[:2]
        return write_png_bands(path, overlay_bands(image, inst_info, type_info, line_thickness, band_rows),
                               height, width)
    return save_image(path, visualize_instances(image, inst_info, type_info, line_thickness))


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an HxWx3 uint8 RGB image (format from the suffix) atomically (``misc.io.atomic_path``).

    Encoded in memory and written by Python: ``cv2.imwrite`` only returns False on a full disk, without errno, so
    a full disk could not be told from other failures. ``ValueError`` if OpenCV cannot encode that format.
    """
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image as {path.suffix!r}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return path


# Validation scores plotted beside the patch NP Dice, when train.py --valid_images recorded them (src.train.trainer).
_TILE_SCORES = ("tiles_np_dice", "tiles_dice", "tiles_aji", "tiles_pq", "tiles_hv_corr_x", "tiles_hv_corr_y")
_TILE_HV_MSE = ("tiles_hv_mse", "tiles_hv_mse_zero")


def _series(records: list[Mapping], key: str) -> list[tuple]:
    return [(r["epoch_num"], r[key]) for r in records if key in r and "epoch_num" in r]


def plot_training_curves(records: list[Mapping], path: str | os.PathLike) -> None:
    """Write ``curves.png``: every loss term and the validation scores per epoch, from stats.json records.

    ``records``: one mapping per epoch (tensorpack ``stats.json`` / the XLA runner's history) holding
    ``epoch_num`` and any of ``loss_<term>``, ``overall_cost``, ``validation_np_dice`` and the held-out tiles'
    post-processed scores ``tiles_<score>`` (``train.py --valid_images``). Loss terms share the left panel (log
    scale), the scores in [0, 1] the middle one; with tile scores a third panel puts the HV MSE beside that of
    predicting zero. Written atomically; a bare ``Figure`` (no pyplot) needs no display and changes no
    process-wide backend.
    """
    from matplotlib.figure import Figure

    epochs = [r["epoch_num"] for r in records if "epoch_num" in r]
    keys = {k for r in records for k in r}
    loss_keys = sorted(k for k in keys if k.startswith("loss_"))
    if "overall_cost" in keys:
        loss_keys.append("overall_cost")
    with_tiles = any(k in keys for k in _TILE_HV_MSE)
    fig = Figure(figsize=(16 if with_tiles else 11, 4))
    axes = fig.subplots(1, 3 if with_tiles else 2)
    ax_loss, ax_dice = axes[0], axes[1]
    for key in loss_keys:
        points = [(e, v) for e, v in _series(records, key) if v > 0]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("loss_"),
                         linewidth=2.0 if key == "overall_cost" else 1.0)
    ax_loss.set(xlabel="epoch", ylabel="training loss (moving average)", yscale="log", title="loss terms")
    if loss_keys:
        ax_loss.legend(fontsize=8)
    for key in ("validation_np_dice",) + _TILE_SCORES:
        points = _series(records, key)
        if points:
            ax_dice.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key,
                         color="tab:green" if key == "validation_np_dice" else None)
    ax_dice.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1), title="validation")
    if with_tiles:
        ax_dice.legend(fontsize=7)
        for key in _TILE_HV_MSE:
            points = _series(records, key)
            if points:
                ax_hv = axes[2]
                ax_hv.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key,
                           linestyle="--" if key.endswith("zero") else "-")
        axes[2].set(xlabel="epoch", ylabel="MSE on the held-out tiles", title="HV maps vs predicting 0")
        axes[2].legend(fontsize=7)
    if epochs:
        for ax in axes:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    # fixed margins that fit the labels: tight_layout measured every tick label, 0.2-0.5 s of each epoch's plot
    fig.subplots_adjust(left=0.05 if with_tiles else 0.07, right=0.99, bottom=0.13, top=0.92, wspace=0.2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
