"""Sliding-window layout and stitching (spec section 6) with fake predictors of known output."""
from __future__ import annotations

import math

import numpy as np
import pytest

from src.geometry import derive_geometry
from src.infer.windows import (
    gather_windows,
    grid_starts,
    iter_window_batches,
    predict_tile,
    reflect_index,
    stitch,
    window_grid,
    window_layout,
)

ORIGINAL = {"input_shape": derive_geometry("original").input_shape,
            "output_shape": derive_geometry("original").output_shape}
FAST = {"input_shape": derive_geometry("fast").input_shape, "output_shape": derive_geometry("fast").output_shape}


def _image(height, width, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3)).astype(dtype)


class CentreCrop:
    """Fake network: the central output x output square of each window, as float32; counts calls."""

    def __init__(self, input_shape=ORIGINAL["input_shape"], output_shape=ORIGINAL["output_shape"]):
        self.margin = (input_shape - output_shape) // 2
        self.output_shape = output_shape
        self.calls = []

    def __call__(self, batch):
        self.calls.append(batch.shape)
        m, s = self.margin, self.output_shape
        return batch[:, m:m + s, m:m + s, :].astype(np.float32)


class FiveChannels(CentreCrop):
    """C = 5: RGB, the channel sum and the window's index within the batch."""

    def __call__(self, batch):
        crop = super().__call__(batch)
        index = np.broadcast_to(np.arange(len(batch), dtype=np.float32)[:, None, None, None], crop[..., :1].shape)
        return np.concatenate([crop, crop.sum(axis=3, keepdims=True), index], axis=3)


@pytest.mark.parametrize("height, width", [(160, 240), (173, 91), (10, 17), (1, 1), (80, 80), (81, 79),
                                           (500, 333), (33, 400)])
def test_centre_crop_predictor_reproduces_the_image(height, width):
    image = _image(height, width)
    fake = CentreCrop()
    out = predict_tile(image, fake, batch_size=7, **ORIGINAL)
    assert out.shape == (height, width, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))
    layout = window_layout(height, width, **ORIGINAL)
    assert len(fake.calls) == math.ceil(layout.n_windows / 7)
    assert all(shape[1:] == (270, 270, 3) and shape[0] <= 7 for shape in fake.calls)


def test_layout_numbers_original_geometry():
    layout = window_layout(173, 91, **ORIGINAL)
    assert (layout.pad_top, layout.pad_left) == (95, 95)
    assert (layout.rows, layout.cols) == (3, 2)
    # the last window ends exactly at the padded edge and its output covers the last image row/column
    assert layout.padded_shape == ((3 - 1) * 80 + 270, (2 - 1) * 80 + 270)
    assert layout.pad_top + 173 + layout.pad_bottom == layout.padded_shape[0]
    assert layout.origins.tolist() == [[0, 0], [0, 80], [80, 0], [80, 80], [160, 0], [160, 80]]
    assert window_layout(160, 240, **ORIGINAL).n_windows == 2 * 3
    assert window_layout(1, 1, **ORIGINAL).n_windows == 1


def test_windows_equal_numpy_reflect_padding():
    for height, width in [(173, 91), (10, 17), (1, 5), (2, 2)]:
        image = _image(height, width, seed=1)
        layout = window_layout(height, width, **ORIGINAL)
        padded = np.pad(image, ((layout.pad_top, layout.pad_bottom), (layout.pad_left, layout.pad_right), (0, 0)),
                        mode="reflect")
        assert padded.shape[:2] == layout.padded_shape
        windows = gather_windows(image, layout)
        for window, (y, x) in zip(windows, layout.origins, strict=True):
            np.testing.assert_array_equal(window, padded[y:y + 270, x:x + 270])


def test_window_grid_is_the_index_logic_of_both_grids():
    """One function gives the inference grid ('cover') and the patch extraction grid ('flush')."""
    # inference: ceil(173 / 80) = 3 windows; the last output square runs 67 px into the padding
    assert grid_starts(173, 80, "cover") == [0, 80, 160]
    assert window_grid(173, 270, 80, "cover") == ([0, 80, 160], 95, 162)  # 160 + 270 == 95 + 173 + 162
    layout = window_layout(173, 91, 270, 80)
    assert (layout.rows, layout.pad_top, layout.pad_bottom) == (3, 95, 162)
    assert (layout.cols, layout.pad_left, layout.pad_right) == (2, 95, 164)  # 80 + 270 == 95 + 91 + 164
    # extraction: the last central square ends flush with the image edge, overlapping its neighbour
    assert grid_starts(173, 80, "flush") == [0, 80, 93]
    assert window_grid(173, 540, 80, "flush") == ([0, 80, 93], 230, 230)  # 93 + 540 == 230 + 173 + 230
    assert window_grid(160, 540, 80, "flush") == ([0, 80], 230, 230)  # exact fit: no extra window
    assert window_grid(50, 100, 80, "flush") == ([0], 10, 40)  # shorter than the step: one window
    assert window_grid(9, 8, 3, "flush") == ([0, 3, 6], 2, 3)  # odd window - step: the odd pixel after
    for bad in [(0, 80, "cover"), (10, 0, "flush"), (10, 3, "edge")]:
        with pytest.raises(ValueError):
            grid_starts(*bad)
    with pytest.raises(ValueError, match="at least the step"):
        window_grid(10, 2, 3, "flush")


