"""Training augmentation of spec section 4 as pure numpy/OpenCV functions with an explicit random state.

Reproduces the published pipeline (HoVer-Net TF ``src/config.py: get_train_augmentors`` built from tensorpack
``imgaug`` plus the custom ``GaussianBlur``/``MedianBlur`` of ``src/loader/augs.py``), one operation per
function so each can be tested alone:

1. geometric, on the image and the label channels together (:func:`sample_geometry`,
   :func:`apply_geometry`): tensorpack ``imgaug.Affine(shear=5, scale=(0.8, 1.2), rotate_max_deg=179,
   translate_frac=(0.01, 0.01), interp=INTER_NEAREST, border=BORDER_CONSTANT)`` about the patch centre -
   one isotropic scale, the shear added to the rotation matrix's second column, an integer translation;
   nearest interpolation for the image *and* the labels, zero border - then ``Flip(vert=True)`` and
   ``Flip(horiz=True)``, each with probability 0.5;
2. :func:`centre_crop` to the network input (270), image and labels alike (``imgaug.CenterCrop``);
3. image only (:func:`augment_photometric`): with probability 0.5 one of, equally likely, a Gaussian blur with
   independent odd kernel width and height in {3, 5} (sigma from the kernel size), a median blur with an odd
   kernel in {3, 5}, or additive Gaussian noise N(0, sigma=1) (tensorpack's ``GaussianNoise()`` default);
   then hue shift, saturation, brightness and contrast in a random order; each step rounds back to uint8
   by clipping to [0, 255] and truncating, as tensorpack's photometric augmentors do on uint8 input.

Randomness comes only from the ``rng`` argument, an ``np.random.RandomState`` (the type tensorpack's
``RNGDataFlow.rng`` and ``imgaug`` use), so a seed reproduces a patch exactly and forked workers never share
a global stream. Parameters come from ``cfg.AUG`` through :meth:`AugParams.from_config`. No TensorFlow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from src.maps.targets import centre_crop_window

__all__ = [
    "AugParams", "GeometryParams", "IDENTITY_GEOMETRY", "sample_geometry", "affine_matrix", "source_maps",
    "apply_geometry", "centre_crop",
    "gaussian_blur", "median_blur", "gaussian_noise", "hue_shift", "adjust_saturation", "adjust_brightness",
    "adjust_contrast", "augment_photometric", "PHOTOMETRIC_ORDER",
]

# The colour operations permuted at random in step 3, in the order their parameters are drawn.
PHOTOMETRIC_ORDER = ("hue", "saturation", "brightness", "contrast")


@dataclass(frozen=True)
class AugParams:
    """Augmentation settings (spec section 4); build with :meth:`from_config` from ``cfg.AUG``.

    Attributes:
        shear_deg: max |shear| in degrees.
        scale: (low, high) isotropic scale factor range.
        rotate_deg: max |rotation| in degrees.
        translate_frac: max |shift| as a fraction of the patch side (rounded to whole pixels).
        flip: apply the random vertical and horizontal flips.
        blur_noise_prob: probability of applying one of blur / median blur / noise.
        blur_ksize: (smallest, largest) odd kernel size of both blurs, inclusive.
        noise_sigma: standard deviation of the additive noise, in 0-255 intensity units.
        hue: (low, high) hue offset in OpenCV 8-bit hue units (0-179 wheel, so 1 unit = 2 degrees).
        saturation: max |change| of the saturation factor around 1.
        brightness: max |intensity offset| added to all channels.
        contrast: (low, high) contrast factor range around each channel's mean.
    """

    shear_deg: float
    scale: tuple[float, float]
    rotate_deg: float
    translate_frac: float
    flip: bool
    blur_noise_prob: float
    blur_ksize: tuple[int, int]
    noise_sigma: float
    hue: tuple[float, float]
    saturation: float
    brightness: float
    contrast: tuple[float, float]

    def __post_init__(self):
        low, high = self.blur_ksize
        if low < 1 or low % 2 == 0 or high % 2 == 0 or high < low:
            raise ValueError(f"blur_ksize must be two odd sizes low <= high, got {self.blur_ksize}")

    @classmethod
    def from_config(cls, cfg) -> AugParams:
        """Read ``cfg.AUG`` (spec section 4)."""
        aug = cfg.AUG
        return cls(
            shear_deg=float(aug.SHEAR_DEG), scale=tuple(float(v) for v in aug.SCALE),
            rotate_deg=float(aug.ROTATE_DEG), translate_frac=float(aug.TRANSLATE_FRAC), flip=bool(aug.FLIP),
            blur_noise_prob=float(aug.BLUR_NOISE_PROB), blur_ksize=tuple(int(v) for v in aug.BLUR_KSIZE),
            noise_sigma=float(aug.NOISE_SIGMA), hue=tuple(float(v) for v in aug.HUE),
            saturation=float(aug.SATURATION), brightness=float(aug.BRIGHTNESS),
            contrast=tuple(float(v) for v in aug.CONTRAST),
        )


# --- 1. geometric: image and labels together ---

class GeometryParams(NamedTuple):
    """One draw of the geometric augmentation: angles in degrees, shift in whole pixels (x right, y down)."""

    scale: float
    shift_x: float
    shift_y: float
    shear_deg: float
    rotate_deg: float
    flip_vertical: bool
    flip_horizontal: bool


IDENTITY_GEOMETRY = GeometryParams(1.0, 0.0, 0.0, 0.0, 0.0, False, False)


def sample_geometry(rng: np.random.RandomState, shape: tuple[int, int], params: AugParams) -> GeometryParams:
    """Draw affine and flip parameters for an HxW patch (tensorpack ``Affine`` then two ``Flip``s).

    Scale ~ U(scale), shift ~ round(U(+-translate_frac * side)) per axis, shear ~ U(+-shear_deg),
    rotation ~ U(+-rotate_deg), each flip with probability 0.5 (never when ``params.flip`` is false).
    """
    height, width = shape[:2]
    scale = rng.uniform(*params.scale)
    max_dx, max_dy = params.translate_frac * width, params.translate_frac * height
    shift_x = float(np.round(rng.uniform(-max_dx, max_dx)))
    shift_y = float(np.round(rng.uniform(-max_dy, max_dy)))
    shear = rng.uniform(-params.shear_deg, params.shear_deg) if params.shear_deg > 0 else 0.0
    rotate = rng.uniform(-params.rotate_deg, params.rotate_deg)
    flip_v = bool(rng.uniform() < 0.5) if params.flip else False
    flip_h = bool(rng.uniform() < 0.5) if params.flip else False
    return GeometryParams(float(scale), shift_x, shift_y, float(shear), float(rotate), flip_v, flip_h)


def affine_matrix(geometry: GeometryParams, shape: tuple[int, int]) -> np.ndarray:
    """The 2x3 forward (source -> destination) matrix of ``geometry`` for an HxW patch, as OpenCV takes it.

    Rotation by ``rotate_deg`` (counter-clockwise on screen) and isotropic ``scale`` about the pixel-grid
    centre ``((W - 1) / 2, (H - 1) / 2)``; the shear mixes the first column into the second
    (``m01 = m01 cos s + m00 sin s``, ``m11 = m11 cos s + m10 sin s``) with the offset recomputed so the centre
    stays fixed; then the integer shift. This is tensorpack ``imgaug.Affine``'s construction.
    """
    height, width = shape[:2]
    centre = ((width - 1) * 0.5, (height - 1) * 0.5)
    mat = cv2.getRotationMatrix2D(centre, geometry.rotate_deg, geometry.scale)
    if geometry.shear_deg != 0.0:
        sin_s, cos_s = math.sin(math.radians(geometry.shear_deg)), math.cos(math.radians(geometry.shear_deg))
        m00, m01, m10, m11 = mat[0, 0], mat[0, 1], mat[1, 0], mat[1, 1]
        mat[0, 1] = m01 * cos_s + m00 * sin_s
        mat[1, 1] = m11 * cos_s + m10 * sin_s
        mat[0, 2] = centre[0] * (1.0 - m00) - centre[1] * mat[0, 1]
        mat[1, 2] = -centre[0] * m10 + centre[1] * (1.0 - mat[1, 1])
    mat[0, 2] += geometry.shift_x
    mat[1, 2] += geometry.shift_y
    return mat


def source_maps(mat: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest source pixel of every destination pixel under the forward 2x3 ``mat`` for an HxW patch.

    Returns ``(map_x, map_y)``: HxW float32 maps of whole-pixel source columns and rows (``cv2.remap``'s
    layout; coordinates outside the patch mean the zero border). Rounding here, once, lets the image and the
    labels share one index map: warping them separately with ``cv2.warpAffine`` can pick a different
    neighbour at exact ties for different dtypes (uint8 vs int32), shifting a label pixel against its image
    pixel.
    """
    height, width = shape[:2]
    # float32 is exact to ~1e-4 px at patch sizes and ten times faster than float64 here
    inverse = cv2.invertAffineTransform(mat).astype(np.float32)
    cols = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]
    map_x = np.floor(inverse[0, 0] * cols + (inverse[0, 1] * rows + (inverse[0, 2] + np.float32(0.5))))
    map_y = np.floor(inverse[1, 0] * cols + (inverse[1, 1] * rows + (inverse[1, 2] + np.float32(0.5))))
    return map_x, map_y


