"""dataset/: readers, type merge, each augmentation, the mapper and the dataflows, on tiny synthetic data."""
import itertools

import cv2
import numpy as np
import pytest

from dataset import augment as aug
from dataset.dataflow import (
    PatchDataFlow,
    TrainingDataPreprocessor,
    datapoint_names,
    get_train_dataflow,
    get_valid_dataflow,
    load_patch,
    resolve_num_workers,
)
from dataset.extraction import extract_dataset
from dataset.readers import ConsepReader, InstanceReader, get_reader, merge_types
from misc.io import InputError, save_label_mat
from src.config import config_from_args, make_config

# --- synthetic data ---------------------------------------------------------------------------------


def _discs(shape, centres, radius):
    """HxW int32 instance map with disc i+1 at centres[i] (later discs overwrite earlier ones)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    inst = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        inst[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = k
    return inst


def _tile(shape=(40, 60), seed=0):
    """(image HxWx3 uint8, inst HxW int32, type HxW int32) with three nuclei, two touching, and skipped id 3."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    inst = _discs(shape, [(10, 10), (10, 20), (25, 40)], 5)
    inst[inst == 3] = 4  # a skipped id
    types = np.select([inst == 1, inst == 2, inst == 4], [1, 5, 7], 0).astype(np.int32)
    return image, inst, types


def _write_dataset(root, names=("a", "b"), with_types=True, shape=(40, 60)):
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    tiles = {}
    for k, name in enumerate(names):
        image, inst, types = _tile(shape, seed=k)
        assert cv2.imwrite(str(root / "Images" / f"{name}.png"), image[..., ::-1])
        save_label_mat(root / "Labels" / f"{name}.mat", inst, types if with_types else None)
        tiles[name] = (image, inst, types)
    return tiles


# --- readers ----------------------------------------------------------------------------------------


def test_consep_reader_yields_rgb_image_and_maps(tmp_path):
    tiles = _write_dataset(tmp_path)
    reader = get_reader("consep", tmp_path)
    assert isinstance(reader, ConsepReader) and reader.names == ["a", "b"] and len(reader) == 2
    samples = list(reader)
    for sample in samples:
        image, inst, types = tiles[sample.name]
        assert sample.image.dtype == np.uint8 and sample.image.shape == (40, 60, 3)
        np.testing.assert_array_equal(sample.image, image)
        assert sample.inst_map.dtype == np.int32 and sample.type_map.dtype == np.int32
        np.testing.assert_array_equal(sample.inst_map, inst)
        np.testing.assert_array_equal(sample.type_map, types)


def test_consep_types_are_merged_when_asked(tmp_path):
    # type merging has one path: dataset.extraction.extract_dataset(type_merge=...) over the reader's raw types
    tiles = _write_dataset(tmp_path / "data")
    extract_dataset(tmp_path / "data", tmp_path / "out", "consep", patch_size=100, step=80,
                    type_merge=make_config().DATA.TYPE_MERGE, progress=False)
    merged = np.load(tmp_path / "out" / "a_0000_0000.npy")[10:50, 10:70, 4]  # the 40x60 tile, mirror offset 10
    inst = tiles["a"][1]
    np.testing.assert_array_equal(merged, np.select([inst == 1, inst == 2, inst == 4], [1, 4, 4], 0))


def test_instance_reader_mat_npy_and_label_images(tmp_path):
    _write_dataset(tmp_path, names=("a", "b", "c", "d"), with_types=False)
    inst = _tile()[1]
    labels = tmp_path / "Labels"
    for name in "bcd":
        (labels / f"{name}.mat").unlink()
    np.save(labels / "b.npy", np.dstack([inst, inst * 0 + 9]))  # published HxWx2 layout: channel 0 is used
    assert cv2.imwrite(str(labels / "c.png"), inst.astype(np.uint16))  # 16-bit id image
    colours = np.zeros(inst.shape + (3,), np.uint8)
    colours[inst == 1], colours[inst == 2], colours[inst == 4] = (0, 0, 200), (0, 200, 0), (200, 0, 0)
    assert cv2.imwrite(str(labels / "d.png"), colours)  # colour-coded map
    reader = get_reader("instance", tmp_path)
    assert isinstance(reader, InstanceReader)
    samples = {s.name: s for s in reader}
    for name in "abc":
        assert samples[name].type_map is None
        np.testing.assert_array_equal(samples[name].inst_map, inst)
    coded = samples["d"].inst_map  # ids renumbered, same partition
    assert coded.dtype == np.int32 and set(np.unique(coded)) == {0, 1, 2, 3}
    for k in (1, 2, 4):
        assert len(np.unique(coded[inst == k])) == 1 and coded[inst == k][0] > 0
    np.testing.assert_array_equal(coded == 0, inst == 0)


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        get_reader("consep", tmp_path / "missing")
    _write_dataset(tmp_path, names=("a", "b", "c"))
    (tmp_path / "Labels" / "b.mat").unlink()
    (tmp_path / "Labels" / "c.mat").unlink()
    with pytest.raises(InputError, match=r"2 image\(s\): b.png, c.png"):
        get_reader("consep", tmp_path)
    with pytest.raises(InputError, match="unknown dataset kind"):
        get_reader("pannuke", tmp_path)
    with pytest.raises(InputError, match="no type labels"):
        extract_dataset(tmp_path, tmp_path / "out", "instance", 540, 80, type_merge={1: 1}, progress=False)


