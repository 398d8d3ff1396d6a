"""Post-processing (spec section 5) on tiny hand-built discs, with exact expectations."""
import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from misc.viz import instance_contour
from src.config import make_config
from src.maps.postproc import (
    PostprocParams,
    _fill_holes,
    _normalize,
    hv_sobel,
    instances_from_np_hv,
    process,
    remove_small_labels,
)
from src.maps.targets import gen_hv_map

SHAPE = (64, 84)
PARAMS = PostprocParams.from_config(make_config())  # the published values


def _disc(centre, radius, shape=SHAPE):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _two_touching_discs():
    inst_map = np.zeros(SHAPE, np.int32)
    inst_map[_disc((32, 27), 14)] = 1
    inst_map[_disc((32, 54), 14) & (inst_map == 0)] = 2  # the discs overlap by one column: touching
    assert np.count_nonzero(ndi.label(inst_map > 0)[0] == 1) == np.count_nonzero(inst_map)  # one blob
    return inst_map


def _perfect_outputs(inst_map):
    return (inst_map > 0).astype(np.float32), gen_hv_map(inst_map)


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _reference_instances(np_prob, hv):
    """The released steps with the library functions the released code called (scipy fill holes,
    skimage remove_small_objects, ``max_size=9`` being its old ``min_size=10``)."""
    blb = ndi.label((np_prob >= 0.5).astype(np.int32))[0]
    blb = remove_small_objects(blb, max_size=9)
    blb = (blb > 0).astype(np.int32)
    norm = {"alpha": 0, "beta": 1, "norm_type": cv2.NORM_MINMAX, "dtype": cv2.CV_32F}
    h_dir = cv2.normalize(np.ascontiguousarray(hv[..., 0]), None, **norm)
    v_dir = cv2.normalize(np.ascontiguousarray(hv[..., 1]), None, **norm)
    sobel_h = 1 - cv2.normalize(cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=21), None, **norm)
    sobel_v = 1 - cv2.normalize(cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=21), None, **norm)
    overall = np.maximum(sobel_h, sobel_v) - (1 - blb)
    overall[overall < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)
    marker = blb - (overall >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndi.binary_fill_holes(marker).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = remove_small_objects(ndi.label(marker)[0], max_size=9)
    return watershed(dist, marker, mask=blb)


def _random_instance_map(shape, n_nuclei, rng):
    inst_map = np.zeros(shape, np.int32)
    for idx in range(n_nuclei):
        centre = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        inst_map[_disc(centre, rng.uniform(4, 10), shape) & (inst_map == 0)] = idx + 1
    return inst_map


# --- instances_from_np_hv ------------------------------------------------------------------------


def test_two_touching_discs_are_separated():
    truth = _two_touching_discs()
    pred = instances_from_np_hv(*_perfect_outputs(truth), PARAMS)
    assert pred.dtype == np.int32 and pred.shape == SHAPE
    assert set(np.unique(pred)) == {0, 1, 2}
    for inst_id in (1, 2):  # ids follow the raster order of the markers: left disc first
        assert _iou(pred == inst_id, truth == inst_id) > 0.9
    assert np.array_equal(pred > 0, truth > 0)


def test_single_disc_gives_one_instance():
    truth = _disc((30, 40), 12).astype(np.int32)
    pred = instances_from_np_hv(*_perfect_outputs(truth), PARAMS)
    assert set(np.unique(pred)) == {0, 1}
    assert _iou(pred == 1, truth == 1) > 0.95


def test_empty_np_gives_zeros():
    pred = instances_from_np_hv(np.zeros(SHAPE, np.float32), np.zeros(SHAPE + (2,), np.float32), PARAMS)
    assert pred.dtype == np.int32 and pred.shape == SHAPE and not pred.any()
    low = np.full(SHAPE, 0.49, np.float32)  # just below the 0.5 threshold
    assert not instances_from_np_hv(low, np.ones(SHAPE + (2,), np.float32), PARAMS).any()


def test_small_blobs_removed():
    truth = _disc((30, 30), 10).astype(np.int32)
    truth[5:8, 60:63] = 2  # 9 px blob: below the 10 px minimum
    np_prob, hv = _perfect_outputs(truth)
    pred = instances_from_np_hv(np_prob, hv, PARAMS)
    assert not pred[5:8, 60:63].any()
    assert set(np.unique(pred)) == {0, 1}
    labels = np.array([[1, 1, 0, 2], [1, 0, 0, 2], [3, 3, 0, 2], [3, 3, 0, 2]])  # sizes 3, 4, 4
    np.testing.assert_array_equal(remove_small_labels(labels.copy(), 4), np.where(labels == 1, 0, labels))


def test_matches_released_steps_and_ids_contiguous():
    rng = np.random.default_rng(0)
    truth = _random_instance_map((96, 128), 70, rng)
    np_prob = np.clip(cv2.GaussianBlur((truth > 0).astype(np.float32), (5, 5), 0)
                      + rng.normal(0, 0.05, truth.shape).astype(np.float32), 0, 1)
    hv = gen_hv_map(truth) + rng.normal(0, 0.05, truth.shape + (2,)).astype(np.float32)
    pred = instances_from_np_hv(np_prob, hv, PARAMS)
    reference = _reference_instances(np_prob, hv)
    # Same partition; only the ids differ (the reference keeps the gaps of dropped markers).
    ids = np.unique(reference)[1:]
    lut = np.zeros(reference.max() + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    np.testing.assert_array_equal(pred, lut[reference])
    assert pred.dtype == np.int32
    np.testing.assert_array_equal(np.unique(pred), np.arange(pred.max() + 1))
    assert pred.max() > 30


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((40, 50)) < 0.55
        np.testing.assert_array_equal(_fill_holes(mask), ndi.binary_fill_holes(mask))


# --- process -------------------------------------------------------------------------------------


def _type_probs(type_map, nr_types=4):
    """HxWxC probabilities whose per-pixel argmax is ``type_map``."""
    probs = np.full(type_map.shape + (nr_types,), 0.1, np.float32)
    np.put_along_axis(probs, type_map[..., None], 0.7, axis=-1)
    return probs


def test_process_types_centroid_bbox_contour():
    truth = _two_touching_discs()
    np_prob, hv = _perfect_outputs(truth)
    pred, _ = process(np_prob, hv, None, PARAMS)
    type_map = np.zeros(SHAPE, np.int64)
    # Instance 1: 2 / 3 / background mix with 3 the majority.
    left = pred == 1
    rows, cols = np.nonzero(left)
    type_map[rows[::2], cols[::2]] = 3  # about half the pixels
    type_map[rows[1::4], cols[1::4]] = 2  # about a quarter; the rest stays background 0
    # Instance 2: background wins, 1 is the most common non-background class, 2 the rarest.
    right = pred == 2
    rows, cols = np.nonzero(right)
    type_map[rows[::3], cols[::3]] = 1
    type_map[rows[1::7], cols[1::7]] = 2
    inst_map, info = process(np_prob, hv, _type_probs(type_map), PARAMS)
    np.testing.assert_array_equal(inst_map, pred)
    assert set(info) == {1, 2}

    counts = np.bincount(type_map[left], minlength=4)
    assert counts.argmax() == 3
    assert info[1]["type"] == 3 and isinstance(info[1]["type"], int)
    assert info[1]["type_prob"] == counts[3] / (left.sum() + 1e-6)
    counts = np.bincount(type_map[right], minlength=4)
    assert counts.argmax() == 0 and counts[1] > counts[2] > 0
    assert info[2]["type"] == 1
    assert info[2]["type_prob"] == counts[1] / (right.sum() + 1e-6)

    for inst_id, info_i in info.items():
        mask = inst_map == inst_id
        rows, cols = np.nonzero(mask)
        np.testing.assert_array_equal(info_i["bbox"], [[rows.min(), cols.min()], [rows.max() + 1, cols.max() + 1]])
        np.testing.assert_allclose(info_i["centroid"], [cols.mean(), rows.mean()], atol=1e-9)  # (x, y)
        contour = info_i["contour"]
        assert contour.ndim == 2 and contour.shape[1] == 2 and contour.dtype == np.int32
        assert mask[contour[:, 1], contour[:, 0]].all()  # (x, y) points on the instance
        padded = np.pad(mask, 1)
        window = np.stack([padded[contour[:, 1] + 1 + dy, contour[:, 0] + 1 + dx]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        assert (~window).any(axis=0).all()  # each point touches the outside: on the boundary


def test_process_single_disc_centroid_and_bbox_known():
    truth = _disc((30, 45), 10).astype(np.int32)  # row 30, column 45
    inst_map, info = process(*_perfect_outputs(truth), np.ones(SHAPE, np.int64) * 2, PARAMS)
    assert list(info) == [1]
    assert _iou(inst_map == 1, truth == 1) > 0.95
    np.testing.assert_allclose(info[1]["centroid"], [45.0, 30.0], atol=0.05)  # x first, then y
    np.testing.assert_array_equal(info[1]["bbox"], [[20, 35], [41, 56]])
    assert info[1]["type"] == 2 and info[1]["type_prob"] == inst_map.sum() / (inst_map.sum() + 1e-6)


def test_process_background_only_instance_keeps_type_zero():
    truth = _disc((30, 45), 10).astype(np.int32)
    _, info = process(*_perfect_outputs(truth), _type_probs(np.zeros(SHAPE, np.int64)), PARAMS)
    assert info[1]["type"] == 0


def test_process_without_types():
    inst_map, info = process(*_perfect_outputs(_two_touching_discs()), None, PARAMS)
    assert inst_map.dtype == np.int32
    assert set(info) == {1, 2}
    for info_i in info.values():
        assert info_i["type"] is None and info_i["type_prob"] is None
        assert set(info_i) == {"bbox", "centroid", "contour", "type", "type_prob"}
    empty_map, empty_info = process(np.zeros(SHAPE, np.float32), np.zeros(SHAPE + (2,), np.float32), None, PARAMS)
    assert not empty_map.any() and empty_info == {}


def test_contour_of_tiny_instances():
    one = np.zeros((1, 1), np.uint8)
    one[0, 0] = 1
    np.testing.assert_array_equal(instance_contour(one), [[0, 0]])
    two = np.ones((1, 2), np.uint8)
    contour = instance_contour(two)
    assert contour.shape[1] == 2 and {tuple(p) for p in contour} == {(0, 0), (1, 0)}
    ring = np.ones((7, 7), np.uint8)  # with a hole: the outer outline, not the hole's
    ring[2:5, 2:5] = 0
    contour = instance_contour(ring)
    assert contour[:, 0].min() == 0 and contour[:, 0].max() == 6


def test_a_block_scaled_by_the_whole_maps_ranges_has_their_values_and_nuclei():
    """Issue 22.3: a block of a large tile is min-max scaled by the whole tile's hv and Sobel extremes; OpenCV does
    the arithmetic either way, so every pixel gets the whole tile's value, and the block's nuclei are the tile's."""
    rng = np.random.default_rng(5)
    inst_map = _random_instance_map((300, 280), 120, rng)
    np_prob, hv = _perfect_outputs(inst_map)
    hv = (hv * 0.8 + rng.normal(0, 0.05, hv.shape)).astype(np.float32)  # extremes that a block does not reach
    hv_range = tuple((hv[..., c].min(), hv[..., c].max()) for c in (0, 1))
    whole = hv_sobel(hv, 21)
    sobel_range = tuple((s.min(), s.max()) for s in whole)
    region, core = (slice(40, 260), slice(30, 250)), (slice(70, 230), slice(60, 220))  # 30 px of margin
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, region, strict=True))
    block = hv_sobel(hv[region], 21, hv_range)
    for k in (0, 1):
        # the block alone would be scaled otherwise: its extremes are not the tile's
        assert (block[k].min(), block[k].max()) != sobel_range[k]
        np.testing.assert_array_equal(block[k][inner], whole[k][core])  # the kernel stays in the region
        scaled = cv2.normalize(whole[k], None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
        np.testing.assert_array_equal(_normalize(block[k], sobel_range[k])[inner], scaled[core])
    expected = instances_from_np_hv(np_prob, hv, PARAMS)
    got = instances_from_np_hv(np_prob[region], hv[region], PARAMS, hv_range=hv_range, sobel_range=sobel_range)
    for inst_id in np.unique(got[inner])[1:]:  # each nucleus met in the core is the tile's
        mask = got == inst_id
        if not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()):
            assert len(np.unique(expected[region][mask])) == 1 and (expected[region][mask] > 0).all()
            assert (expected == expected[region][mask][0]).sum() == mask.sum()
    # the maps' own extremes as ranges change nothing
    np.testing.assert_array_equal(instances_from_np_hv(np_prob, hv, PARAMS, hv_range=hv_range,
                                                       sobel_range=sobel_range),
                                  expected)


def test_postproc_params_come_from_the_config_alone():
    """Issue 21.4: the published values are stated once, in the config; the object carries an override."""
    from src.config import config_from_args

    assert PARAMS.record() == {"np_threshold": 0.5, "marker_threshold": 0.4, "sobel_ksize": 21, "min_size": 10,
                               "energy_blur": 3, "marker_opening": 5}
    assert PostprocParams.from_config(config_from_args(["POSTPROC.SOBEL_KSIZE=11"])).sobel_ksize == 11
    import inspect

    signature = inspect.signature(instances_from_np_hv)
    assert all(p.default is inspect.Parameter.empty for name, p in signature.parameters.items()
               if name not in ("hv_range", "sobel_range"))
