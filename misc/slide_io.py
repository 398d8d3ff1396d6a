"""Reading whole-slide images through OpenSlide, with the project's clear errors.

Any format OpenSlide opens (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.bif``, generic tiled/pyramidal
``.tif``...) through ``openslide-python`` and the library wheel ``openslide-bin`` (no system package).
Regions come back as HxWx3 uint8 RGB with transparent pixels (outside the scanned area) made white, as
a glass slide's background is. Failures raise :class:`misc.io.InputError` naming the file.
numpy/OpenCV/OpenSlide only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from misc.io import InputError

__all__ = ["SLIDE_SUFFIXES", "is_slide", "SlideReader", "resample"]

# Suffixes worth asking OpenSlide about when a folder is listed (generic .tif/.tiff are also tiles).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                  ".dcm")


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # the wheel pins make this rare; say what is missing
        raise InputError(f"whole-slide input needs openslide-python and openslide-bin ({exc})") from exc
    return openslide


def is_slide(path: str | os.PathLike) -> bool:
    """True when OpenSlide recognises ``path`` as a multi-resolution slide (a plain PNG or a strip TIFF is not)."""
    try:
        return _openslide().OpenSlide.detect_format(os.fspath(path)) is not None
    except Exception:  # unreadable files are reported later by whichever reader is chosen
        return False


class SlideReader:
    """One open slide: level-0 size, microns per pixel and RGB regions at any level.

    Args:
        path: the slide file.
        mpp: microns per level-0 pixel overriding the file's ``openslide.mpp-x/y`` (``--mpp``); None keeps
            the file's value, which may then be None (unknown).
    """

    def __init__(self, path: str | os.PathLike, mpp: float | None = None):
        openslide = _openslide()
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        try:
            self._slide = openslide.OpenSlide(os.fspath(self.path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(f"{self.path}: not a slide OpenSlide can open ({type(exc).__name__}: {exc})") from exc
        props = self._slide.properties
        self.vendor = props.get("openslide.vendor", "")
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        if mpp is not None:
            self.mpp = float(mpp)
        else:
            self.mpp = _file_mpp(props)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def best_level(self, downsample: float) -> int:
        """The highest level whose downsample does not exceed ``downsample`` (level 0 for <= 1)."""
        best = 0
        for level, factor in enumerate(self.level_downsamples):
            if factor <= downsample * (1 + 1e-6):
                best = level
        return best

    def read(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """HxWx3 uint8 RGB of the region whose top-left is level-0 ``(x, y)``, ``width`` x ``height`` level px.

        Pixels outside the slide or not scanned (alpha < 255) are composited onto white.
        """
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height))))
        except Exception as exc:  # OpenSlideError for corrupt tiles; the slide handle is unusable afterwards
            raise InputError(f"{self.path}: cannot read region ({x}, {y}) {width}x{height} at level {level} "
                             f"({type(exc).__name__}: {exc})") from exc
        rgb = rgba[..., :3]
        alpha = rgba[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        # openslide-python returns un-premultiplied RGBA: blend onto white by alpha
        blended = rgb.astype(np.float32) * (alpha / 255.0) + 255.0 * (1.0 - alpha / 255.0)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def read_scaled(self, x0: float, y0: float, x1: float, y1: float, out_w: int, out_h: int) -> np.ndarray:
        """Level-0 box ``[x0, x1) x [y0, y1)`` resampled to ``out_h`` x ``out_w`` RGB uint8.

        Read from the coarsest level that still has at least the output's resolution, then resized
        (area averaging when shrinking, bicubic when enlarging).
        """
        downsample = (x1 - x0) / out_w
        level = self.best_level(downsample)
        factor = self.level_downsamples[level]
        w = max(1, math.ceil((x1 - x0) / factor))
        h = max(1, math.ceil((y1 - y0) / factor))
        region = self.read(int(math.floor(x0)), int(math.floor(y0)), w, h, level)
        return resample(region, out_w, out_h)

    def read_downsampled(self, downsample: float, strip: int = 512) -> np.ndarray:
        """The whole slide shrunk by ``downsample`` (>= 1): round(H / d) x round(W / d) x 3 uint8 RGB.

        Read in strips of ``strip`` output rows so memory stays bounded even for a slide without a pyramid.
        """
        out_w = max(1, round(self.width / downsample))
        out_h = max(1, round(self.height / downsample))
        sy = self.height / out_h
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, strip):
            r1 = min(out_h, r0 + strip)
            out[r0:r1] = self.read_scaled(0, r0 * sy, self.width, r1 * sy, out_w, r1 - r0)
        return out


def resample(image: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """An HxWx3 uint8 RGB image resized to ``out_h`` x ``out_w``: area averaging when shrinking, bicubic when
    enlarging, the image itself when the size already matches. The one resampling of slides and of tiles
    read at another magnification (``infer.py --mpp``)."""
    if image.shape[:2] == (out_h, out_w):
        return image
    shrinking = image.shape[1] > out_w
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def _file_mpp(props) -> float | None:
    """Microns per pixel from ``openslide.mpp-x/y``; None when absent, non-positive or anisotropic by > 1%."""
    try:
        mpp_x = float(props["openslide.mpp-x"])
        mpp_y = float(props["openslide.mpp-y"])
    except (KeyError, ValueError):
        return None
    if mpp_x <= 0 or mpp_y <= 0 or abs(mpp_x - mpp_y) > 0.01 * max(mpp_x, mpp_y):
        return None
    return (mpp_x + mpp_y) / 2