def test_reflect_index_mirrors_without_repeating_the_edge():
    np.testing.assert_array_equal(reflect_index(np.arange(-4, 7), 3), [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(reflect_index(np.arange(-3, 3), 1), [0] * 6)


def test_multichannel_output_and_batch_size_independence():
    image = _image(173, 250)
    results = []
    for batch_size in (1, 4, 16, 1000):
        fake = FiveChannels()
        results.append(predict_tile(image, fake, batch_size=batch_size, **ORIGINAL))
        assert len(fake.calls) == math.ceil(window_layout(173, 250, **ORIGINAL).n_windows / batch_size)
    out = results[0]
    assert out.shape == (173, 250, 5)
    np.testing.assert_array_equal(out[..., :3], image)
    np.testing.assert_array_equal(out[..., 3], image.astype(np.float32).sum(axis=2))
    for other in results[1:]:  # channel 4 (index in batch) depends on batching; the rest must not
        np.testing.assert_array_equal(other[..., :4], out[..., :4])
    assert np.all(results[0][..., 4] == 0)


def test_float_input_passes_through():
    image = _image(90, 100, dtype=np.float32) / 255.0
    seen = []

    def fake(batch):
        seen.append(batch.dtype)
        return batch[:, 95:175, 95:175].astype(np.float32)

    np.testing.assert_array_equal(predict_tile(image, fake, **ORIGINAL), image)
    assert seen == [np.float32] * len(seen)


def test_fast_geometry():
    image = _image(300, 170)
    layout = window_layout(300, 170, **FAST)
    assert (layout.pad_top, layout.pad_left) == (46, 46)
    assert (layout.rows, layout.cols) == (2, 2)
    fake = CentreCrop(**FAST)
    out = predict_tile(image, fake, batch_size=3, **FAST)
    np.testing.assert_array_equal(out, image)
    assert fake.calls == [(3, 256, 256, 3), (1, 256, 256, 3)]


def test_stitch_matches_predict_tile_and_batches_cover_every_window():
    image = _image(123, 201)
    layout = window_layout(123, 201, **ORIGINAL)
    batches = list(iter_window_batches(image, layout, batch_size=4))
    assert [start for start, _ in batches] == list(range(0, layout.n_windows, 4))
    outputs = np.concatenate([CentreCrop()(windows) for _, windows in batches])
    np.testing.assert_array_equal(stitch(outputs, layout), image)


def test_progress_reports_window_counts():
    calls = []
    predict_tile(_image(200, 200), CentreCrop(), batch_size=4, progress=lambda done, total: calls.append((done, total)),
                 **ORIGINAL)
    assert calls == [(4, 9), (8, 9), (9, 9)]


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                   np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0, 3), np.uint8),
                                   np.zeros((10, 10, 3), bool), np.zeros((10, 10, 3), np.int64)])
def test_bad_images_raise(image):
    with pytest.raises(ValueError):
        predict_tile(image, CentreCrop(), **ORIGINAL)


def test_bad_geometry_and_batch_size_raise():
    with pytest.raises(ValueError, match="even"):
        window_layout(10, 10, input_shape=270, output_shape=81)
    with pytest.raises(ValueError, match="larger"):
        window_layout(10, 10, input_shape=80, output_shape=270)
    with pytest.raises(ValueError, match="positive"):
        window_layout(0, 10, **ORIGINAL)
    with pytest.raises(ValueError, match="batch_size"):
        predict_tile(_image(10, 10), CentreCrop(), batch_size=0, **ORIGINAL)


def test_wrong_predictor_output_raises():
    with pytest.raises(ValueError, match="geometry"):  # a fast-geometry model run with the original layout
        predict_tile(_image(100, 100), lambda batch: np.zeros((len(batch), 164, 164, 3), np.float32), **ORIGINAL)
    with pytest.raises(ValueError, match="geometry"):  # fewer outputs than windows
        predict_tile(_image(100, 100), lambda batch: np.zeros((1, 80, 80, 3), np.float32), **ORIGINAL)
    with pytest.raises(ValueError, match="channels"):
        state = {"n": 0}

        def changing(batch):
            state["n"] += 1
            return np.zeros((len(batch), 80, 80, state["n"]), np.float32)

        predict_tile(_image(200, 200), changing, batch_size=2, **ORIGINAL)


class WindowMean(CentreCrop):
    """C = 2: the centre's red channel and the mean of the whole window, which sees past the centre."""

    def __call__(self, batch):
        crop = super().__call__(batch)[..., :1]
        mean = np.broadcast_to(batch.mean(axis=(1, 2, 3), dtype=np.float32)[:, None, None, None], crop.shape)
        return np.concatenate([crop, mean], axis=3)


@pytest.mark.parametrize("region", [(0, 0, 173, 251), (80, 160, 173, 251), (80, 80, 160, 160), (17, 33, 95, 250),
                                    (172, 0, 173, 1)])
def test_a_region_holds_the_whole_tiles_maps_from_its_own_windows(region):
    image = _image(173, 251)
    whole = predict_tile(image, WindowMean(), batch_size=5, **ORIGINAL)
    fake = WindowMean()
    y0, x0, y1, x1 = region
    part = predict_tile(image, fake, batch_size=5, region=region, **ORIGINAL)
    np.testing.assert_array_equal(part, whole[y0:y1, x0:x1])  # the tile's windows, not the region's reflections
    meeting = (math.ceil(y1 / 80) - y0 // 80) * (math.ceil(x1 / 80) - x0 // 80)
    assert sum(shape[0] for shape in fake.calls) == meeting


def test_bad_regions_raise():
    for region in [(0, 0, 0, 10), (5, 5, 4, 10), (0, 0, 11, 10), (-1, 0, 5, 5)]:
        with pytest.raises(ValueError, match="region"):
            predict_tile(_image(10, 10), CentreCrop(), region=region, **ORIGINAL)
