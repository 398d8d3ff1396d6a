"""Training targets of HoVer-Net: NP, HV and NC (tp) maps from an instance map (spec section 2).

Pure numpy/scipy; never imports TensorFlow, so the dataflow workers stay light.

Behaviour follows the released TensorFlow code (``GenInstanceHV`` in ``src/loader/augs.py`` of
vqdang/hover_net, with ``CenterCrop`` after it in ``src/config.py``; ``BinarizeLabel`` follows it only
when no types are trained):

1. every id is made 4-connected: each 4-connected piece of an id becomes its own instance
   (augmentation with nearest interpolation can split a nucleus);
2. the pieces are counted inside the centred output window and those with fewer than
   ``min_instance_size`` (30) pixels there get no HV target;
3. HV is computed for each remaining instance from its whole extent in the full patch, so an
   instance cut by the window keeps its true centre of mass; then everything is centre-cropped.
4. NP and tp are the plain binary / type maps cropped: the small instances dropped from HV stay in
   both. ``"inst"`` is the cropped instance-id map as given (ids not relabelled), which is what the
   released label channel 0 holds when types are trained: its ``BinarizeLabel`` runs only without
   types (and always for validation), so with types the released graph's MSGE focus
   (``truemap_coded[..., 0]``) is the raw id map, i.e. an id-weighted mean (``LOSS.MSGE_FOCUS``).
   Note: with type labels the released graph took NP as ``type > 0`` rather than from the instance
   channel; the two agree whenever every instance pixel has a type (CoNSeP), and the spec defines NP
   from the instance ids, which is what is used here.

HV definition (per instance): ``x = column - cx``, ``y = row - cy`` where ``(cy, cx)`` is the centre
of mass rounded half up (``int(c + 0.5)`` as released); negative values are divided by the magnitude
of the instance's most negative value and positive ones by its largest value, so each side spans
[-1, 0) and (0, 1] independently; 0 on background and on the centre row / column.

Published quirk, kept as an option: the released code builds its coordinate grid from 1
(``np.arange(1, n + 1) - com``), which puts the zero row / column one pixel above / left of the
rounded centre of mass. ``published_offset=True`` reproduces the released grid and is what training
uses by default (``TARGETS.HV_PUBLISHED_OFFSET = True``); the functions' own default (False) puts the
zero on the centre itself, as the spec's text (section 2) describes.

Work is per instance on its bounding box (``scipy.ndimage.find_objects``) or vectorised over all
foreground pixels with ``np.bincount``; no full-image mask is ever built per instance.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as _label_same_value

from misc.arrays import CROSS_4 as _CROSS  # 4-connectivity, as every labelling of the released code
from misc.arrays import check_label_map, relabel_contiguous

__all__ = ["gen_hv_map", "gen_targets", "relabel_connected", "centre_crop_window"]

# Above this many ids per pixel, ids are compacted before find_objects (its output list has one
# entry per id up to the largest one).
_MAX_SPARSE_IDS_PER_PIXEL = 4


def _check_inst_map(inst_map) -> np.ndarray:
    # float maps loaded from .npy patches hold integer ids
    inst_map = check_label_map(inst_map, "instance map", whole_floats=True)
    if inst_map.dtype == bool:
        return inst_map.astype(np.int32)
    return inst_map.astype(np.int64) if inst_map.dtype.kind == "f" else inst_map


def _compact_ids(inst_map: np.ndarray) -> np.ndarray:
    """Map arbitrary non-negative ids to 0..N (0 kept as background) when they are too sparse."""
    max_id = int(inst_map.max()) if inst_map.size else 0
    if max_id <= _MAX_SPARSE_IDS_PER_PIXEL * inst_map.size + 1024:
        return inst_map if inst_map.dtype.kind == "i" else inst_map.astype(np.int64)
    return relabel_contiguous(inst_map, dtype=np.int32)[0]


def centre_crop_window(shape, crop_shape) -> tuple[slice, slice]:
    """Row and column slices of the centred ``crop_shape`` window inside ``shape``.

    ``crop_shape`` is an int (square) or ``(h, w)``. The offset is ``int((H - h) * 0.5)``, i.e. rounded
    down for an odd difference, as the released ``cropping_center`` / tensorpack ``CenterCrop``.
    """
    if np.isscalar(crop_shape):
        crop_h = crop_w = int(crop_shape)
    else:
        crop_h, crop_w = (int(v) for v in crop_shape)
    height, width = shape[:2]
    if not (0 < crop_h <= height and 0 < crop_w <= width):
        raise ValueError(f"crop_shape {(crop_h, crop_w)} does not fit in a {height}x{width} map")
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return slice(top, top + crop_h), slice(left, left + crop_w)


def relabel_connected(inst_map) -> np.ndarray:
    """Give every 4-connected piece of every id its own id (spec section 2, "made connected").

    Args:
        inst_map: HxW non-negative integer instance map, 0 = background; ids need not be contiguous.

    Returns:
        HxW int32 map with ids 1..M in raster order of each piece's first pixel; 0 stays background.
        4-connectivity as in the released code (``scipy.ndimage.label`` default structure).
    """
    inst_map = _check_inst_map(inst_map)
    return _label_same_value(inst_map, background=0, connectivity=1).astype(np.int32)


# --- the HV formula, shared by the full-map and the windowed paths -----------------------------------


def _rounded_origin(coord_sum: np.ndarray, count: np.ndarray, published_offset: bool) -> np.ndarray:
    """Centre of mass rounded half up, ``int(sum / count + 0.5)``, in exact integer arithmetic."""
    coord_sum = np.asarray(coord_sum, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    origin = (2 * coord_sum + count) // (2 * count)
    # The released grid starts at 1 (np.arange(1, n + 1) - com): zero one pixel before the centre.
    return origin - 1 if published_offset else origin


def _side_scales(origin, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """float32 divisors of the negative and positive side of each instance.

    ``lo`` / ``hi`` are the instance's smallest / largest coordinate (inclusive): because the bounding
    box is tight, the most negative offset is ``lo - origin`` and the largest is ``hi - origin``. A side
    without pixels never uses its divisor; 1 avoids 0/0 on the zero line.
    """
    neg_scale = np.asarray(origin - lo, dtype=np.float32)
    pos_scale = np.asarray(hi - origin, dtype=np.float32)
    neg_scale[neg_scale <= 0] = 1
    pos_scale[pos_scale <= 0] = 1
    return neg_scale, pos_scale


def _normalised_offsets(coord, origin, neg_scale, pos_scale) -> np.ndarray:
    """``coord - origin`` divided per side by the instance's float32 divisor, as the released
    float32 division (so values match it bit for bit)."""
    offset = (coord - origin).astype(np.float32)
    return offset / np.where(offset < 0, neg_scale, pos_scale)


def gen_hv_map(inst_map, *, published_offset: bool = False) -> np.ndarray:
    """HV target of a whole instance map (spec section 2).

    Every id is one instance, as given (no connectivity split here; :func:`gen_targets` does that).

    Args:
        inst_map: HxW non-negative integer instance map, 0 = background, arbitrary ids.
        published_offset: reproduce the released code's grid, whose zero row/column lies one pixel
            above/left of the rounded centre of mass (module docstring). Default: the spec's centre.

    Returns:
        HxWx2 float32 in [-1, 1]; channel 0 horizontal (x, column offset, negative left of the centre),
        channel 1 vertical (y, row offset, negative above the centre); 0 on background and on the
        centre column (channel 0) / row (channel 1).
    """
    inst_map = _compact_ids(_check_inst_map(inst_map))
    hv = np.zeros(inst_map.shape + (2,), dtype=np.float32)
    # Flat indices: one gather / scatter per channel is much cheaper than 2-D fancy indexing.
    flat_map = inst_map.ravel()
    flat = np.flatnonzero(flat_map)
    if flat.size == 0:
        return hv
    rows, cols = np.divmod(flat.astype(np.int32), np.int32(inst_map.shape[1]))
    ids = flat_map[flat]
    n_ids = int(ids.max()) + 1
    count = np.bincount(ids, minlength=n_ids)
    present = np.flatnonzero(count)
    # Sums of integer coordinates are exact in float64 (< 2**53); converted back to int below.
    row_sum = np.rint(np.bincount(ids, weights=rows, minlength=n_ids))
    col_sum = np.rint(np.bincount(ids, weights=cols, minlength=n_ids))

    # Tight bounding boxes give the extreme offsets without a per-pixel min/max reduction.
    slices = ndi.find_objects(inst_map)
    rmin = np.zeros(n_ids, np.int64)
    rmax = np.zeros(n_ids, np.int64)
    cmin = np.zeros(n_ids, np.int64)
    cmax = np.zeros(n_ids, np.int64)
    for idx in present[present > 0]:
        row_slice, col_slice = slices[idx - 1]
        rmin[idx], rmax[idx] = row_slice.start, row_slice.stop - 1
        cmin[idx], cmax[idx] = col_slice.start, col_slice.stop - 1

    safe_count = np.maximum(count, 1)
    origin_r = _rounded_origin(row_sum, safe_count, published_offset).astype(np.int32)
    origin_c = _rounded_origin(col_sum, safe_count, published_offset).astype(np.int32)
    flat_hv = hv.reshape(-1, 2)
    neg_c, pos_c = _side_scales(origin_c, cmin, cmax)
    neg_r, pos_r = _side_scales(origin_r, rmin, rmax)
    flat_hv[flat, 0] = _normalised_offsets(cols, origin_c[ids], neg_c[ids], pos_c[ids])
    flat_hv[flat, 1] = _normalised_offsets(rows, origin_r[ids], neg_r[ids], pos_r[ids])
    return hv


def gen_targets(inst_map, type_map, crop_shape, *, min_instance_size: int = 30,
                published_offset: bool = False) -> dict:
    """NP, HV and tp targets of one (augmented) patch, centre-cropped to the output size (spec section 2).

    Order as in training (module docstring): split ids become separate 4-connected instances; pieces
    with fewer than ``min_instance_size`` pixels inside the output window get no HV; HV of the others
    uses their whole extent in the full patch; everything is centre-cropped to ``crop_shape``.
    Only instances touching the window are visited, each on its own bounding box.

    Args:
        inst_map: HxW non-negative integer instance map of the full patch (e.g. 540x540 or 270x270).
        type_map: HxW integer type map (0 background), or None when there are no type labels.
        crop_shape: output size, an int or ``(h, w)``; e.g. 80 for the original model.
        min_instance_size: ``TARGETS.MIN_INSTANCE_SIZE``; pixels inside the window below which an
            instance gets no HV target.
        published_offset: see :func:`gen_hv_map`.

    Returns:
        dict with ``"np"``: hxw int32 in {0, 1} (all instance pixels, small ones included);
        ``"inst"``: hxw int32, the cropped ``inst_map`` with its ids unchanged (the released label
        channel 0, the MSGE focus of ``LOSS.MSGE_FOCUS='published'``); ``"hv"``: hxwx2 float32 in
        [-1, 1], channel 0 x, channel 1 y;
        ``"tp"``: hxw int32 type ids, the cropped ``type_map`` unchanged (only when it is not None).
    """
    inst_map = _check_inst_map(inst_map)
    row_win, col_win = centre_crop_window(inst_map.shape, crop_shape)
    top, left = row_win.start, col_win.start
    crop_h, crop_w = row_win.stop - top, col_win.stop - left

    hv = np.zeros((crop_h, crop_w, 2), dtype=np.float32)
    window = inst_map[row_win, col_win]
    inst_window = window.astype(np.int32)  # before any compaction: the ids as given
    window_ids = np.unique(window)
    window_ids = window_ids[window_ids > 0]
    if window_ids.size:
        if int(window_ids[-1]) > _MAX_SPARSE_IDS_PER_PIXEL * inst_map.size + 1024:
            inst_map = _compact_ids(inst_map)
            window = inst_map[row_win, col_win]
            window_ids = np.unique(window)
            window_ids = window_ids[window_ids > 0]
        # Only ids up to the largest one seen in the window matter.
        slices = ndi.find_objects(inst_map, max_label=int(window_ids[-1]))
        for inst_id in window_ids:
            _add_instance_hv(hv, inst_map, int(inst_id), slices[int(inst_id) - 1], top, left,
                             min_instance_size, published_offset)

    targets = {"np": (window > 0).astype(np.int32), "inst": inst_window, "hv": hv}
    if type_map is not None:
        type_map = np.asarray(type_map)
        if type_map.shape != inst_map.shape:
            raise ValueError(f"type_map shape {type_map.shape} differs from inst_map shape {inst_map.shape}")
        targets["tp"] = type_map[row_win, col_win].astype(np.int32)
    return targets


def _add_instance_hv(hv, inst_map, inst_id, bbox, top, left, min_size, published_offset) -> None:
    """Write the HV of every 4-connected piece of ``inst_id`` that keeps >= ``min_size`` px in the window."""
    box_r0, box_c0 = bbox[0].start, bbox[1].start
    crop_h, crop_w = hv.shape[:2]
    # The window in bounding-box coordinates (clipped to the box).
    win_r0, win_r1 = max(top - box_r0, 0), min(top + crop_h - box_r0, bbox[0].stop - box_r0)
    win_c0, win_c1 = max(left - box_c0, 0), min(left + crop_w - box_c0, bbox[1].stop - box_c0)
    mask = inst_map[bbox] == inst_id
    pieces, n_pieces = ndi.label(mask, structure=_CROSS)  # 4-connectivity, as the released code
    for piece in range(1, n_pieces + 1):
        piece_mask = (pieces == piece) if n_pieces > 1 else mask
        in_window = piece_mask[win_r0:win_r1, win_c0:win_c1]
        if np.count_nonzero(in_window) < min_size:
            continue
        rows, cols = np.nonzero(piece_mask)
        count = np.array([rows.size])
        origin_r = _rounded_origin([rows.sum() + box_r0 * rows.size], count, published_offset)
        origin_c = _rounded_origin([cols.sum() + box_c0 * cols.size], count, published_offset)
        lo_r, hi_r = np.array([rows.min() + box_r0]), np.array([rows.max() + box_r0])
        lo_c, hi_c = np.array([cols.min() + box_c0]), np.array([cols.max() + box_c0])
        # Values only for the pixels inside the window, in full-patch coordinates.
        win_rows, win_cols = np.nonzero(in_window)
        abs_rows = win_rows + win_r0 + box_r0
        abs_cols = win_cols + win_c0 + box_c0
        out_rows, out_cols = abs_rows - top, abs_cols - left
        hv[out_rows, out_cols, 0] = _normalised_offsets(abs_cols, origin_c, *_side_scales(origin_c, lo_c, hi_c))
        hv[out_rows, out_cols, 1] = _normalised_offsets(abs_rows, origin_r, *_side_scales(origin_r, lo_r, hi_r))
