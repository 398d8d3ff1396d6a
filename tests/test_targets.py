"""Training targets (spec section 2) on tiny hand-built instance maps, with exact expected values."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from src.maps.targets import centre_crop_window, gen_hv_map, gen_targets, relabel_connected


def _random_instance_map(shape, n_nuclei, rng, radius=(3.0, 9.0)):
    """Random touching discs, ids 1..n (later discs only fill background)."""
    inst_map = np.zeros(shape, dtype=np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for idx in range(n_nuclei):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(*radius)
        inst_map[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (inst_map == 0)] = idx + 1
    return inst_map


def _reference_hv(inst_map, grid_start):
    """Straightforward per-id HV with full-image masks, written from the released algorithm's steps:
    centre of mass (scipy), ``int(c + 0.5)``, grid ``arange(grid_start, n + grid_start) - com``,
    float32 side-wise division. ``grid_start=1`` is the released grid, 0 the spec's centred one."""
    hv = np.zeros(inst_map.shape + (2,), np.float32)
    for inst_id in np.unique(inst_map)[1:]:
        mask = inst_map == inst_id
        com_r, com_c = ndi.center_of_mass(mask)
        x = (np.arange(grid_start, inst_map.shape[1] + grid_start) - int(com_c + 0.5))[None, :]
        y = (np.arange(grid_start, inst_map.shape[0] + grid_start) - int(com_r + 0.5))[:, None]
        for channel, grid in ((0, x), (1, y)):
            values = np.broadcast_to(grid, mask.shape)[mask].astype(np.float32)
            if values.min() < 0:
                values[values < 0] /= -values[values < 0].min()
            if values.max() > 0:
                values[values > 0] /= values[values > 0].max()
            hv[..., channel][mask] = values
    return hv


# --- gen_hv_map: hand-computed values -----------------------------------------------------------


def test_square_3x3_hand_values():
    inst_map = np.zeros((5, 5), np.int32)
    inst_map[1:4, 1:4] = 1
    hv = gen_hv_map(inst_map)
    expected_x = np.array([[0, 0, 0, 0, 0],
                           [0, -1, 0, 1, 0],
                           [0, -1, 0, 1, 0],
                           [0, -1, 0, 1, 0],
                           [0, 0, 0, 0, 0]], np.float32)
    expected_y = np.array([[0, 0, 0, 0, 0],
                           [0, -1, -1, -1, 0],
                           [0, 0, 0, 0, 0],
                           [0, 1, 1, 1, 0],
                           [0, 0, 0, 0, 0]], np.float32)
    assert hv.shape == (5, 5, 2) and hv.dtype == np.float32
    np.testing.assert_array_equal(hv[..., 0], expected_x)
    np.testing.assert_array_equal(hv[..., 1], expected_y)


def test_rectangle_3x5():
    inst_map = np.zeros((7, 9), np.int32)
    inst_map[2:5, 2:7] = 4
    hv = gen_hv_map(inst_map)
    np.testing.assert_array_equal(hv[2:5, 2:7, 0], np.tile([-1, -0.5, 0, 0.5, 1], (3, 1)))
    np.testing.assert_array_equal(hv[2:5, 2:7, 1], np.repeat([[-1], [0], [1]], 5, axis=1))
    assert not hv[inst_map == 0].any()


def test_asymmetric_sides_normalised_separately():
    # Row 0: cols 1..6 (6 px); row 1: cols 1..2 (2 px). Column sum 21 + 3 = 24 over 8 px -> cx = 3;
    # offsets -2..3: negative side divided by 2, positive by 3. Row mass 2/8 = 0.25 -> cy = 0.
    inst_map = np.zeros((6, 10), np.int32)
    inst_map[2, 2:8] = 1
    inst_map[3, 2:4] = 1
    hv = gen_hv_map(inst_map)
    np.testing.assert_array_equal(hv[2, 2:8, 0], np.array([-1, -0.5, 0, 1 / 3, 2 / 3, 1], np.float32))
    np.testing.assert_array_equal(hv[3, 2:4, 0], np.array([-1, -0.5], np.float32))
    np.testing.assert_array_equal(hv[2, 2:8, 1], np.zeros(6, np.float32))
    np.testing.assert_array_equal(hv[3, 2:4, 1], np.ones(2, np.float32))