def test_reader_errors_for_no_images_shape_mismatch_and_missing_type_map(tmp_path):
    (tmp_path / "empty" / "Images").mkdir(parents=True)
    (tmp_path / "empty" / "Labels").mkdir()
    with pytest.raises(InputError, match="no images"):
        get_reader("instance", tmp_path / "empty")
    root = tmp_path / "mismatch"
    _write_dataset(root, names=("a",))
    save_label_mat(root / "Labels" / "a.mat", np.zeros((40, 61), np.int32), np.zeros((40, 61), np.int32))
    with pytest.raises(InputError, match="40x61 but the image a.png is 40x60"):
        list(get_reader("consep", root))
    root = tmp_path / "untyped"
    _write_dataset(root, names=("a",), with_types=False)
    with pytest.raises(InputError, match="missing key 'type_map'"):
        list(get_reader("consep", root))


def test_merge_types_published_mapping_and_unmapped_ids():
    mapping = make_config().DATA.TYPE_MERGE
    merged = merge_types(np.array([[0, 1, 2, 3, 4, 5, 6, 7]]), mapping)
    assert merged.dtype == np.int32
    np.testing.assert_array_equal(merged, [[0, 1, 2, 3, 3, 4, 4, 4]])
    np.testing.assert_array_equal(merge_types(np.zeros((2, 2), np.int32), mapping), np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"\[8, 9\]"):
        merge_types(np.array([[0, 8, 9, 1]]), mapping)


# --- augmentation -----------------------------------------------------------------------------------

PARAMS = aug.AugParams.from_config(make_config())


def _patch(size=61, seed=0):
    """Image whose red channel equals the instance id (ids < 256), plus HxWx2 int32 labels."""
    rng = np.random.default_rng(seed)
    inst = _discs((size, size), [(15, 15), (15, 26), (40, 40), (50, 12)], 6)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    image[..., 0] = inst * 40
    labels = np.dstack([inst * 1000, inst % 3]).astype(np.int32)  # ids > 255 on purpose
    return image, labels


def test_aug_params_from_config_hold_published_values():
    assert PARAMS.shear_deg == 5 and PARAMS.scale == (0.8, 1.2) and PARAMS.rotate_deg == 179
    assert PARAMS.translate_frac == 0.01 and PARAMS.blur_ksize == (3, 5) and PARAMS.noise_sigma == 1.0
    assert PARAMS.hue == (-8, 8) and PARAMS.saturation == 0.2 and PARAMS.brightness == 26
    assert PARAMS.contrast == (0.75, 1.25) and PARAMS.blur_noise_prob == 0.5


def test_identity_geometry_and_exact_flips():
    image, labels = _patch()
    out_image, out_labels = aug.apply_geometry(image, labels, aug.IDENTITY_GEOMETRY)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)
    flips = aug.IDENTITY_GEOMETRY._replace(flip_vertical=True, flip_horizontal=True)
    out_image, out_labels = aug.apply_geometry(image, labels, flips)
    np.testing.assert_array_equal(out_image, image[::-1, ::-1])
    np.testing.assert_array_equal(out_labels, labels[::-1, ::-1])
    assert out_labels.flags.c_contiguous and out_labels.dtype == np.int32


