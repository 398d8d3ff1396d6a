"""Loss terms of HoVer-Net (spec section 3) on tiny hand-made maps, against numpy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from src.model.losses import (
    LOSSES,
    ce_loss,
    dice_loss,
    get_loss,
    hard_dice_terms,
    hv_gradients,
    mse_loss,
    msge_focus,
    msge_loss,
    sobel_hv_kernels,
)


@pytest.fixture(autouse=True)
def _graph_of_its_own():
    """Each test builds its ops in a graph of its own and runs them in a session, as training does: the same
    whether or not tensorpack's trainer, earlier in the same test process, has switched eager mode off."""
    with tf.Graph().as_default():
        yield


def _array(tensor) -> np.ndarray:
    with tf.compat.v1.Session() as sess:
        return sess.run(tensor)


def _value(tensor) -> float:
    return float(_array(tensor))


def _np_correlate(image, kernel):
    """Zero-padded 'same' cross-correlation of an HxW map, the reference for tf.nn.conv2d."""
    half = kernel.shape[0] // 2
    padded = np.pad(image, half)
    out = np.zeros_like(image, dtype=np.float64)
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            out[r, c] = np.sum(padded[r:r + kernel.shape[0], c:c + kernel.shape[1]] * kernel)
    return out


def _np_gradients(hv, variant):
    """Reference of hv_gradients for one H x W x 2 map."""
    k_h, k_v = sobel_hv_kernels(5)
    h_src, v_src = (1, 0) if variant == "published" else (0, 1)
    return np.stack([_np_correlate(hv[..., h_src], k_h), _np_correlate(hv[..., v_src], k_v)], axis=-1)


def _x_ramp_map(size=8):
    """HV map varying only along x: channel 0 = column index / size, channel 1 = 0."""
    hv = np.zeros((size, size, 2), np.float32)
    hv[..., 0] = np.arange(size, dtype=np.float32)[None, :] / size
    return hv


def test_kernel_values():
    k_h, k_v = sobel_hv_kernels(5)
    assert k_h.shape == (5, 5) and k_h.dtype == np.float32
    # k_h[i, j] = j / (i^2 + j^2), i row, j column in -2..2 (index 2 is the centre)
    assert k_h[2, 3] == pytest.approx(1.0)
    assert k_h[2, 4] == pytest.approx(0.5)
    assert k_h[0, 4] == pytest.approx(0.25)
    assert k_h[1, 3] == pytest.approx(0.5)
    assert k_h[2, 2] == 0.0
    np.testing.assert_array_equal(k_h[:, 2], 0.0)
    np.testing.assert_array_equal(k_h, -k_h[:, ::-1])
    np.testing.assert_array_equal(k_v, k_h.T)
    with pytest.raises(ValueError):
        sobel_hv_kernels(4)


@pytest.mark.parametrize("variant", ["published", "paper"])
def test_hv_gradients_match_numpy_reference(variant):
    rng = np.random.default_rng(0)
    hv = rng.uniform(-1, 1, size=(8, 8, 2)).astype(np.float32)
    got = _array(hv_gradients(hv[None], variant))[0]
    np.testing.assert_allclose(got, _np_gradients(hv, variant), rtol=1e-5, atol=1e-5)


def test_gradient_variants_differ_on_x_ramp():
    """A map varying only along x in channel 0: eq. (3) ('paper') sees its x-derivative; the
    published cross derivatives see only the zero-padding border of its y-derivative."""
    hv = _x_ramp_map()
    paper = _array(hv_gradients(hv[None], "paper"))[0]
    published = _array(hv_gradients(hv[None], "published"))[0]
    interior = (slice(2, -2), slice(2, -2))
    # interior x-derivative of f = x / 8 with this kernel: sum_ij j^2 / (i^2 + j^2) / 8
    k_h, _ = sobel_hv_kernels(5)
    slope = float(np.sum(k_h * np.arange(-2, 3)[None, :])) / 8
    np.testing.assert_allclose(paper[interior][..., 0], slope, rtol=1e-5)
    np.testing.assert_allclose(paper[..., 1], 0.0, atol=1e-6)  # y map is 0 everywhere
    np.testing.assert_allclose(published[..., 0], 0.0, atol=1e-6)  # k_h on the (zero) y map
    np.testing.assert_allclose(published[interior][..., 1], 0.0, atol=1e-6)  # x map constant along y inside
    assert np.abs(published[0, 3:, 1]).min() > 0  # zero padding makes the top border non-zero