def test_centre_of_mass_at_half_rounds_up():
    # A 1x4 bar: centre of mass 1.5 -> int(2.0) = 2 -> offsets -2, -1, 0, 1.
    inst_map = np.zeros((3, 6), np.int32)
    inst_map[1, 1:5] = 1
    hv = gen_hv_map(inst_map)
    np.testing.assert_array_equal(hv[1, 1:5, 0], np.array([-1, -0.5, 0, 1], np.float32))
    np.testing.assert_array_equal(hv[..., 1], 0)  # one row: the centre row itself
    # A 2x2 square: centre (0.5, 0.5) -> (1, 1): the first row/column is -1, the second 0.
    square = np.zeros((4, 4), np.int32)
    square[1:3, 1:3] = 1
    hv = gen_hv_map(square)
    np.testing.assert_array_equal(hv[1:3, 1:3, 0], [[-1, 0], [-1, 0]])
    np.testing.assert_array_equal(hv[1:3, 1:3, 1], [[-1, -1], [0, 0]])


def test_published_offset_moves_zero_line_one_pixel_up_left():
    inst_map = np.zeros((5, 5), np.int32)
    inst_map[1:4, 1:4] = 1
    hv = gen_hv_map(inst_map, published_offset=True)
    # Released grid: offsets 0, 1, 2 across the square -> 0, 0.5, 1; no negative side.
    np.testing.assert_array_equal(hv[1:4, 1:4, 0], np.tile([0, 0.5, 1], (3, 1)))
    np.testing.assert_array_equal(hv[1:4, 1:4, 1], np.repeat([[0], [0.5], [1]], 3, axis=1))


def test_matches_reference_on_random_map_both_grids():
    inst_map = _random_instance_map((96, 112), 60, np.random.default_rng(0))
    np.testing.assert_array_equal(gen_hv_map(inst_map), _reference_hv(inst_map, grid_start=0))
    np.testing.assert_array_equal(gen_hv_map(inst_map, published_offset=True),
                                  _reference_hv(inst_map, grid_start=1))


def test_ids_arbitrary_and_large():
    base = _random_instance_map((64, 64), 20, np.random.default_rng(0))
    expected = gen_hv_map(base)
    ids = np.unique(base)[1:].astype(np.int64)
    for new_ids in (ids * 7 + 3, ids + 2**31, ids[::-1] * 1000):
        lut = np.zeros(base.max() + 1, np.int64)
        lut[ids] = new_ids
        np.testing.assert_array_equal(gen_hv_map(lut[base]), expected)
    np.testing.assert_array_equal(gen_hv_map(base.astype(np.uint16)), expected)


def test_background_and_empty_map():
    assert not gen_hv_map(np.zeros((8, 9), np.int32)).any()
    assert gen_hv_map(np.zeros((8, 9), np.int32)).shape == (8, 9, 2)
    inst_map = _random_instance_map((40, 40), 8, np.random.default_rng(0))
    hv = gen_hv_map(inst_map)
    assert not hv[inst_map == 0].any()
    assert hv.min() >= -1 and hv.max() <= 1


# --- gen_targets ------------------------------------------------------------------------------------


def test_crop_window_offsets():
    assert centre_crop_window((540, 540), 80) == (slice(230, 310), slice(230, 310))
    assert centre_crop_window((11, 10), (4, 5)) == (slice(3, 7), slice(2, 7))  # int((11-4)*0.5) = 3
    with pytest.raises(ValueError):
        centre_crop_window((10, 10), 12)


def test_cut_instance_keeps_true_centre():
    # A 15x15 square centred at (10, 14); the 12x12 window [10:22, 10:22] sees only its lower part.
    inst_map = np.zeros((32, 32), np.int32)
    inst_map[3:18, 7:22] = 9
    targets = gen_targets(inst_map, None, 12)
    full = gen_hv_map(inst_map)
    np.testing.assert_array_equal(targets["hv"], full[10:22, 10:22])
    # The true centre row 10 is the window's first row: y there is 0, below it positive up to 1.
    np.testing.assert_array_equal(targets["hv"][0, :12, 1], 0)
    assert targets["hv"][7, 0, 1] == 1  # row 17 = the square's last row
    assert targets["hv"][0, 4, 0] == 0  # column 14 is the centre column


def test_matches_reference_pipeline_on_random_patch():
    rng = np.random.default_rng(0)
    inst_map = _random_instance_map((120, 120), 90, rng, radius=(3.0, 10.0))
    inst_map[:, 60] = 0  # a cut line splits the ids crossing it, as augmentation can
    inst_map[37, :] = 0
    type_map = np.where(inst_map > 0, inst_map % 4 + 1, 0)
    targets = gen_targets(inst_map, type_map, (40, 50))

    # Reference: split -> count inside the window -> HV on the full patch of the kept -> crop.
    pieces = relabel_connected(inst_map)
    rows, cols = slice(40, 80), slice(35, 85)
    sizes = np.bincount(pieces[rows, cols].ravel(), minlength=pieces.max() + 1)
    kept = np.flatnonzero(sizes >= 30)
    kept = kept[kept > 0]
    reference = _reference_hv(np.where(np.isin(pieces, kept), pieces, 0), grid_start=0)[rows, cols]

    np.testing.assert_array_equal(targets["hv"], reference)
    np.testing.assert_array_equal(targets["np"], (inst_map[rows, cols] > 0).astype(np.int32))
    np.testing.assert_array_equal(targets["tp"], type_map[rows, cols])
    assert 0 < len(kept) < len(np.unique(pieces[rows, cols])) - 1  # some kept, some dropped