def test_rotation_by_90_degrees_is_exact_about_the_pixel_centre():
    image, labels = _patch()
    rotated = aug.IDENTITY_GEOMETRY._replace(rotate_deg=90.0)
    out_image, out_labels = aug.apply_geometry(image, labels, rotated)
    # OpenCV's positive angle turns the picture counter-clockwise on screen, like np.rot90
    np.testing.assert_array_equal(out_image, np.rot90(image))
    np.testing.assert_array_equal(out_labels, np.rot90(labels))


def test_shift_moves_by_whole_pixels_with_zero_border():
    image, labels = _patch()
    shifted = aug.IDENTITY_GEOMETRY._replace(shift_x=3.0, shift_y=-2.0)
    _, out_labels = aug.apply_geometry(image, labels, shifted)
    np.testing.assert_array_equal(out_labels[:-2, 3:], labels[2:, :-3])
    assert not out_labels[:, :3].any() and not out_labels[-2:].any()


def test_random_geometry_moves_image_and_labels_together_and_keeps_label_values():
    image, labels = _patch()
    rng = np.random.RandomState(0)
    for _ in range(10):
        geometry = aug.sample_geometry(rng, image.shape[:2], PARAMS)
        assert 0.8 <= geometry.scale <= 1.2 and abs(geometry.rotate_deg) <= 179 and abs(geometry.shear_deg) <= 5
        assert abs(geometry.shift_x) <= 1 and geometry.shift_x == round(geometry.shift_x)  # 1% of 61 px
        out_image, out_labels = aug.apply_geometry(image, labels, geometry)
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_labels.shape == labels.shape and out_labels.dtype == np.int32
        # nearest interpolation: labels keep their values, and the red channel still encodes the ids
        assert set(np.unique(out_labels[..., 0])) <= set(np.unique(labels[..., 0]))
        assert set(np.unique(out_labels[..., 1])) <= set(np.unique(labels[..., 1]))
        np.testing.assert_array_equal(out_image[..., 0].astype(np.int32) * 25, out_labels[..., 0])


def test_affine_matrix_keeps_the_centre_fixed_with_shear():
    geometry = aug.GeometryParams(1.1, 0.0, 0.0, 4.0, 30.0, False, False)
    mat = aug.affine_matrix(geometry, (540, 540))
    np.testing.assert_allclose(mat @ np.array([269.5, 269.5, 1.0]), [269.5, 269.5], atol=1e-9)


def test_centre_crop_offsets():
    array = np.arange(7 * 6).reshape(7, 6)
    np.testing.assert_array_equal(aug.centre_crop(array, 4), array[1:5, 1:5])
    np.testing.assert_array_equal(aug.centre_crop(array, (2, 3)), array[2:4, 1:4])
    with pytest.raises(ValueError):
        aug.centre_crop(array, 8)


def test_photometric_identities_and_extremes():
    image = _patch()[0]
    np.testing.assert_array_equal(aug.adjust_saturation(image, 1.0), image)
    np.testing.assert_array_equal(aug.adjust_brightness(image, 0.0), image)
    np.testing.assert_array_equal(aug.adjust_contrast(image, 1.0), image)
    np.testing.assert_array_equal(aug.gaussian_noise(image, np.zeros(image.shape), 1.0), image)
    assert (aug.adjust_brightness(image, 300.0) == 255).all() and (aug.adjust_brightness(image, -300.0) == 0).all()
    flat = aug.adjust_contrast(image, 0.0)  # every channel becomes its (truncated) mean
    np.testing.assert_array_equal(flat, np.broadcast_to(image.mean(axis=(0, 1)).astype(np.uint8), image.shape))
    grey = aug.adjust_saturation(image, 0.0)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    constant = np.full((9, 9, 3), 77, np.uint8)
    np.testing.assert_array_equal(aug.gaussian_blur(constant, (3, 5)), constant)
    np.testing.assert_array_equal(aug.median_blur(constant, 5), constant)


def test_hue_shift_turns_the_wheel_and_keeps_grey():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 200
    shifted = cv2.cvtColor(aug.hue_shift(red, 60.0), cv2.COLOR_RGB2HSV)  # 60 units = 120 degrees: red -> green
    assert (shifted[..., 0] == 60).all()
    grey = np.full((2, 2, 3), 90, np.uint8)
    np.testing.assert_array_equal(aug.hue_shift(grey, 8.0), grey)