def test_msge_normalisation_and_variants():
    true = _x_ramp_map()
    pred = np.zeros_like(true)
    focus = np.zeros((8, 8), np.float32)
    focus[2:6, 1:7] = 1  # 24 nuclear pixels
    for variant in ("published", "paper"):
        diff = _np_gradients(pred, variant) - _np_gradients(true, variant)
        expected = np.sum(focus[..., None] * diff ** 2) / (2 * focus.sum() + 1e-8)
        got = _value(msge_loss(true[None], pred[None], focus[None], variant=variant))
        assert got == pytest.approx(expected, rel=1e-5)
    paper = _value(msge_loss(true[None], pred[None], focus[None], variant="paper"))
    published = _value(msge_loss(true[None], pred[None], focus[None], variant="published"))
    assert paper > 0.01 and published < 1e-10  # the focus avoids the top/bottom border rows
    with pytest.raises(ValueError):
        msge_loss(true[None], pred[None], focus[None], variant="sobel")


def test_msge_focus_published_is_id_weighted_mean():
    """Released focus = label channel 0 = the instance-id map: an id-weighted mean over nuclear pixels."""
    true = _x_ramp_map()
    pred = np.zeros_like(true)
    ids = np.zeros((8, 8), np.int32)
    ids[0:3, 0:2] = 1  # on the left border, where the zero padding makes the gradient error large
    ids[3:6, 3:6] = 4  # inside, where the ramp's gradient error is a constant
    published_focus = _array(msge_focus(ids[None], "published"))[0]
    binary_focus = _array(msge_focus(ids[None], "binary"))[0]
    np.testing.assert_array_equal(published_focus, ids.astype(np.float32))
    np.testing.assert_array_equal(binary_focus, (ids > 0).astype(np.float32))
    for variant in ("published", "paper"):
        err = np.sum((_np_gradients(pred, variant) - _np_gradients(true, variant)) ** 2, axis=-1)
        # numpy reference of the released loss_msge: focus stacked over both channels
        want_published = np.sum(ids * err) / (2 * ids.sum() + 1e-8)  # ids.sum() = 6 * 1 + 9 * 4 = 42
        want_binary = np.sum((ids > 0) * err) / (2 * 15 + 1e-8)
        got_published = _value(msge_loss(true[None], pred[None], published_focus[None], variant=variant))
        got_binary = _value(msge_loss(true[None], pred[None], binary_focus[None], variant=variant))
        assert got_published == pytest.approx(want_published, rel=1e-5)
        assert got_binary == pytest.approx(want_binary, rel=1e-5)
    # 'paper' (x map, horizontal kernel): id 4 weighs 4x, so the interior error dominates the mean
    k_h, _ = sobel_hv_kernels(5)
    interior = (np.sum(k_h * np.arange(-2, 3)[None, :]) / 8) ** 2  # ramp slope 1/8 times sum(j * k_h)
    err = np.sum((_np_gradients(pred, "paper") - _np_gradients(true, "paper")) ** 2, axis=-1)
    np.testing.assert_allclose(err[3:6, 3:6], interior, rtol=1e-5)
    assert _value(msge_loss(true[None], pred[None], published_focus[None], "paper")) != pytest.approx(
        _value(msge_loss(true[None], pred[None], binary_focus[None], "paper")), rel=1e-3)
    with pytest.raises(ValueError, match="focus"):
        msge_focus(ids[None], "weighted")