def test_split_id_becomes_two_instances():
    inst_map = np.zeros((20, 20), np.int32)
    inst_map[2:9, 2:9] = 5  # two 7x7 pieces of the same id
    inst_map[11:18, 11:18] = 5
    two_ids = inst_map.copy()
    two_ids[11:18, 11:18] = 6
    np.testing.assert_array_equal(gen_targets(inst_map, None, 20)["hv"], gen_hv_map(two_ids))
    # Diagonal contact only (8- but not 4-connected) still splits, as the released 4-connectivity.
    diagonal = np.zeros((20, 20), np.int32)
    diagonal[3:9, 3:9] = 2
    diagonal[9:15, 9:15] = 2
    assert relabel_connected(diagonal).max() == 2
    split = diagonal.copy()
    split[9:15, 9:15] = 3
    np.testing.assert_array_equal(gen_targets(diagonal, None, 20)["hv"], gen_hv_map(split))


def test_small_instances_inside_window_dropped_from_hv_only():
    inst_map = np.zeros((30, 30), np.int32)
    type_map = np.zeros((30, 30), np.int32)
    inst_map[6:11, 6:11] = 1  # 25 px, inside the window: dropped
    inst_map[14:19, 6:12] = 2  # 30 px inside: kept
    inst_map[0:10, 21:30] = 3  # 90 px, but only 5x4 = 20 px inside the window [5:25, 5:25]: dropped
    type_map[inst_map == 1] = 2
    type_map[inst_map == 2] = 3
    type_map[inst_map == 3] = 1
    targets = gen_targets(inst_map, type_map, 20)
    window = (slice(5, 25), slice(5, 25))
    win_ids = inst_map[window]
    hv = targets["hv"]
    assert not hv[win_ids == 1].any() and not hv[win_ids == 3].any()
    np.testing.assert_array_equal(hv[win_ids == 2], gen_hv_map(inst_map == 2)[window][win_ids == 2])
    assert hv[win_ids == 2].any()
    np.testing.assert_array_equal(targets["np"], (win_ids > 0).astype(np.int32))  # small ones stay in NP
    np.testing.assert_array_equal(targets["tp"], type_map[window])  # and in tp
    assert gen_targets(inst_map, None, 20, min_instance_size=20)["hv"][win_ids == 3].any()
    # "inst": the window's ids as given (released label channel 0, the published MSGE focus)
    np.testing.assert_array_equal(targets["inst"], win_ids)
    assert targets["inst"].dtype == np.int32


def test_inst_target_keeps_given_ids_even_when_split_or_sparse():
    inst_map = np.zeros((12, 12), np.int64)
    inst_map[2:5, 2:5] = 7
    inst_map[7:10, 7:10] = 7  # one id in two pieces: two instances for HV, one id for the focus
    inst_map[2:4, 8:10] = 10**9  # sparse ids are compacted internally, not in "inst"
    targets = gen_targets(inst_map, None, 12)
    np.testing.assert_array_equal(targets["inst"], inst_map.astype(np.int32))


def test_crop_shape_int_or_tuple_dtypes_and_keys():
    inst_map = _random_instance_map((90, 90), 30, np.random.default_rng(0))
    type_map = (inst_map % 3).astype(np.uint8)
    as_int = gen_targets(inst_map, type_map, 40)
    as_tuple = gen_targets(inst_map, type_map, (40, 40))
    for key in ("np", "hv", "tp"):
        np.testing.assert_array_equal(as_int[key], as_tuple[key])
    assert as_int["np"].dtype == np.int32 and as_int["np"].shape == (40, 40)
    assert set(np.unique(as_int["np"])) <= {0, 1}
    assert as_int["hv"].dtype == np.float32 and as_int["hv"].shape == (40, 40, 2)
    assert as_int["tp"].dtype == np.int32 and as_int["tp"].shape == (40, 40)
    no_type = gen_targets(inst_map, None, (30, 44))
    assert set(no_type) == {"np", "inst", "hv"}
    assert no_type["np"].shape == (30, 44) and no_type["hv"].shape == (30, 44, 2)
