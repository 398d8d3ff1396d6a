"""HoVer-Net post-processing: Sobel-based marker-controlled watershed and per-instance info (spec section 5).

Pure numpy/scipy/OpenCV/scikit-image; never imports TensorFlow.

Follows the released ``proc_np_hv`` (vqdang/hover_net, TF-era ``src/postproc/hover.py``, the same
steps in the PyTorch-era ``models/hovernet/post_proc.py``) step by step, including its dtypes: the
hv channels are min-max normalised over the whole tile to float32 by ``cv2.normalize``, the Sobel
responses are float64, the energy is float64. Where this module departs from the released code it
says so (contiguous output ids, speed-ups that give identical results, contours of tiny or holed
instances).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from misc.arrays import CROSS_4 as _CROSS  # 4-connectivity, as every labelling of the released code
from misc.arrays import relabel_contiguous
from misc.viz import instance_contour

__all__ = ["PostprocParams", "instances_from_np_hv", "hv_sobel", "process", "instance_info", "remove_small_labels"]


@dataclass(frozen=True)
class PostprocParams:
    """The post-processing settings (spec section 5): the ``POSTPROC`` section of the config, which holds their
    published values (build with :meth:`from_config`; nothing here repeats them).

    Attributes:
        np_threshold: foreground probability threshold, in [0, 1].
        marker_threshold: threshold of the marker energy, in [0, 1].
        sobel_ksize: odd Sobel kernel side (px) on the hv maps.
        min_size: px; smaller blobs and markers are dropped.
        energy_blur: odd Gaussian kernel side (px) on the energy.
        marker_opening: side (px) of the elliptical opening of the markers.
    """

    np_threshold: float
    marker_threshold: float
    sobel_ksize: int
    min_size: int
    energy_blur: int
    marker_opening: int

    @classmethod
    def from_config(cls, cfg) -> PostprocParams:
        p = cfg.POSTPROC
        return cls(np_threshold=float(p.NP_THRESHOLD), marker_threshold=float(p.MARKER_THRESHOLD),
                   sobel_ksize=int(p.SOBEL_KSIZE), min_size=int(p.MIN_SIZE), energy_blur=int(p.ENERGY_BLUR),
                   marker_opening=int(p.MARKER_OPENING))

    def record(self) -> dict:
        """``{name: value}``, JSON-able: the ``postproc`` record of ``run_info.json`` and of a slide's plan."""
        return asdict(self)