def _remap_nearest(array: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    # OpenCV remaps at most 4 channels at once; wider label stacks go channel by channel.
    if array.ndim == 3 and array.shape[2] > 4:
        return np.stack([_remap_nearest(array[..., k], map_x, map_y) for k in range(array.shape[2])], axis=-1)
    out = cv2.remap(array, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if array.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing axis of length 1
        out = out[..., None]
    return out


def apply_geometry(image: np.ndarray, labels: np.ndarray,
                   geometry: GeometryParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply one geometric draw identically to the image and its labels.

    Args:
        image: HxWx3 uint8 RGB.
        labels: HxW or HxWxC int32 label channels (instance id, type id), same HxW as ``image``.
        geometry: from :func:`sample_geometry`; :data:`IDENTITY_GEOMETRY` returns copies of the inputs.

    Returns:
        ``(image, labels)`` with the input shapes and dtypes. Nearest-neighbour sampling (the published
        ``interp=cv2.INTER_NEAREST`` applies to both) through one shared index map
        (:func:`source_maps`), so every output pixel of both comes from the same input pixel, label
        values are a subset of the input's, and pixels mapped from outside the patch are 0.
    """
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape[:2]} differ in size")
    if geometry[:5] != IDENTITY_GEOMETRY[:5]:
        map_x, map_y = source_maps(affine_matrix(geometry, image.shape[:2]), image.shape[:2])
        image, labels = _remap_nearest(image, map_x, map_y), _remap_nearest(labels, map_x, map_y)
    if geometry.flip_vertical:
        image, labels = image[::-1], labels[::-1]
    if geometry.flip_horizontal:
        image, labels = image[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def centre_crop(array: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The central ``size`` (int or (h, w)) of an HxW[xC] array; offset ``int((H - h) / 2)`` as tensorpack's
    ``CenterCrop`` (for an odd difference the extra row/column is left at the bottom/right). Returns a view.
    The window is :func:`src.maps.targets.centre_crop_window`'s (ValueError when it does not fit)."""
    rows, cols = centre_crop_window(array.shape, size)
    return array[rows, cols]


# --- 3. image only; every function maps HxWx3 uint8 RGB to HxWx3 uint8 RGB ---

def _to_uint8(array: np.ndarray) -> np.ndarray:
    # clip then truncate, as tensorpack's photometric augmentors cast back to the uint8 input dtype
    return np.clip(array, 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, ksize: tuple[int, int]) -> np.ndarray:
    """Gaussian blur with an odd ``(width, height)`` kernel, sigma derived by OpenCV, replicated border."""
    return cv2.GaussianBlur(image, tuple(int(k) for k in ksize), sigmaX=0, sigmaY=0,
                            borderType=cv2.BORDER_REPLICATE)


def median_blur(image: np.ndarray, ksize: int) -> np.ndarray:
    """Median blur with an odd square kernel."""
    return cv2.medianBlur(image, int(ksize))


def gaussian_noise(image: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
    """Add ``sigma * noise`` (``noise`` standard normal, the image's shape) to every channel value."""
    return _to_uint8(image + noise * sigma)


def hue_shift(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` OpenCV 8-bit hue units (the wheel is 0-179), saturation and value kept."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + shift) % 180  # assignment into uint8 truncates, as published
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the grey image: ``factor * image + (1 - factor) * grey``; ``factor`` 1 is the identity."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return _to_uint8(image * factor + (grey * (1.0 - factor))[..., None])


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` to every channel value."""
    return _to_uint8(image.astype(np.float32) + np.float32(delta))


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """``(x - mean) * factor + mean`` with the mean of each channel over the image (tensorpack ``Contrast``
    with ``rgb=None``)."""
    mean = image.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(image * factor + mean * (1.0 - factor))


def augment_photometric(image: np.ndarray, rng: np.random.RandomState, params: AugParams) -> np.ndarray:
    """Step 3 on an HxWx3 uint8 RGB image: maybe one blur/noise, then the four colour changes in random order.

    Draw order: apply? (U < ``blur_noise_prob``), which of the three (uniform), its size or noise; the colour
    permutation; then hue, saturation factor (1 + U(+-saturation)), brightness and contrast values. Returns
    HxWx3 uint8 RGB; labels are never touched here.
    """
    if rng.uniform() < params.blur_noise_prob:
        choice = rng.randint(3)
        low, high = params.blur_ksize
        if choice == 0:
            kx, ky = rng.randint(low // 2, high // 2 + 1, size=2) * 2 + 1
            image = gaussian_blur(image, (kx, ky))
        elif choice == 1:
            image = median_blur(image, rng.randint(low // 2, high // 2 + 1) * 2 + 1)
        else:
            image = gaussian_noise(image, rng.standard_normal(image.shape), params.noise_sigma)
    order = rng.permutation(len(PHOTOMETRIC_ORDER))
    values = {
        "hue": rng.uniform(*params.hue),
        "saturation": 1.0 + rng.uniform(-params.saturation, params.saturation),
        "brightness": rng.uniform(-params.brightness, params.brightness),
        "contrast": rng.uniform(*params.contrast),
    }
    ops = {"hue": hue_shift, "saturation": adjust_saturation, "brightness": adjust_brightness,
           "contrast": adjust_contrast}
    for index in order:
        name = PHOTOMETRIC_ORDER[index]
        image = ops[name](image, values[name])
    return image
