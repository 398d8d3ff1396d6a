"""HoVer-Net loss terms (paper eq. 1-3) as module-level TensorFlow functions.

Every function takes NHWC tensors (channels last) and returns a scalar float32 tensor, so each term is
testable on a tiny hand-made batch. :data:`LOSSES` maps a term kind (the part after the branch in a
``cfg.LOSS.WEIGHTS`` key such as ``'hv_msge'``) to its function; :func:`get_loss` raises on an unknown
name instead of silently falling through (the published code's ``elif 'dice' in ...`` slip).

Published-code facts followed here (vqdang/hover_net, ``src/model/graph.py`` and ``utils.py``):

* CE works on probabilities, not logits: renormalised, clipped to ``[1e-7, 1 - 1e-7]``, summed over
  classes and averaged over pixels.
* Dice is pooled over the whole batch per class (not per image) and summed over classes, with
  smoothing ``1e-3`` on numerator and denominator.
* MSGE stacks the focus over both gradient channels, so the normaliser counts each nuclear pixel
  twice: ``sum(focus * d^2) / (2 * sum(focus) + 1e-8)``; gradients come from a 5x5 kernel with zero
  padding (``'SAME'`` cross-correlation). With types trained, the released focus is the raw
  instance-id map (label channel 0 is binarised only without types), see :func:`msge_focus`.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from src.config import MSGE_FOCUS_MODES, MSGE_VARIANTS

__all__ = ["sobel_hv_kernels", "hv_gradients", "mse_loss", "msge_loss", "msge_focus", "ce_loss", "dice_loss",
           "hard_dice_terms", "LOSSES", "get_loss", "MSGE_VARIANTS", "MSGE_FOCUS_MODES"]



def sobel_hv_kernels(size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The derivative kernels of the MSGE term (paper eq. 3, published 5x5).

    Returns ``(k_h, k_v)``, each ``size x size`` float32 with ``k_h[i, j] = j / (i^2 + j^2 + 1e-15)``
    where ``i`` (row) and ``j`` (column) run over ``-size//2 .. size//2``; ``k_v = k_h.T``. Applied as a
    cross-correlation (``tf.nn.conv2d``), ``k_h`` gives a positive response where a map increases to the
    right (+x) and ``k_v`` where it increases downwards (+y).
    """
    if size % 2 != 1 or size < 3:
        raise ValueError(f"kernel size must be odd and >= 3, got {size}")
    half = size // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    k_h = cols / (rows * rows + cols * cols + 1.0e-15)
    return k_h.astype(np.float32), np.ascontiguousarray(k_h.T).astype(np.float32)


def _conv_single(channel: tf.Tensor, kernel: np.ndarray) -> tf.Tensor:
    """Zero-padded 'SAME' cross-correlation of an N x H x W map with a 2-D kernel -> N x H x W x 1."""
    filt = tf.constant(kernel.reshape(kernel.shape + (1, 1)), dtype=tf.float32)
    return tf.nn.conv2d(tf.expand_dims(channel, -1), filt, strides=[1, 1, 1, 1], padding="SAME")


def hv_gradients(hv: tf.Tensor, variant: str = "published", size: int = 5) -> tf.Tensor:
    """Directional derivatives of an HV map for the MSGE term.

    Args:
        hv: N x H x W x 2 float32, channel 0 the horizontal (x) map, channel 1 the vertical (y) map.
        variant: ``'published'`` - the released code's cross derivatives: output channel 0 is the
            horizontal kernel applied to channel 1 (y map), output channel 1 the vertical kernel applied
            to channel 0 (x map); this produced the paper's tables. ``'paper'`` - eq. (3): horizontal
            derivative of the x map (channel 0) and vertical derivative of the y map (channel 1).
        size: kernel size (published 5).

    Returns:
        N x H x W x 2 float32 gradients, zero padding at the border.
    """
    if variant not in MSGE_VARIANTS:
        raise ValueError(f"unknown MSGE variant {variant!r}; known: {MSGE_VARIANTS}")
    k_h, k_v = sobel_hv_kernels(size)
    hv = tf.cast(hv, tf.float32)
    h_src, v_src = (1, 0) if variant == "published" else (0, 1)
    d_h = _conv_single(hv[..., h_src], k_h)
    d_v = _conv_single(hv[..., v_src], k_v)
    return tf.concat([d_h, d_v], axis=-1)


def mse_loss(true: tf.Tensor, pred: tf.Tensor) -> tf.Tensor:
    """Mean squared error over every element (all pixels of both HV channels). Scalar float32."""
    diff = tf.cast(pred, tf.float32) - tf.cast(true, tf.float32)
    return tf.reduce_mean(diff * diff)


