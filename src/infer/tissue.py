"""Tissue masks of whole slides: which parts of a slide are worth sending to the network.

Automatic mask: Otsu's threshold on the HSV saturation of a low-resolution RGB image of the slide (glass
and white background are unsaturated, H&E-stained tissue is not), never below a floor so that a blank
slide stays empty, then a closing, an opening and removal of small components (config ``WSI.TISSUE_*``).
A user mask (``--tissue_mask``) is any 8-bit image, non-zero = tissue, resized to the mask grid.
numpy/OpenCV only.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from misc.arrays import check_rgb_image
from misc.io import InputError

__all__ = ["tissue_mask", "load_user_mask"]


def tissue_mask(rgb: np.ndarray, *, min_saturation: int = 20, close_px: int = 5, open_px: int = 3,
                min_area_px: int = 16) -> np.ndarray:
    """HxW bool tissue mask of an HxWx3 uint8 RGB thumbnail.

    ``min_saturation`` (0..255) floors the Otsu threshold; ``close_px`` / ``open_px`` are elliptical
    kernel sides (0 skips the step); components under ``min_area_px`` pixels are dropped.
    """
    rgb = check_rgb_image(rgb, "tissue thumbnail")
    saturation = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(float(otsu), float(min_saturation))).astype(np.uint8)
    if close_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px,) * 2))
    if open_px > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px,) * 2))
    if min_area_px > 1 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area_px
        keep[0] = False
        mask = keep[labels].astype(np.uint8)
    return mask.astype(bool)


def load_user_mask(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A user's tissue mask image (any size, non-zero = tissue) as HxW bool resized to ``shape`` (nearest).

    Raises :class:`InputError` naming the file when it cannot be read.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if image is None:
        raise InputError(f"{path}: tissue mask is missing or not a readable image")
    mask = (image > 0).astype(np.uint8)
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