def test_each_photometric_op_returns_uint8_of_the_same_shape():
    image = _patch()[0]
    rng = np.random.RandomState(0)
    ops = [lambda x: aug.gaussian_blur(x, (3, 5)), lambda x: aug.median_blur(x, 3),
           lambda x: aug.gaussian_noise(x, rng.standard_normal(x.shape), 1.0), lambda x: aug.hue_shift(x, -8.0),
           lambda x: aug.adjust_saturation(x, 1.2), lambda x: aug.adjust_brightness(x, 26.0),
           lambda x: aug.adjust_contrast(x, 0.75)]
    for op in ops:
        out = op(image)
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_augment_photometric_is_seeded_and_changes_only_the_image():
    image = _patch()[0]
    before = image.copy()
    first = aug.augment_photometric(image, np.random.RandomState(3), PARAMS)
    again = aug.augment_photometric(image, np.random.RandomState(3), PARAMS)
    other = aug.augment_photometric(image, np.random.RandomState(4), PARAMS)
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint8 and first.shape == image.shape and not np.array_equal(first, other)


def test_blur_ksize_must_be_odd():
    with pytest.raises(ValueError):
        aug.AugParams(**{**PARAMS.__dict__, "blur_ksize": (2, 5)})


# --- mapper and dataflows ---------------------------------------------------------------------------


def _cfg(nr_types=5):
    return config_from_args([f"MODEL.NR_TYPES={nr_types}"])


