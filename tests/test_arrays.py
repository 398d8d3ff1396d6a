"""misc/arrays.py: the one label-map check, relabelling, RGB check and 4-connectivity used by every stage."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from misc.arrays import CROSS_4, check_label_map, check_rgb_image, relabel_contiguous


def test_cross_4_is_scipy_default_structure_and_read_only():
    assert CROSS_4.dtype == bool and CROSS_4.tolist() == ndi.generate_binary_structure(2, 1).tolist()
    with pytest.raises(ValueError):
        CROSS_4[0, 0] = True
    # two pixels touching only diagonally are two objects
    assert ndi.label(np.array([[1, 0], [0, 1]]), structure=CROSS_4)[1] == 2


@pytest.mark.parametrize("array, kwargs, message", [
    (np.zeros((2, 2, 1), np.int32), {}, "instance map must be a 2-D (HxW) map, got shape (2, 2, 1)"),
    (np.zeros(4, np.int32), {"what": "true"}, "true must be a 2-D (HxW) map, got shape (4,)"),
    (np.zeros((2, 2), np.float32), {}, "instance map must hold integer ids, got dtype float32"),
    (np.array([["a"]]), {"whole_floats": True}, "instance map must hold integer ids, got dtype <U1"),
    (np.zeros((2, 2), bool), {"allow_bool": False}, "instance map must hold integer ids, got dtype bool"),
    (np.array([[0.0, 1.5]]), {"whole_floats": True}, "instance map holds non-integer values"),
    (np.array([[0.0, np.nan]]), {"whole_floats": True}, "instance map holds non-integer values"),
    (np.array([[0.0, np.inf]]), {"whole_floats": True}, "instance map holds non-integer values"),
    (np.array([[0, -1]], np.int16), {"what": "'inst_map'"}, "'inst_map' holds negative ids"),
    (np.array([[0.0, -2.0]]), {"whole_floats": True}, "instance map holds negative ids"),
])
def test_check_label_map_refuses_in_one_line(array, kwargs, message):
    with pytest.raises(ValueError) as info:
        check_label_map(array, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("array, kwargs", [
    (np.array([[0, 3], [3, 7]], np.int32), {}),
    (np.array([[0, 255]], np.uint8), {"allow_bool": False}),
    (np.array([[True, False]]), {}),
    (np.array([[0.0, 4.0]]), {"whole_floats": True}),
    (np.zeros((0, 3), np.int64), {}),
])
def test_check_label_map_returns_good_maps_unchanged(array, kwargs):
    checked = check_label_map(array, **kwargs)
    assert checked.dtype == array.dtype and np.array_equal(checked, array)
    assert check_label_map(array.tolist() if array.size else array, **kwargs).shape == array.shape


@pytest.mark.parametrize("offset", [0, 10**12])  # small ids: lookup table; huge ids: the sorting path
def test_relabel_contiguous_keeps_the_order_of_the_ids(offset):
    inst = np.array([[0, 7, 7], [3, 0, 9]], np.int64)
    inst[inst > 0] += offset
    relabelled, n = relabel_contiguous(inst)
    assert n == 3 and relabelled.dtype == np.int64
    assert relabelled.tolist() == [[0, 2, 2], [1, 0, 3]]
    as_int32, n32 = relabel_contiguous(inst, dtype=np.int32)
    assert n32 == 3 and as_int32.dtype == np.int32 and as_int32.tolist() == [[0, 2, 2], [1, 0, 3]]
    # no background pixel at all: the smallest id still becomes 1
    full = np.array([[5, 5], [9, 9]], np.int64) + offset
    assert relabel_contiguous(full)[0].tolist() == [[1, 1], [2, 2]]


def test_relabel_contiguous_edge_cases():
    empty, n = relabel_contiguous(np.zeros((0, 4), np.int32))
    assert n == 0 and empty.shape == (0, 4) and empty.dtype == np.int64
    assert relabel_contiguous(np.zeros((2, 2), np.uint8))[0].tolist() == [[0, 0], [0, 0]]
    assert relabel_contiguous(np.array([[True, False]]))[0].tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="holds negative ids"):
        relabel_contiguous(np.array([[-1, 2]]))


def test_check_rgb_image():
    image = np.zeros((2, 3, 3), np.uint8)
    assert check_rgb_image(image) is image
    for bad in (np.zeros((2, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 3), np.float32)):
        with pytest.raises(ValueError) as info:
            check_rgb_image(bad, "thumbnail")
        assert str(info.value) == f"thumbnail must be HxWx3 uint8 RGB, got shape {bad.shape} dtype {bad.dtype}"


def test_every_stage_uses_the_one_copy():
    import dataset.convert
    import metrics.stats
    import misc.io
    import misc.outputs
    import misc.viz
    import src.infer.tissue
    import src.maps.postproc
    import src.maps.targets

    assert src.maps.postproc._CROSS is src.maps.targets._CROSS is CROSS_4
    assert metrics.stats.relabel_contiguous is src.maps.postproc.relabel_contiguous \
        is src.maps.targets.relabel_contiguous is dataset.convert.relabel_contiguous is relabel_contiguous
    for module in (metrics.stats, misc.io, misc.outputs, misc.viz, src.maps.targets):
        assert module.check_label_map is check_label_map
    assert misc.viz.check_rgb_image is src.infer.tissue.check_rgb_image is check_rgb_image