def msge_loss(true_hv: tf.Tensor, pred_hv: tf.Tensor, focus: tf.Tensor, variant: str = "published",
              eps: float = 1.0e-8) -> tf.Tensor:
    """Mean squared gradient error restricted to nuclear pixels (paper eq. 3).

    Args:
        true_hv, pred_hv: N x H x W x 2 float32 HV maps in [-1, 1], channel 0 x, channel 1 y.
        focus: N x H x W non-negative pixel weights, 0 elsewhere; any numeric dtype. 1 on nuclear
            pixels gives the paper's mean; :func:`msge_focus` builds it from the id target.
        variant: see :func:`hv_gradients`.
        eps: added to the normaliser (published 1e-8) so an image without nuclei gives 0.

    Returns:
        Scalar float32 ``sum(focus2 * (g_pred - g_true)^2) / (sum(focus2) + eps)`` with ``focus2`` the
        focus stacked over both gradient channels, as published.
    """
    focus = tf.cast(focus, tf.float32)
    focus2 = tf.stack([focus, focus], axis=-1)
    diff = hv_gradients(pred_hv, variant) - hv_gradients(true_hv, variant)
    return tf.reduce_sum(focus2 * diff * diff) / (tf.reduce_sum(focus2) + eps)


def msge_focus(inst_target: tf.Tensor, mode: str = "published") -> tf.Tensor:
    """The MSGE focus (pixel weights) from the instance-id target (``cfg.LOSS.MSGE_FOCUS``).

    Args:
        inst_target: N x H x W non-negative integer instance ids, 0 background (``np_target``; a binary
            0/1 map is a valid id map).
        mode: ``'published'`` - the ids themselves, as the released graph's ``focus = truemap_coded[..., 0]``
            (label channel 0 is the raw id map when types are trained), so :func:`msge_loss` becomes a mean
            over nuclear pixels weighted by instance id; ``'binary'`` - 1 on nuclear pixels (paper eq. 3,
            the PyTorch release).

    Returns:
        N x H x W float32 weights, 0 on background.
    """
    if mode not in MSGE_FOCUS_MODES:
        raise ValueError(f"unknown MSGE focus {mode!r}; known: {MSGE_FOCUS_MODES}")
    if mode == "binary":
        return tf.cast(inst_target > 0, tf.float32)
    return tf.cast(inst_target, tf.float32)


def ce_loss(true_onehot: tf.Tensor, pred_prob: tf.Tensor, eps: float = 1.0e-7) -> tf.Tensor:
    """Mean categorical cross-entropy of softmax probabilities (not logits), as published.

    Args:
        true_onehot: N x H x W x C one-hot targets.
        pred_prob: N x H x W x C probabilities (softmax output); renormalised over C and clipped to
            ``[eps, 1 - eps]`` (published eps = 1e-7) so log never sees 0.

    Returns:
        Scalar float32, the per-pixel ``-sum_c t_c log p_c`` averaged over N x H x W.
    """
    prob = tf.cast(pred_prob, tf.float32)
    prob = prob / tf.reduce_sum(prob, axis=-1, keepdims=True)
    prob = tf.clip_by_value(prob, eps, 1.0 - eps)
    per_pixel = -tf.reduce_sum(tf.cast(true_onehot, tf.float32) * tf.math.log(prob), axis=-1)
    return tf.reduce_mean(per_pixel)


def dice_loss(true_onehot: tf.Tensor, pred_prob: tf.Tensor, eps: float = 1.0e-3) -> tf.Tensor:
    """Soft Dice loss summed over classes (paper eq. 1, published smoothing).

    Args:
        true_onehot: N x H x W x C one-hot targets.
        pred_prob: N x H x W x C probabilities.
        eps: smoothing on numerator and denominator (published 1e-3).

    Returns:
        Scalar float32 ``sum_c 1 - (2 sum(p_c t_c) + eps) / (sum(p_c) + sum(t_c) + eps)``, each sum over
        the whole batch (N, H and W pooled), as the published code did.
    """
    prob = tf.cast(pred_prob, tf.float32)
    true = tf.cast(true_onehot, tf.float32)
    axes = [0, 1, 2]
    inter = tf.reduce_sum(prob * true, axis=axes)
    total = tf.reduce_sum(prob, axis=axes) + tf.reduce_sum(true, axis=axes)
    return tf.reduce_sum(1.0 - (2.0 * inter + eps) / (total + eps))


def hard_dice_terms(true_label: tf.Tensor, pred_label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Intersection and total (|pred| + |true|) of binary foreground maps, float32 scalars.

    For the NP validation Dice: ``2 * inter / total``; returning the two sums lets a caller pool them
    over many batches. Inputs: N x H x W integer labels, foreground = label > 0.
    """
    true_fg = tf.cast(true_label > 0, tf.float32)
    pred_fg = tf.cast(pred_label > 0, tf.float32)
    return tf.reduce_sum(true_fg * pred_fg), tf.reduce_sum(true_fg) + tf.reduce_sum(pred_fg)


# Term kind -> loss function. The graph combines a branch ('np', 'hv', 'tp') with a kind, e.g. 'hv_msge'.
LOSSES = {
    "mse": mse_loss,
    "msge": msge_loss,
    "ce": ce_loss,
    "dice": dice_loss,
}


def get_loss(name: str):
    """The loss function of a term kind; an unknown name is an error listing the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss term {name!r}; known: {sorted(LOSSES)}") from None