def _training_patch(size=540, seed=0):
    """HxWx5 int32 patch: random RGB, a grid of discs (ids 1..N), types 1..4."""
    rng = np.random.default_rng(seed)
    centres = [(r, c) for r in range(20, size, 45) for c in range(20, size, 45)]
    inst = _discs((size, size), centres, 14)
    types = np.where(inst > 0, inst % 4 + 1, 0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.dstack([image, inst, types]).astype(np.int32)


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patches")
    for k in range(5):
        np.save(folder / f"p{k}.npy", _training_patch(seed=k))
    return folder


def test_load_patch_and_shape_errors(tmp_path, patch_dir):
    image, labels = load_patch(patch_dir / "p0.npy", 270)
    assert image.dtype == np.uint8 and image.shape == (540, 540, 3)
    assert labels.dtype == np.int32 and labels.shape == (540, 540, 2)
    np.save(tmp_path / "bad.npy", np.zeros((540, 540, 4), np.int32))
    with pytest.raises(InputError, match="bad.npy: patch has shape"):
        load_patch(tmp_path / "bad.npy", 270)
    with pytest.raises(InputError, match="bad.npy: patch has shape"):
        PatchDataFlow(tmp_path)
    with pytest.raises(InputError, match="no .npy/.npz patches"):
        PatchDataFlow(_empty(tmp_path))
    with pytest.raises(InputError, match="no such folder"):
        PatchDataFlow(tmp_path / "missing")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("nr_types", [5, None])
def test_mapper_output_shapes_dtypes_and_names(patch_dir, nr_types):
    cfg = _cfg(nr_types)
    out = TrainingDataPreprocessor(cfg)([str(patch_dir / "p0.npy"), 7])
    names = datapoint_names(nr_types)
    assert names[:3] == ["images", "np_target", "hv_target"] and len(out) == len(names)
    assert out[0].shape == (270, 270, 3) and out[0].dtype == np.float32
    assert 0 <= out[0].min() and out[0].max() <= 255
    assert out[1].shape == (80, 80) and out[1].dtype == np.int32  # instance ids (released channel 0)
    assert out[1].min() >= 0 and len(np.unique(out[1])) > 2
    assert out[2].shape == (80, 80, 2) and out[2].dtype == np.float32
    assert -1 <= out[2].min() and out[2].max() <= 1
    if nr_types is not None:
        assert names[3] == "tp_target" and out[3].shape == (80, 80) and out[3].dtype == np.int32
        assert set(np.unique(out[3])) <= set(range(5))
        np.testing.assert_array_equal(out[3] > 0, out[1] > 0)


def test_mapper_is_deterministic_given_the_seed(patch_dir):
    mapper = TrainingDataPreprocessor(_cfg())
    path = str(patch_dir / "p1.npy")
    first, again, other = mapper([path, 11]), mapper([path, 11]), mapper([path, 12])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_validation_mapping_is_the_centre_crop(patch_dir):
    patch = np.load(patch_dir / "p2.npy")
    out = TrainingDataPreprocessor(_cfg(), is_training=False)([str(patch_dir / "p2.npy"), 0])
    np.testing.assert_array_equal(out[0], patch[135:405, 135:405, :3].astype(np.float32))
    np.testing.assert_array_equal(out[1], patch[230:310, 230:310, 3].astype(np.int32))  # ids, binarised in graph
    np.testing.assert_array_equal(out[3], patch[230:310, 230:310, 4])


def test_mapper_rejects_type_ids_beyond_nr_types(tmp_path):
    patch = _training_patch()
    patch[..., 4] = np.where(patch[..., 3] > 0, 7, 0)  # unmerged CoNSeP type
    np.save(tmp_path / "p.npy", patch)
    with pytest.raises(InputError, match="--merge_types"):
        TrainingDataPreprocessor(_cfg(), is_training=False)([str(tmp_path / "p.npy"), 0])


def test_patch_dataflow_shuffles_with_its_own_rng_and_gives_distinct_seeds(patch_dir):
    flow = PatchDataFlow(patch_dir, seed=1)
    flow.reset_state()
    first = list(flow)
    second = list(flow)
    assert sorted(p for p, _ in first) == sorted(str(p) for p in patch_dir.glob("*.npy"))
    assert len({s for _, s in first + second}) == 10  # fresh seeds every pass
    again = PatchDataFlow(patch_dir, seed=1)
    again.reset_state()
    assert list(again) == first
    ordered = PatchDataFlow(patch_dir, shuffle=False)
    ordered.reset_state()
    assert [p for p, _ in ordered] == sorted(str(p) for p in patch_dir.glob("*.npy"))


def test_train_dataflow_single_process_batches(patch_dir):
    flow = get_train_dataflow(_cfg(), patch_dir, batch_size=2, num_workers=0, seed=0)
    flow.reset_state()
    assert len(flow) == 2  # 5 patches, remainder dropped
    batches = list(flow)
    assert len(batches) == 2
    images, np_t, hv_t, tp_t = batches[0]
    assert images.shape == (2, 270, 270, 3) and images.dtype == np.float32
    assert np_t.shape == (2, 80, 80) and hv_t.shape == (2, 80, 80, 2) and tp_t.shape == (2, 80, 80)
    with pytest.raises(InputError, match="cannot fill one batch"):
        get_train_dataflow(_cfg(), patch_dir, batch_size=6, num_workers=0)


def test_patches_of_the_other_mode_are_refused(patch_dir):
    """Issue 22.12: 540 px patches of the original mode trained a fast-mode run (512) without a word."""
    fast = config_from_args(["MODEL.MODE='fast'"])
    for factory in (get_train_dataflow, get_valid_dataflow):
        with pytest.raises(InputError, match="patches are 540x540 px but .* expects 512x512"):
            factory(fast, patch_dir, batch_size=2)


def test_valid_dataflow_keeps_the_remainder_in_order(patch_dir):
    flow = get_valid_dataflow(_cfg(None), patch_dir, batch_size=2)
    flow.reset_state()
    batches = list(flow)
    assert [len(b[0]) for b in batches] == [2, 2, 1] and len(batches[0]) == 3
    patch = np.load(patch_dir / "p4.npy")
    np.testing.assert_array_equal(batches[-1][0][0], patch[135:405, 135:405, :3])


def test_resolve_num_workers():
    assert resolve_num_workers(0) == 0 and resolve_num_workers(3) == 3
    assert resolve_num_workers("auto") >= 1
    assert resolve_num_workers(None, make_config()) == resolve_num_workers("auto")
    with pytest.raises(ValueError):
        resolve_num_workers(-1)


def test_train_dataflow_with_two_zmq_workers(patch_dir):
    flow = get_train_dataflow(_cfg(), patch_dir, batch_size=2, num_workers=2, seed=0, buffer_size=4)
    flow.reset_state()
    batches = list(itertools.islice(iter(flow), 3))  # the worker stream is endless
    assert all(b[0].shape == (2, 270, 270, 3) and b[2].shape == (2, 80, 80, 2) for b in batches)
    images = np.concatenate([b[0] for b in batches])
    # six augmented draws, all different (no worker repeats another's random stream)
    assert len({img.tobytes() for img in images}) == 6
    # issue 13.3: the workers' map function arms PR_SET_PDEATHSIG (tests/test_proc.py kills a parent)
    from misc.proc import DieWithParent

    assert isinstance(flow.ds.map_func, DieWithParent)