def remove_small_labels(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every label with fewer than ``min_size`` pixels, in place; returns ``labels``.

    Same result as ``skimage.morphology.remove_small_objects(labels, min_size)`` on a labelled
    int array (sizes by label, not re-derived connectivity), without its warnings or deprecations.
    """
    if min_size > 0 and labels.size:
        sizes = np.bincount(labels.ravel())
        too_small = sizes < min_size
        too_small[0] = False
        if too_small.any():
            labels[too_small[labels]] = 0
    return labels


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` with its default (4-connected) structure, by labelling.

    A hole is a 4-connected background component not touching the image border; labelling the
    background once is several times faster than the iterative dilation scipy uses, same result.
    """
    background, _ = ndi.label(~mask, structure=_CROSS)
    border_labels = np.unique(np.concatenate(
        [background[0], background[-1], background[:, 0], background[:, -1]]))
    is_hole = np.ones(int(background.max()) + 1, dtype=bool)
    is_hole[border_labels] = False
    is_hole[0] = False  # label 0 is the foreground itself
    return mask | is_hole[background]


def _normalize(array: np.ndarray, value_range=None) -> np.ndarray:
    """``array`` min-max scaled to [0, 1] float32 by ``cv2.normalize``: over its own extremes (the released code),
    or over ``value_range`` (lo, hi), those of the whole image when ``array`` is a block of it.

    With a range, OpenCV still does the arithmetic, fed the range's ends beside the values (clipped into it: only
    a block's outermost pixels, whose Sobel responses see its edge, fall outside), so every value scales to the
    float32 the whole image gives it.
    """
    if value_range is None:
        return cv2.normalize(array, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    values = np.empty(array.size + 2, array.dtype)
    np.clip(array.reshape(-1), *value_range, out=values[:-2])
    values[-2:] = value_range
    scaled = cv2.normalize(values, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    return scaled[:-2].reshape(array.shape)


def hv_sobel(hv, sobel_ksize: int, hv_range=None) -> tuple[np.ndarray, np.ndarray]:
    """HxW float64 Sobel responses of the min-max normalised hv maps: horizontal derivative of x, vertical of y
    (spec section 5, step 2, before their own normalisation). ``hv_range``: ((lo, hi) of x, (lo, hi) of y) to
    normalise over instead of the maps' own extremes (:func:`_normalize`)."""
    hv_range = (None, None) if hv_range is None else hv_range
    h_dir = _normalize(hv[..., 0], hv_range[0])
    sobel_h = cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=sobel_ksize)
    del h_dir
    v_dir = _normalize(hv[..., 1], hv_range[1])
    sobel_v = cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=sobel_ksize)
    return sobel_h, sobel_v


def instances_from_np_hv(np_prob, hv, params: PostprocParams, *, hv_range=None, sobel_range=None) -> np.ndarray:
    """Nuclear instances from the NP probability and the HV maps (spec section 5, steps 1-5).

    Args:
        np_prob: HxW float, nuclear probability in [0, 1] (softmax channel 1 of the np head).
        hv: HxWx2 float, channel 0 horizontal (x) map, channel 1 vertical (y) map, nominally [-1, 1].
        params: the thresholds and kernel sizes (:class:`PostprocParams`).
        hv_range, sobel_range: None (the released code: the hv maps and their Sobel responses are min-max
            normalised over these maps), or ((lo, hi), (lo, hi)) of the x and y maps and of the horizontal and
            vertical responses over a whole image of which these maps are a block (``src/infer/tiles.py``): the
            block's pixels then get the whole image's values, its nuclei the whole image's nuclei.

    Returns:
        HxW int32 instance map, ids 1..N contiguous (in increasing order of the watershed markers,
        i.e. raster order of each marker's first pixel), 0 background. The released code returned
        the raw marker ids, which have gaps where small markers were dropped.
    """
    np_prob = np.asarray(np_prob, dtype=np.float32)
    hv = np.asarray(hv, dtype=np.float32)
    if np_prob.ndim != 2 or hv.shape != np_prob.shape + (2,):
        raise ValueError(f"expected np_prob HxW and hv HxWx2, got {np_prob.shape} and {hv.shape}")

    # 1. Blobs: threshold, 4-connected components, drop those < min_size px.
    # (Every full-size temporary is deleted once used: a block of a large tile (src/infer/blocks.py) then holds about
    # half as many bytes per pixel, with the same results.)
    blobs, _ = ndi.label(np_prob >= params.np_threshold, structure=_CROSS)
    blb = (remove_small_labels(blobs, params.min_size) > 0).astype(np.int32)
    del blobs
    if not blb.any():
        # Released code: no markers, watershed labels nothing. Skip the filtering work.
        return np.zeros(np_prob.shape, dtype=np.int32)

    # 2. Edges of the min-max normalised hv maps, horizontal derivative of x, vertical of y.
    sobel_h, sobel_v = hv_sobel(hv, params.sobel_ksize, hv_range)
    sobel_range = (None, None) if sobel_range is None else sobel_range
    sobel_h = 1 - _normalize(sobel_h, sobel_range[0])
    sobel_v = 1 - _normalize(sobel_v, sobel_range[1])
    # float32 - int32 promotes to float64, as in the released code.
    edges = np.maximum(sobel_h, sobel_v) - (1 - blb)
    del sobel_h, sobel_v
    edges[edges < 0] = 0

    # 3. Energy: nuclei are mountains of (1 - edges); negate so they become basins.
    energy = -cv2.GaussianBlur((1.0 - edges) * blb, (params.energy_blur, params.energy_blur), 0)

    # 4. Markers: blob interiors away from strong edges, cleaned.
    marker = blb - (edges >= params.marker_threshold).astype(np.int32)
    del edges
    mask = blb > 0
    del blb
    marker[marker < 0] = 0
    marker = _fill_holes(marker > 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (params.marker_opening, params.marker_opening))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    markers, _ = ndi.label(marker, structure=_CROSS)
    del marker
    remove_small_labels(markers, params.min_size)

    # 5. Watershed from the markers within the blobs (skimage default connectivity 1 = 4-connected).
    inst_map = watershed(energy, markers, mask=mask)
    del energy, markers, mask
    return relabel_contiguous(inst_map, dtype=np.int32)[0]  # ids 1..N in the watershed's order


def _instance_type(type_crop: np.ndarray, n_types: int) -> tuple[int, float]:
    """Majority vote of per-pixel type ids over one instance (spec section 5, step 6).

    Ties go to the lower type id (the released code sorts ``np.unique`` counts with a stable sort).
    If background (0) wins and other types are present, the most common of those is taken (the
    released "second most dominant"). ``type_prob = votes / (n_pixels + 1e-6)`` as released.
    """
    counts = np.bincount(type_crop, minlength=n_types)
    inst_type = int(np.argmax(counts))
    if inst_type == 0 and counts.size > 1 and counts[1:].max() > 0:
        inst_type = int(np.argmax(counts[1:])) + 1
    return inst_type, float(counts[inst_type] / (type_crop.size + 1.0e-6))


def process(np_prob, hv, tp_prob, params: PostprocParams, *, hv_range=None,
            sobel_range=None) -> tuple[np.ndarray, dict]:
    """Instance map plus per-instance bbox, centroid, contour and type (spec section 5, steps 1-6).

    Args:
        np_prob: HxW float nuclear probability; hv: HxWx2 float (channel 0 x, channel 1 y).
        tp_prob: None, HxWxC float type probabilities (C = nr_types, channel 0 background; the
            per-pixel argmax votes), or an HxW int map of per-pixel type ids already argmax-ed.
        params, hv_range, sobel_range: as for :func:`instances_from_np_hv`.

    Returns:
        ``(inst_map, inst_info)``: HxW int32 instance map with ids 1..N, and a dict id -> {
        ``"bbox"``: 2x2 int32 array ``[[rmin, cmin], [rmax, cmax]]`` (max exclusive);
        ``"centroid"``: float64 array ``[x, y]`` (column, row; image moments);
        ``"contour"``: Kx2 int32 array of (x, y) boundary points (:func:`misc.viz.instance_contour`, the
        outline the overlays draw);
        ``"type"``: int type id, or None without ``tp_prob``;
        ``"type_prob"``: float fraction of the instance's pixels voting for that type, or None }.
    """
    inst_map = instances_from_np_hv(np_prob, hv, params, hv_range=hv_range, sobel_range=sobel_range)
    type_map = None
    n_types = 1
    if tp_prob is not None:
        tp_prob = np.asarray(tp_prob)
        if tp_prob.ndim == 3:
            n_types = tp_prob.shape[-1]
            type_map = np.argmax(tp_prob, axis=-1).astype(np.intp)
        elif tp_prob.ndim == 2:
            type_map = tp_prob.astype(np.intp)
            n_types = int(type_map.max()) + 1 if type_map.size else 1
        else:
            raise ValueError(f"tp_prob must be HxWxC or HxW, got shape {tp_prob.shape}")
        if type_map.shape != inst_map.shape:
            raise ValueError(f"tp_prob shape {tp_prob.shape} does not match np_prob {inst_map.shape}")
    return inst_map, instance_info(inst_map, type_map, n_types)


def instance_info(inst_map: np.ndarray, type_map: np.ndarray | None = None, n_types: int = 1) -> dict:
    """Per-instance bbox, centroid, contour (and type when ``type_map`` is given) of an HxW int instance map.

    ``type_map``: None or HxW int per-pixel type ids in [0, ``n_types``). Returns id -> the dict that
    :func:`process` documents (ids as present in ``inst_map``, ascending).
    """
    inst_info = {}
    for index, bbox in enumerate(ndi.find_objects(inst_map)):
        if bbox is None:
            continue
        inst_id = index + 1
        row_slice, col_slice = bbox
        mask_crop = (inst_map[bbox] == inst_id).astype(np.uint8)
        moments = cv2.moments(mask_crop, binaryImage=True)
        centroid = np.array([moments["m10"] / moments["m00"] + col_slice.start,
                             moments["m01"] / moments["m00"] + row_slice.start])
        contour = instance_contour(mask_crop)
        contour[:, 0] += col_slice.start
        contour[:, 1] += row_slice.start
        info = {
            "bbox": np.array([[row_slice.start, col_slice.start], [row_slice.stop, col_slice.stop]],
                             dtype=np.int32),
            "centroid": centroid,
            "contour": contour,
            "type": None,
            "type_prob": None,
        }
        if type_map is not None:
            info["type"], info["type_prob"] = _instance_type(type_map[bbox][mask_crop > 0], n_types)
        inst_info[inst_id] = info
    return inst_info
