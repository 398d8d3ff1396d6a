"""dataset/extraction.py: the mirror-padded patch grid of spec section 4 and the extraction library."""
import numpy as np
import pytest
from extraction_fixtures import OFFSET, STEP, WINDOW, labelled_tile

from dataset.extraction import cut_patches, mirror_pad, window_origins


def test_window_origins_follow_the_published_edge_rule():
    assert window_origins(760, 540, 80) == [0, 80, 160, 220]
    assert window_origins(700, 540, 80) == [0, 80, 160]  # exact fit: no extra window
    assert window_origins(540, 540, 80) == [0]
    with pytest.raises(ValueError):
        window_origins(500, 540, 80)


def test_mirror_pad_reflects_without_repeating_the_edge():
    array = np.arange(10).reshape(10, 1) * np.ones((1, 12), int)
    padded, (top, left) = mirror_pad(array, window=8, step=2)
    assert (top, left) == (3, 3) and padded.shape == (16, 18)
    np.testing.assert_array_equal(padded[:3, 5], [3, 2, 1])  # rows 3, 2, 1 above row 0
    np.testing.assert_array_equal(padded[-3:, 5], [8, 7, 6])  # rows 8, 7, 6 below row 9
    np.testing.assert_array_equal(padded[3:13, 3:15], array)


def test_cut_patches_tiles_the_image_with_central_regions():
    image, inst, types = labelled_tile()
    stacked = np.dstack([image, inst, types]).astype(np.int32)
    windows = cut_patches(stacked, WINDOW, STEP)
    assert len(windows) == 4 * 3  # rows 0, 80, 160, 220; cols 0, 80, 120
    assert [origin for origin, _ in windows[:4]] == [(0, 0), (0, 80), (0, 120), (80, 0)]
    covered = np.zeros(inst.shape, int)
    for (row, col), patch in windows:
        assert patch.shape == (WINDOW, WINDOW, 5) and patch.dtype == np.int32
        centre = patch[OFFSET:OFFSET + STEP, OFFSET:OFFSET + STEP]
        np.testing.assert_array_equal(centre, stacked[row:row + STEP, col:col + STEP])
        covered[row:row + STEP, col:col + STEP] += 1
    assert covered.min() >= 1  # every pixel is in some window's centre


def test_cut_patches_small_image_and_valid_mode():
    small = np.arange(50 * 60).reshape(50, 60)
    windows = cut_patches(small, 100, 80)  # smaller than the step: one window, centre runs past the edge
    assert [origin for origin, _ in windows] == [(0, 0)] and windows[0][1].shape == (100, 100)
    np.testing.assert_array_equal(windows[0][1][10:60, 10:70], small)
    valid = cut_patches(np.arange(100).reshape(10, 10), 4, 3, mode="valid")
    assert [origin for origin, _ in valid][:4] == [(0, 0), (0, 3), (0, 6), (3, 0)]
    np.testing.assert_array_equal(valid[1][1], np.arange(100).reshape(10, 10)[0:4, 3:7])
