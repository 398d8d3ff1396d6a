"""Sliding-window inference on a tile, independent of the model (spec section 6).

The valid-convolution network maps an ``input_shape`` x ``input_shape`` window to the central
``output_shape`` x ``output_shape`` square of it. To predict a whole tile the image is reflect-padded by
``(input_shape - output_shape) / 2`` px top/left (95 for the 270 -> 80 'original' geometry, 46 for the
256 -> 164 'fast' one) and enough bottom/right that windows taken with step ``output_shape`` cover it;
every window is predicted, the outputs are placed side by side and the mosaic is cropped to the
image size. The published TF inferer does the same (``np.lib.pad(..., 'reflect')``, step = output size).

Padding. 'reflect' here is numpy's ``reflect`` / OpenCV's ``BORDER_REFLECT_101``: mirror about the
edge pixel without repeating it (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``), as in the published code. For
an image smaller than the margin a single reflection is not enough, so the mirror is continued
periodically (period ``2 * (n - 1)``), which is what numpy >= 1.17 does for large pads; an axis of
length 1 repeats its only pixel. Rather than building the padded image (55 MB for a 4000x4000 uint8
tile, and 4x that once a caller has converted to float32), windows are gathered straight from the image
through the reflected index of each padded row and column: same pixels, memory bounded by one batch.

Grid. :func:`window_grid` is the index logic of both reflect-padded window grids of the project: this one
(``last='cover'``: ceil(size / output) windows, the last output square may reach into the padding) and the
training patch extraction's (``dataset.extraction.cut_patches``, ``last='flush'``: the last window's central
square ends flush with the image edge, as the published extractor). It lives here, numpy-only, so that
``dataset`` may import it while ``src`` never imports ``dataset``.

Regions. ``predict_tile(..., region=...)`` predicts only the windows of the tile's grid whose outputs meet a
rectangle and returns its maps, equal to the whole tile's there: a block of a tile too large to post-process at
once (``src/infer/blocks.py``, ``src/infer/tiles.py``) costs its own windows and memory, not the tile's.

Nothing here imports TensorFlow: ``predict_tile`` takes any ``predict_fn``, so it is tested with fakes
and reused by the TF runner (``predict_fn`` = an ``OfflinePredictor`` call).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from misc.io import NonFiniteMapsError

__all__ = ["GRID_EDGES", "grid_starts", "window_grid", "WindowLayout", "window_layout", "reflect_index",
           "gather_windows", "iter_window_batches", "stitch", "region_windows", "predict_tile"]

GRID_EDGES = ("cover", "flush")  # how a grid ends at the far edge; see grid_starts


def grid_starts(span: int, step: int, last: str) -> list[int]:
    """Starts ``0, step, 2 * step, ...`` of ``step``-long pieces that cover ``[0, span)``.

    ``last='cover'``: ``ceil(span / step)`` pieces; the last one may run past ``span``. ``last='flush'``: the
    pieces that fit, plus one ending exactly at ``span`` when the last regular one stops short of it (it then
    overlaps its neighbour); a ``span`` shorter than ``step`` gets one piece at 0. Raises ``ValueError`` for a
    non-positive ``span`` or ``step`` or an unknown ``last``.
    """
    if span <= 0 or step <= 0:
        raise ValueError(f"span ({span}) and step ({step}) must be positive")
    if last == "cover":
        return list(range(0, span, step))
    if last != "flush":
        raise ValueError(f"last must be one of {GRID_EDGES}, got {last!r}")
    end = max(span - step, 0)
    starts = list(range(0, end + 1, step))
    if starts[-1] != end:
        starts.append(end)
    return starts


def window_grid(length: int, window: int, step: int, last: str) -> tuple[list[int], int, int]:
    """The reflect-padded grid of ``window``-px windows whose central ``step`` px tile an axis of ``length`` px.

    The axis is padded by ``pad_before = (window - step) // 2`` px in front, so that a window starting at padded
    coordinate ``s`` has its central ``step`` px at image coordinate ``s``; the starts are
    :func:`grid_starts` ``(length, step, last)`` and ``pad_after`` makes the last window end exactly at the
    padded edge (``starts[-1] + window == pad_before + length + pad_after``).

    Returns ``(starts, pad_before, pad_after)``. Raises ``ValueError`` when ``window < step``.
    """
    if window < step:
        raise ValueError(f"window ({window}) must be at least the step ({step})")
    starts = grid_starts(length, step, last)
    pad_before = (window - step) // 2
    return starts, pad_before, starts[-1] + window - pad_before - length


@dataclass(frozen=True)
class WindowLayout:
    """Where the windows of one tile lie.

    Padded coordinates: the image occupies rows ``pad_top .. pad_top + height`` and columns
    ``pad_left .. pad_left + width`` of a virtual padded canvas of ``padded_shape``. Window ``i``
    (row-major, ``r, c = divmod(i, cols)``) starts at padded ``(r * output_shape, c * output_shape)``
    and its output covers image rows ``r * output_shape .. (r + 1) * output_shape`` (columns alike),
    clipped to the image for the last row/column.
    """

    height: int  # image rows
    width: int  # image columns
    input_shape: int  # window side fed to the network (270 original, 256 fast)
    output_shape: int  # side of the network's output, the window's central square (80 / 164)
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    rows: int  # windows per column of the grid
    cols: int  # windows per row of the grid

    @property
    def n_windows(self) -> int:
        return self.rows * self.cols

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.pad_top + self.height + self.pad_bottom, self.pad_left + self.width + self.pad_right

    @property
    def origins(self) -> np.ndarray:
        """n_windows x 2 int64: (row, col) top-left of each window in padded coordinates, row-major."""
        r, c = np.divmod(np.arange(self.n_windows), self.cols)
        return np.stack([r * self.output_shape, c * self.output_shape], axis=1)


def window_layout(height: int, width: int, input_shape: int, output_shape: int) -> WindowLayout:
    """The window grid of spec section 6 for an ``height`` x ``width`` image.

    ``input_shape`` / ``output_shape``: the network geometry (``cfg.MODEL.INPUT_SHAPE`` / ``OUTPUT_SHAPE``, from
    :func:`src.geometry.derive_geometry`); no default, so that no second copy of it exists here.

    Raises ``ValueError`` for a non-positive size, ``output_shape > input_shape`` or an odd
    ``input_shape - output_shape`` (the output must be the exact centre of the window).
    """
    for name, value in (("height", height), ("width", width), ("input_shape", input_shape),
                        ("output_shape", output_shape)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if output_shape > input_shape:
        raise ValueError(f"output_shape {output_shape} is larger than input_shape {input_shape}")
    if (input_shape - output_shape) % 2:
        raise ValueError(f"input_shape - output_shape must be even (a centred output), got "
                         f"{input_shape} - {output_shape}")
    # Padded side = (n - 1) * step + input: the last window ends exactly at the padded edge.
    row_starts, pad_top, pad_bottom = window_grid(int(height), int(input_shape), int(output_shape), "cover")
    col_starts, pad_left, pad_right = window_grid(int(width), int(input_shape), int(output_shape), "cover")
    return WindowLayout(
        height=int(height), width=int(width), input_shape=int(input_shape), output_shape=int(output_shape),
        pad_top=pad_top, pad_bottom=pad_bottom, pad_left=pad_left, pad_right=pad_right,
        rows=len(row_starts), cols=len(col_starts),
    )


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map any integer positions onto ``0 .. size - 1`` by mirroring without repeating the edge.

    Equal to what ``np.pad(..., mode='reflect')`` reads for every pad width (the mirror is continued
    periodically with period ``2 * (size - 1)``); ``size == 1`` maps everything to 0.
    """
    index = np.asarray(index, dtype=np.int64)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (RGB), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or floating point, got dtype {image.dtype}")
    return image


