"""Checks and helpers for the arrays every stage passes around: label maps, RGB images, 4-connectivity.

One copy of each, shared by the targets, the post-processing, the metrics, the readers and the writers, so
that they accept the same inputs and refuse bad ones with the same message. numpy only: ``metrics`` and
the other TensorFlow-free cores import it freely.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CROSS_4", "check_label_map", "relabel_contiguous", "check_rgb_image", "column_bands"]

# 4-connectivity: the default structure of scipy.ndimage.label (generate_binary_structure(2, 1)), used for
# every labelling in the released code. Read-only, so no caller can change it for the others.
CROSS_4 = np.array([[False, True, False], [True, True, True], [False, True, False]])
CROSS_4.setflags(write=False)

# Bytes of a 4-byte map taken at a time by the writers that go through a map in bands of columns (column_bands).
BAND_BYTES = 1 << 24

# Above this many ids per pixel (plus a constant), relabelling sorts the ids instead of building a table
# with one entry per id up to the largest.
_MAX_TABLE_IDS_PER_PIXEL = 4


def check_label_map(array, what: str = "instance map", *, whole_floats: bool = False,
                    allow_bool: bool = True) -> np.ndarray:
    """``array`` as an ndarray after checking that it is an HxW map of non-negative integer ids.

    Args:
        array: the map; integer dtypes always pass, bool when ``allow_bool`` (a one-instance mask), floats
            only with ``whole_floats`` and only when every value is a finite whole number (MATLAB and
            ``.npy`` patches store ids as doubles). The dtype is not changed.
        what: how the message names the map, e.g. ``"true"`` or ``"'inst_map'"``.

    Raises:
        ValueError, in one line starting with ``what``: ``must be a 2-D (HxW) map, got shape ...``,
        ``must hold integer ids, got dtype ...``, ``holds non-integer values`` or ``holds negative ids``.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (HxW) map, got shape {array.shape}")
    kind = array.dtype.kind
    if kind == "f" and whole_floats:
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{what} holds non-integer values")
    elif kind not in ("iub" if allow_bool else "iu"):
        raise ValueError(f"{what} must hold integer ids, got dtype {array.dtype}")
    if kind in "if" and array.size and array.min() < 0:  # unsigned and bool maps cannot be negative
        raise ValueError(f"{what} holds negative ids")
    return array


def relabel_contiguous(inst_map, dtype=np.int64) -> tuple[np.ndarray, int]:
    """Ids 1..N in increasing order of the original ids; 0 stays background (the published ``remap_label``).

    Args:
        inst_map: HxW non-negative integer (or bool) ids, 0 background, any gaps (checked by
            :func:`check_label_map`).
        dtype: integer dtype of the returned map.

    Returns:
        ``(map, N)``: HxW ``dtype`` map with ids 0..N, and N. The pixel partition and the background are
        unchanged, and so is the order of the ids.
    """
    inst_map = check_label_map(inst_map)
    flat = inst_map.ravel().astype(np.int64, copy=False)
    if flat.size == 0:
        return np.zeros(inst_map.shape, dtype), 0
    max_id = int(flat.max())
    if max_id <= _MAX_TABLE_IDS_PER_PIXEL * flat.size + 1024:
        # Lookup table: O(pixels + max id) and no sort; ids are ranked by a cumulative count of presence.
        present = np.bincount(flat, minlength=max_id + 1) > 0
        present[0] = False
        lut = np.cumsum(present).astype(dtype, copy=False)  # absent ids never occur: their entries are unread
        return lut[flat].reshape(inst_map.shape), int(lut[-1])
    # Huge sparse ids (e.g. hashes): a sort is cheaper than a table of max_id entries.
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] != 0:
        inverse = inverse + 1  # no background pixel: the smallest id becomes 1
    return inverse.reshape(inst_map.shape).astype(dtype, copy=False), len(uniq) - int(uniq[0] == 0)


def check_rgb_image(image, what: str = "image") -> np.ndarray:
    """``image`` as an ndarray after checking that it is HxWx3 uint8 (RGB by the project's convention).

    Raises ValueError ``<what> must be HxWx3 uint8 RGB, got shape ... dtype ...`` otherwise.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{what} must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    return image


def column_bands(array, max_bytes: int | None = None, itemsize: int = 4):
    """Yield ``array[:, c0:c1]`` for consecutive bands of columns covering an HxW map, each of at most
    ``max_bytes`` (default :data:`BAND_BYTES`) at ``itemsize`` bytes per pixel (at least one column).

    ``array``: an ndarray or anything with ``shape`` whose ``[:, c0:c1]`` gives those columns as an array (a
    label map kept in a file, :class:`misc.io.ScratchArray`). Column bands, because MAT files store maps column by
    column: the writers of a large map hold one band besides the map, not a second map.
    """
    height, width = array.shape
    step = max(1, (BAND_BYTES if max_bytes is None else max_bytes) // max(1, height * itemsize))
    for c0 in range(0, width, step):
        yield array[:, c0:min(width, c0 + step)]