def test_perfect_prediction_gives_zero():
    rng = np.random.default_rng(0)
    hv = rng.uniform(-1, 1, size=(2, 8, 8, 2)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 8, 8))
    onehot = np.eye(3, dtype=np.float32)[labels]
    focus = (labels > 0).astype(np.float32)
    assert _value(mse_loss(hv, hv)) == 0.0
    assert _value(msge_loss(hv, hv, focus, "published")) == 0.0
    assert _value(msge_loss(hv, hv, focus, "paper")) == 0.0
    assert _value(ce_loss(onehot, onehot)) == pytest.approx(0.0, abs=1e-6)  # clipped at 1 - 1e-7
    assert _value(dice_loss(onehot, onehot)) == pytest.approx(0.0, abs=1e-7)


def test_msge_without_nuclei_is_zero():
    hv = np.ones((1, 8, 8, 2), np.float32)
    assert _value(msge_loss(hv, -hv, np.zeros((1, 8, 8), np.float32))) == 0.0


def test_mse_constant_offset():
    true = np.zeros((1, 8, 8, 2), np.float32)
    assert _value(mse_loss(true, true + 0.5)) == pytest.approx(0.25)
    assert _value(mse_loss(true, true - 2.0)) == pytest.approx(4.0)


def test_ce_known_values():
    onehot = np.eye(2, dtype=np.float32)[np.array([[[0, 1], [1, 1]]])]
    assert _value(ce_loss(onehot, np.full_like(onehot, 0.5))) == pytest.approx(math.log(2), rel=1e-6)
    prob = np.zeros_like(onehot)
    prob[..., 1] = 0.8
    prob[..., 0] = 0.2
    # three pixels of class 1 (p = 0.8), one of class 0 (p = 0.2)
    expected = -(3 * math.log(0.8) + math.log(0.2)) / 4
    assert _value(ce_loss(onehot, prob)) == pytest.approx(expected, rel=1e-6)


def test_dice_known_overlap():
    # 1 x 2 x 2 map: true foreground at the top row, predicted at the left column (one pixel overlap)
    true = np.eye(2, dtype=np.float32)[np.array([[[1, 1], [0, 0]]])]
    pred = np.eye(2, dtype=np.float32)[np.array([[[1, 0], [1, 0]]])]
    eps = 1e-3
    per_class = 1 - (2 * 1 + eps) / (2 + 2 + eps)  # each class: overlap 1, sizes 2 and 2
    assert _value(dice_loss(true, pred)) == pytest.approx(2 * per_class, rel=1e-6)
    # soft prediction, pooled over a batch of two images
    true2 = np.concatenate([true, true])
    soft = np.concatenate([np.full_like(true, 0.5), true])
    inter = 0.5 * 2 + 2  # per class: 0.5 on two true pixels of image 0, 2 in image 1
    per_class = 1 - (2 * inter + eps) / ((2 + 2) + (2 + 2) + eps)
    assert _value(dice_loss(true2, soft)) == pytest.approx(2 * per_class, rel=1e-6)


def test_hard_dice_terms():
    true = np.array([[[1, 1], [0, 0]]])
    pred = np.array([[[1, 0], [1, 0]]])
    inter, total = hard_dice_terms(true, pred)
    assert _value(inter) == 1.0 and _value(total) == 4.0


def test_loss_lookup():
    assert set(LOSSES) == {"mse", "msge", "ce", "dice"}
    assert get_loss("msge") is msge_loss
    with pytest.raises(KeyError, match="unknown loss term 'bce'"):
        get_loss("bce")


def test_hv_gradients_rejects_unknown_variant():
    with pytest.raises(ValueError):
        hv_gradients(tf.zeros([1, 8, 8, 2]), "cross")