def _padded_indices(layout: WindowLayout) -> tuple[np.ndarray, np.ndarray]:
    """Image row / column index of every padded row / column."""
    padded_h, padded_w = layout.padded_shape
    rows = reflect_index(np.arange(padded_h) - layout.pad_top, layout.height)
    cols = reflect_index(np.arange(padded_w) - layout.pad_left, layout.width)
    return rows, cols


def gather_windows(image: np.ndarray, layout: WindowLayout, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Windows ``start .. stop`` (row-major) of the reflect-padded image, gathered as one batch array.

    ``image``: HxWx3 (any channel order; passed through unchanged), uint8 or float. Returns
    ``(stop - start) x input_shape x input_shape x 3`` of the image's dtype. Only the requested
    windows are built, so callers bound memory by asking for one batch at a time.
    """
    image = _check_image(image)
    if image.shape[:2] != (layout.height, layout.width):
        raise ValueError(f"image shape {image.shape[:2]} does not match the layout's "
                         f"{(layout.height, layout.width)}")
    stop = layout.n_windows if stop is None else min(stop, layout.n_windows)
    if not 0 <= start <= stop:
        raise ValueError(f"bad window range {start}..{stop} of {layout.n_windows}")
    return _gather(image, layout, range(start, stop))


def _gather(image: np.ndarray, layout: WindowLayout, windows: Sequence[int]) -> np.ndarray:
    """The windows of the given row-major indices, as one batch (``gather_windows`` without the checks)."""
    row_index, col_index = _padded_indices(layout)
    size, step = layout.input_shape, layout.output_shape
    out = np.empty((len(windows), size, size, 3), dtype=image.dtype)
    for k, i in enumerate(windows):
        r, c = divmod(i, layout.cols)
        rows = row_index[r * step:r * step + size]
        cols = col_index[c * step:c * step + size]
        out[k] = image[rows[:, None], cols[None, :]]
    return out


def iter_window_batches(image: np.ndarray, layout: WindowLayout, batch_size: int,
                        windows: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, batch)``: at most ``batch_size`` windows each, from the row-major window indices
    ``windows`` (default: every window) in their order; ``start`` is the batch's position in that list."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    windows = range(layout.n_windows) if windows is None else windows
    for start in range(0, len(windows), batch_size):
        yield start, _gather(image, layout, windows[start:start + batch_size])


def _place(canvas: np.ndarray, outputs: np.ndarray, windows: Sequence[int], layout: WindowLayout,
           region: tuple[int, int, int, int]) -> None:
    """Copy the outputs of the given windows into their square of the canvas, which holds image rows
    ``region[0]:region[2]`` and columns ``region[1]:region[3]``; each square clipped to the region."""
    step = layout.output_shape
    ry0, rx0, ry1, rx1 = region
    for output, i in zip(outputs, windows, strict=True):
        r, c = divmod(i, layout.cols)
        y0, x0 = max(r * step, ry0), max(c * step, rx0)
        y1, x1 = min((r + 1) * step, ry1), min((c + 1) * step, rx1)
        canvas[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = output[y0 - r * step:y1 - r * step, x0 - c * step:x1 - c * step]


def _check_outputs(outputs, n: int, layout: WindowLayout, channels: int | None) -> np.ndarray:
    outputs = np.asarray(outputs)
    side = layout.output_shape
    if outputs.ndim != 4 or outputs.shape[0] != n or outputs.shape[1:3] != (side, side):
        raise ValueError(
            f"predict_fn must return {n} x {side} x {side} x C for {n} windows of "
            f"{layout.input_shape} x {layout.input_shape}, got shape {outputs.shape} "
            f"(does the model geometry match input_shape/output_shape?)")
    if channels is not None and outputs.shape[3] != channels:
        raise ValueError(f"predict_fn returned {outputs.shape[3]} channels after {channels} earlier")
    return outputs


def stitch(outputs: np.ndarray, layout: WindowLayout) -> np.ndarray:
    """Place all window outputs side by side and crop to the image.

    ``outputs``: n_windows x output_shape x output_shape x C, row-major as :func:`gather_windows`.
    Returns height x width x C float32.
    """
    outputs = _check_outputs(outputs, layout.n_windows, layout, None)
    canvas = np.empty((layout.height, layout.width, outputs.shape[3]), dtype=np.float32)
    _place(canvas, outputs, range(layout.n_windows), layout, (0, 0, layout.height, layout.width))
    return canvas


def region_windows(layout: WindowLayout, region: tuple[int, int, int, int] | None) -> tuple[tuple, list[int]]:
    """``(region, windows)``: the region (y0, x0, y1, x1) checked (the whole image for None) and the row-major
    indices of the windows whose output squares meet it."""
    if region is None:
        return (0, 0, layout.height, layout.width), list(range(layout.n_windows))
    y0, x0, y1, x1 = (int(v) for v in region)
    if not (0 <= y0 < y1 <= layout.height and 0 <= x0 < x1 <= layout.width):
        raise ValueError(f"region {region} is empty or outside the {layout.height}x{layout.width} image")
    step = layout.output_shape
    rows = range(y0 // step, -(-y1 // step))
    cols = range(x0 // step, -(-x1 // step))
    return (y0, x0, y1, x1), [r * layout.cols + c for r in rows for c in cols]


def predict_tile(image: np.ndarray, predict_fn: Callable[[np.ndarray], np.ndarray], batch_size: int = 16,
                 *, input_shape: int, output_shape: int, progress: Callable[[int, int], None] | None = None,
                 region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Predict a whole tile window by window (spec section 6), or one region of it.

    ``image``: HxWx3 RGB, uint8 or float (handed to ``predict_fn`` in that dtype, unnormalised).
    ``predict_fn(batch)``: ``N x input_shape x input_shape x 3`` -> ``N x output_shape x output_shape x C``
    (any float dtype), called ``ceil(n_windows / batch_size)`` times with ``N <= batch_size``. The geometry
    (keyword-only, required) is the config's ``MODEL.INPUT_SHAPE`` / ``MODEL.OUTPUT_SHAPE``.
    ``progress(done, total)``, if given, is called after each batch with window counts.
    ``region`` (y0, x0, y1, x1), end exclusive: predict only the windows of the tile's grid whose output squares
    meet it and return its ``(y1 - y0) x (x1 - x0) x C`` maps, the values the whole tile's maps hold there (the
    windows read the tile's own pixels across the region's edges; reflected ones only past the tile's). A block
    of a large tile (``src.infer.blocks``) thus costs its own windows, not the tile's.
    Raises :class:`misc.io.NonFiniteMapsError` as soon as a batch's output holds NaN or infinity.
    Returns HxWxC float32 (the region's size with ``region``), the channels as ``predict_fn`` returns them. At
    most ``batch_size`` windows (and their outputs) exist at a time besides the result.
    """
    image = _check_image(image)
    layout = window_layout(image.shape[0], image.shape[1], input_shape, output_shape)
    region, windows = region_windows(layout, region)
    canvas = None
    for start, inputs in iter_window_batches(image, layout, batch_size, windows):
        batch = windows[start:start + len(inputs)]
        outputs = _check_outputs(predict_fn(inputs), len(batch), layout, None if canvas is None else canvas.shape[2])
        if not np.isfinite(outputs).all():
            raise NonFiniteMapsError(f"the network's output holds NaN or infinity (windows {start}-"
                                     f"{start + len(batch) - 1}): its weights or input are not usable")
        if canvas is None:  # the channel count is known only once the model has answered
            canvas = np.empty((region[2] - region[0], region[3] - region[1], outputs.shape[3]), dtype=np.float32)
        _place(canvas, outputs, batch, layout, region)
        if progress is not None:
            progress(start + len(batch), len(windows))
    return canvas
