"""The HoVer-Net graph: published parameter counts, names, shapes, data formats and freezing.

Each graph build takes seconds on a CPU: the builds are module fixtures, the published sizes are checked on
the session's full-size graph (conftest.py), the variants on the MICRO network (tests/shrunk_networks.py), and a
single forward pass (batch 1, random weights) is shared by the tests that need values.
"""
import re
import time

import numpy as np
import pytest
import shrunk_networks
import tensorflow as tf
from tensorpack.tfutils import sesscreate
from tensorpack.tfutils.tower import TowerContext

from src.config import config_from_args
from src.geometry import MODES, derive_geometry
from src.model.graph import (
    COST_NAME,
    DECODER_SCOPES,
    ENCODER_SCOPES,
    INFERENCE_INPUTS,
    LOSS_TENSOR_PREFIX,
    NP_DICE_NAME,
    HoVerNet,
    check_inference_tensors,
    inference_output_names,
)

tf1 = tf.compat.v1

# The shrunk network (tests/shrunk_networks.py), NHWC whatever the machine.
MICRO = [*shrunk_networks.MICRO, "MODEL.DATA_FORMAT=NHWC"]


def _session():
    """A session as tensorpack's predictors open them (without grappler in the suite: conftest.py)."""
    return tf1.Session(config=sesscreate.get_default_sess_config())


# Published counts (spec section 1), trainable parameters.
TOTAL_PARAMS = 54_744_457
ENCODER_PARAMS = 23_500_352
NP_HV_BRANCH_PARAMS = 9_715_586
TP_BRANCH_PARAMS = 9_715_781
CONV_BOT_PARAMS = 2_097_152


def _build(nr_types, is_training, freeze=False, overrides=()):
    """Build HoVerNet in a fresh graph; returns (graph, model, returned cost or None)."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)  # the same initial weights, so the same values, on every run
        model = HoVerNet(nr_types=nr_types, freeze=freeze, cfg=config_from_args(list(overrides)))
        placeholders = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.inputs()]
        with TowerContext("", is_training=is_training):
            cost = model.build_graph(*placeholders)
    return graph, model, cost


def _count(variables, scopes):
    return sum(int(np.prod(v.shape)) for v in variables if v.op.name.split("/")[0] in scopes)


def _trainable(graph):
    with graph.as_default():
        return tf1.trainable_variables()


@pytest.fixture(scope="module")
def train5():
    """MICRO network, nr_types=5, training tower, NHWC (CPU), default (published) MSGE focus."""
    return _build(5, is_training=True, overrides=MICRO)


@pytest.fixture(scope="module")
def forward5(train5):
    """One forward pass of the train5 graph on a 270x270 patch with random targets."""
    graph, model, cost = train5
    rng = np.random.default_rng(0)
    size_in, size = model.cfg.MODEL.INPUT_SHAPE, model.cfg.MODEL.OUTPUT_SHAPE
    feed = {
        "images:0": rng.uniform(0, 255, (1, size_in, size_in, 3)).astype(np.float32),
        "np_target:0": rng.integers(0, 2, (1, size, size)).astype(np.int32),
        "hv_target:0": rng.uniform(-1, 1, (1, size, size, 2)).astype(np.float32),
        "tp_target:0": rng.integers(0, 5, (1, size, size)).astype(np.int32),
    }
    terms = [LOSS_TENSOR_PREFIX + t for t in model.cfg.LOSS.WEIGHTS]
    fetch = inference_output_names(5) + [NP_DICE_NAME, COST_NAME] + terms
    with graph.as_default(), _session() as sess:
        sess.run(tf1.global_variables_initializer())
        start = time.perf_counter()
        values = sess.run([f"{n}:0" for n in fetch], feed)
        print(f"forward+loss of one 270x270 patch on CPU: {time.perf_counter() - start:.1f} s (first run)")
    return dict(zip(fetch, values, strict=True))


@pytest.fixture(scope="module")
def micro5_binary_focus():
    """MICRO network, nr_types=5, training tower, NHWC, binary MSGE focus."""
    return _build(5, is_training=True, overrides=MICRO + ["LOSS.MSGE_FOCUS=binary"])


@pytest.fixture(scope="module")
def train2():
    """MICRO network, nr_types=None (np + hv only), training tower."""
    return _build(None, is_training=True, overrides=MICRO)


@pytest.fixture(scope="module")
def frozen_nchw():
    """MICRO network, nr_types=5, training tower, freeze=True, NCHW (graph only: TF has no NCHW conv on CPU)."""
    return _build(5, is_training=True, freeze=True, overrides=MICRO + ["MODEL.DATA_FORMAT=NCHW"])


def test_geometry():
    original = derive_geometry("original")
    assert original.group_sizes == (264, 132, 66, 33)
    assert (original.crop_group0, original.crop_group1, original.output_shape) == (184, 72, 80)
    fast = derive_geometry("fast")
    assert fast.group_sizes == (256, 128, 64, 32)
    assert (fast.crop_group0, fast.crop_group1, fast.output_shape) == (92, 36, 164)
    with pytest.raises(ValueError):
        derive_geometry("original", input_shape=272)  # group3 would not up-sample onto group2


@pytest.fixture(scope="module")
def fast5():
    """MICRO network in MODEL.MODE=fast, nr_types=5, inference tower (same variables as training), NHWC; the
    one fast build here (the published fast shapes, 256 -> 164, are built in tests/test_model_convert.py)."""
    return _build(5, is_training=False, overrides=MICRO + ["MODEL.MODE=fast"])


@pytest.mark.slow  # builds a network graph
def test_parameter_counts(full_train_graph):
    """The one test of the suite's counts at full size (the session's one full-size build)."""
    graph, _, _ = full_train_graph
    trainable = _trainable(graph)
    counts = {
        "total": sum(int(np.prod(v.shape)) for v in trainable),
        "encoder": _count(trainable, ENCODER_SCOPES),
        "conv_bot": _count(trainable, ("conv_bot",)),
        **{branch: _count(trainable, DECODER_SCOPES[branch]) for branch in ("np", "hv", "tp")},
    }
    print("trainable parameters:", counts)
    assert counts == {"total": TOTAL_PARAMS, "encoder": ENCODER_PARAMS, "conv_bot": CONV_BOT_PARAMS,
                      "np": NP_HV_BRANCH_PARAMS, "hv": NP_HV_BRANCH_PARAMS, "tp": TP_BRANCH_PARAMS}


@pytest.mark.slow  # builds a network graph
def test_imagenet_checkpoint_names(full_train_graph):
    graph, _, _ = full_train_graph
    with graph.as_default():
        shapes = {v.op.name: tuple(v.shape.as_list()) for v in tf1.global_variables()}
    expected = {
        "conv0/W": (7, 7, 3, 64),
        "conv0/bn/gamma": (64,),
        "conv0/bn/mean/EMA": (64,),
        "conv0/bn/variance/EMA": (64,),
        "group0/block0/conv1/W": (1, 1, 64, 64),
        "group0/block0/conv1/bn/beta": (64,),
        "group0/block0/conv2/W": (3, 3, 64, 64),
        "group0/block0/conv3/W": (1, 1, 64, 256),
        "group0/block0/convshortcut/W": (1, 1, 64, 256),
        "group0/block1/preact/bn/gamma": (256,),
        "group0/bnlast/bn/gamma": (256,),
        "group1/block0/convshortcut/W": (1, 1, 256, 512),
        "group3/block2/conv3/W": (1, 1, 512, 2048),
        "group3/bnlast/bn/beta": (2048,),
        "conv_bot/W": (1, 1, 2048, 1024),
        # published decoder names
        "np/u3/conva/W": (5, 5, 1024, 256),
        "hv/u3/dense/blk/7/conv2/W": (5, 5, 32, 32),  # grouped: 128 in / 4 groups
        "tp/u2/dense/blk_bna/bn/gamma": (256,),
        "np/u2/convf/W": (1, 1, 256, 256),
        "hv/u1/conva/W": (5, 5, 256, 64),
        "preact_out_np/bn/gamma": (64,),
        "conv_out_tp/W": (1, 1, 64, 5),
        "conv_out_tp/b": (5,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    # the first unit of a group has no pre-activation; identity shortcuts have no conv
    assert "group0/block0/preact/bn/gamma" not in shapes
    assert "group1/block1/convshortcut/W" not in shapes
    assert not any(k.endswith("/b") for k in shapes if not k.startswith("conv_out_"))  # no bias but heads


@pytest.mark.slow  # builds a network graph
def test_inputs_and_outputs(full_train_graph, train5, train2, fast5):
    """The published shapes on the session's full-size graph; the variants on MICRO graphs."""
    graph, model, cost = full_train_graph
    assert [s.name for s in model.inputs()] == INFERENCE_INPUTS + ["np_target", "hv_target", "tp_target"]
    assert [s.dtype for s in model.inputs()] == [tf.float32, tf.int32, tf.float32, tf.int32]
    assert model.inputs()[0].shape.as_list() == [None, 270, 270, 3]
    assert inference_output_names(5) == ["np_prob", "hv", "tp_prob"]
    check_inference_tensors(graph, 5)
    shapes = {n: graph.get_tensor_by_name(f"{n}:0").shape.as_list() for n in inference_output_names(5)}
    assert shapes == {"np_prob": [None, 80, 80, 2], "hv": [None, 80, 80, 2], "tp_prob": [None, 80, 80, 5]}
    assert cost is not None and cost.name == f"{COST_NAME}:0"
    for term in model.cfg.LOSS.WEIGHTS:
        assert graph.get_tensor_by_name(f"{LOSS_TENSOR_PREFIX}{term}:0").shape.as_list() == []

    graph2, model2, _ = train2
    assert [s.name for s in model2.inputs()] == ["images", "np_target", "hv_target"]
    assert inference_output_names(None) == ["np_prob", "hv"]
    check_inference_tensors(graph2, None)
    with pytest.raises(KeyError, match="tp_prob"):
        check_inference_tensors(graph2, 5)
    graph_inference, _, cost_inference = fast5
    assert cost_inference is None
    graph_inference.get_tensor_by_name(f"{NP_DICE_NAME}:0")  # the validation metric exists in inference towers
    with pytest.raises(KeyError):
        graph_inference.get_tensor_by_name(f"{COST_NAME}:0")
    trainable, trainable5 = _trainable(graph2), _trainable(train5[0])
    tp_branch = _count(trainable5, DECODER_SCOPES["tp"])
    assert tp_branch > 0 and sum(int(np.prod(v.shape)) for v in trainable) == (
        sum(int(np.prod(v.shape)) for v in trainable5) - tp_branch)  # the same network less the tp branch


@pytest.mark.slow  # builds a network graph
def test_forward_pass(forward5):
    np_prob, hv, tp_prob = forward5["np_prob"], forward5["hv"], forward5["tp_prob"]
    assert np_prob.shape == (1, 216, 216, 2) and hv.shape == (1, 216, 216, 2) and tp_prob.shape == (1, 216, 216, 5)
    np.testing.assert_allclose(np_prob.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(tp_prob.sum(-1), 1.0, rtol=1e-5)
    assert 0.0 <= forward5[NP_DICE_NAME] <= 1.0
    terms = {t: forward5[LOSS_TENSOR_PREFIX + t] for t in ("hv_mse", "hv_msge", "np_ce", "np_dice", "tp_ce",
                                                          "tp_dice")}
    assert all(np.isfinite(v) and v >= 0 for v in terms.values())
    weights = {"hv_mse": 2.0, "hv_msge": 1.0, "np_ce": 1.0, "np_dice": 1.0, "tp_ce": 1.0, "tp_dice": 1.0}
    assert forward5[COST_NAME] == pytest.approx(sum(weights[t] * v for t, v in terms.items()), rel=1e-5)


@pytest.mark.slow  # builds a network graph
def test_nchw_builds_the_same_network(frozen_nchw, train5):
    graph, model, _ = frozen_nchw
    assert model.data_format == "NCHW"
    shapes = {n: graph.get_tensor_by_name(f"{n}:0").shape.as_list() for n in inference_output_names(5)}
    assert shapes == {"np_prob": [None, 216, 216, 2], "hv": [None, 216, 216, 2], "tp_prob": [None, 216, 216, 5]}
    names_nchw = {v.op.name: v.shape.as_list() for v in _trainable(graph)}
    names_nhwc = {v.op.name: v.shape.as_list() for v in _trainable(train5[0])}
    assert names_nchw == names_nhwc  # same variables, same shapes: weights move between formats


# Encoder variables the published phase 1 still trains through the un-stopped group0 output ("finetune
# decoder portion together with the first 7x7"): conv0, group0's projection shortcut and bnlast.
PUBLISHED_FROZEN_BUT_TRAINED = {
    "conv0/W", "conv0/bn/gamma", "conv0/bn/beta",
    "group0/block0/convshortcut/W", "group0/bnlast/bn/gamma", "group0/bnlast/bn/beta",
}


@pytest.mark.slow  # builds a network graph
def test_freeze_stops_encoder_gradients(frozen_nchw):
    graph, _, cost = frozen_nchw
    with graph.as_default():
        trainable = tf1.trainable_variables()
        grads = dict(zip([v.op.name for v in trainable], tf1.gradients(cost, trainable), strict=True))
    encoder = {n for n in grads if n.split("/")[0] in ENCODER_SCOPES}
    with_grad = {n for n in encoder if grads[n] is not None}
    assert with_grad == PUBLISHED_FROZEN_BUT_TRAINED
    decoder = [n for n in grads if n.split("/")[0] not in ENCODER_SCOPES]
    assert decoder and all(grads[n] is not None for n in decoder)  # conv_bot, decoders and heads train


@pytest.mark.slow  # builds a network graph
def test_unfrozen_encoder_gets_gradients(train5):
    graph, _, cost = train5
    with graph.as_default():
        encoder = [v for v in tf1.trainable_variables() if v.op.name.split("/")[0] in ENCODER_SCOPES]
        grads = tf1.gradients(cost, encoder)
    assert all(g is not None for g in grads)


def test_optimizer_reads_learning_rate_variable():
    graph = tf.Graph()
    with graph.as_default():
        model = HoVerNet(nr_types=5, cfg=config_from_args())
        opt = model.optimizer()
        lr = [v for v in tf1.global_variables() if v.op.name == "learning_rate"]
        assert len(lr) == 1 and lr[0] not in tf1.trainable_variables()
        assert isinstance(opt, tf1.train.AdamOptimizer)
        with _session() as sess:
            sess.run(tf1.global_variables_initializer())
            assert sess.run(lr[0]) == pytest.approx(1e-4)


@pytest.mark.slow  # builds a network graph
def test_fast_mode_input_and_output_shapes(fast5):
    graph, model, _ = fast5
    assert model.inputs()[0].shape.as_list() == [None, 256, 256, 3]
    assert model.cfg.MODEL.OUTPUT_SHAPE == 232  # with one dense unit per stage (src/geometry.py)
    assert {n: graph.get_tensor_by_name(f"{n}:0").shape.as_list() for n in inference_output_names(5)} == {
        "np_prob": [None, 232, 232, 2], "hv": [None, 232, 232, 2], "tp_prob": [None, 232, 232, 5]}
    kernels = {v.op.name: v.shape.as_list() for v in _trainable(graph)}
    assert kernels["np/u3/conva/W"][:2] == [3, 3] and kernels["np/u1/conva/W"][:2] == [3, 3]
    assert kernels["np/u2/dense/blk/0/conv2/W"][:2] == [3, 3] and kernels["conv0/W"][:2] == [7, 7]


def _np_msge(true_hv, pred_hv, focus):
    """numpy reference of the released loss_msge (published cross derivatives), N x H x W x 2 maps."""
    from scipy.ndimage import correlate

    from src.model.losses import sobel_hv_kernels

    k_h, k_v = sobel_hv_kernels(5)
    total = 0.0
    for t, p, f in zip(true_hv, pred_hv, focus, strict=True):
        d = p.astype(np.float64) - t
        err = (correlate(d[..., 1], k_h, mode="constant") ** 2 + correlate(d[..., 0], k_v, mode="constant") ** 2)
        total += np.sum(f * err)
    return total / (2 * np.sum(focus) + 1e-8)


@pytest.mark.slow  # builds a network graph
@pytest.mark.parametrize("focus_mode", ["published", "binary"])
def test_np_target_ids_binarised_for_np_and_focus_per_config(focus_mode, request):
    if focus_mode == "published":  # the default: the module's shrunk training graph
        graph, model, _ = request.getfixturevalue("train5")
        assert model.cfg.LOSS.MSGE_FOCUS == "published"
    else:
        graph, model, _ = request.getfixturevalue("micro5_binary_focus")
        assert model.cfg.LOSS.MSGE_FOCUS == "binary"
    size = model.cfg.MODEL.OUTPUT_SHAPE
    rng = np.random.default_rng(1)
    ids = np.zeros((1, size, size), np.int32)
    ids[0, 10:30, 10:30] = 3
    ids[0, 40:70, 35:60] = 12
    hv_target = rng.uniform(-1, 1, (1, size, size, 2)).astype(np.float32)
    hv_target[0, 10:30, 10:30] *= 0.1  # smaller errors in the id-3 nucleus: the id weighting changes the mean
    feed = {"images:0": rng.uniform(0, 255, (1, 270, 270, 3)).astype(np.float32), "hv_target:0": hv_target,
            "tp_target:0": (ids > 0).astype(np.int32) * 2}
    fetch = ["hv:0", f"{LOSS_TENSOR_PREFIX}hv_msge:0", f"{LOSS_TENSOR_PREFIX}np_ce:0",
             f"{LOSS_TENSOR_PREFIX}np_dice:0", f"{NP_DICE_NAME}:0"]
    with graph.as_default(), _session() as sess:
        sess.run(tf1.global_variables_initializer())
        hv, msge_ids, *np_ids = sess.run(fetch, {**feed, "np_target:0": ids})
        _, msge_bin, *np_bin = sess.run(fetch, {**feed, "np_target:0": (ids > 0).astype(np.int32)})
    np.testing.assert_allclose(np_ids, np_bin, rtol=1e-6)  # NP terms see only ids > 0
    binary = _np_msge(feed["hv_target:0"], hv, (ids > 0).astype(np.float64))
    weighted = _np_msge(feed["hv_target:0"], hv, ids.astype(np.float64))
    assert msge_bin == pytest.approx(binary, rel=1e-4)  # a 0/1 target is the binary focus in either mode
    assert msge_ids == pytest.approx(weighted if focus_mode == "published" else binary, rel=1e-4)
    assert abs(weighted - binary) > 1e-3 * binary  # the example tells the two apart


@pytest.mark.slow  # builds a network graph
def test_msge_focus_binary_without_types_as_released(train2):
    """Without types the released BinarizeLabel made label channel 0 binary: the focus is binary."""
    graph, model, _ = train2
    size = model.cfg.MODEL.OUTPUT_SHAPE
    rng = np.random.default_rng(2)
    ids = np.zeros((1, size, size), np.int32)
    ids[0, 5:25, 50:75] = 9
    ids[0, 40:60, 10:40] = 2
    feed = {"images:0": rng.uniform(0, 255, (1, 270, 270, 3)).astype(np.float32),
            "hv_target:0": rng.uniform(-1, 1, (1, size, size, 2)).astype(np.float32), "np_target:0": ids}
    with graph.as_default(), _session() as sess:
        sess.run(tf1.global_variables_initializer())
        hv, msge = sess.run(["hv:0", f"{LOSS_TENSOR_PREFIX}hv_msge:0"], feed)
    assert msge == pytest.approx(_np_msge(feed["hv_target:0"], hv, (ids > 0).astype(np.float64)), rel=1e-4)


def _branch_params(k: int, out_ch: int) -> int:
    """Trainable parameters of one decoder branch + head, written out from the layer list; ``k``: the decoder
    kernel (5 original, 3 fast). BN layers have gamma + beta; convolutions have no bias except the head's."""
    def dense_units(ch_in, count):  # each unit: BN(in), 1x1 in->128, BN(128), grouped k x k 128->32 in 4 groups
        return sum(2 * (ch_in + 32 * i) + (ch_in + 32 * i) * 128 + 2 * 128 + k * k * (128 // 4) * 32
                   for i in range(count))
    u3 = k * k * 1024 * 256 + dense_units(256, 8) + 2 * (256 + 8 * 32) + 512 * 512  # conva, units, blk_bna, convf
    u2 = k * k * 512 * 128 + dense_units(128, 4) + 2 * (128 + 4 * 32) + 256 * 256
    u1 = k * k * 256 * 64  # 'same' conva
    head = 2 * 64 + 64 * out_ch + out_ch  # preact_out BN, conv_out with bias
    return u3 + u2 + u1 + head


def test_hand_count_reproduces_the_published_original_counts():
    assert _branch_params(5, 2) == NP_HV_BRANCH_PARAMS and _branch_params(5, 5) == TP_BRANCH_PARAMS


# the decoder's k x k kernels: 5x5 in original mode, 3x3 in fast mode (u3/u2/u1 conva, dense conv2)
DECODER_KERNEL = re.compile(r"/u[123]/conva/W$|/dense/blk/\d+/conv2/W$")


@pytest.mark.slow  # builds a network graph
def test_fast_mode_shapes_and_parameter_counts(fast5, train5):
    """Fast mode changes exactly the decoder's k x k kernels (5x5 -> 3x3), so its full-size counts follow from
    the published original ones by the hand count; checked on the MICRO network in both modes."""
    graph, model, _ = fast5
    assert model.layers == MODES["fast"]
    fast = {v.op.name: tuple(v.shape.as_list()) for v in _trainable(graph)}
    original = {v.op.name: tuple(v.shape.as_list()) for v in _trainable(train5[0])}
    assert set(fast) == set(original)  # the same variables, named the same
    changed = {n for n in fast if fast[n] != original[n]}
    # per branch: the conva of u3, u2 and u1 and the one dense unit's conv2 in u3 and in u2
    assert changed == {n for n in fast if DECODER_KERNEL.search(n)} and len(changed) == 3 * (3 + 1 + 1)
    assert all(original[n][:2] == (5, 5) and fast[n] == (3, 3) + original[n][2:] for n in changed)
    assert fast["conv0/W"][:2] == (7, 7)  # conv0 is 7x7 in both modes, only its padding differs
    # By hand: every 5x5 of a branch becomes 3x3, so each branch loses (25 - 9) x the k x k weights per pixel
    # of kernel, (1024*256 + 8*32*32 + 512*128 + 4*32*32 + 256*64) = 356,352: 16 * 356,352 = 5,701,632.
    # np/hv: 9,715,586 - 5,701,632 = 4,013,954; tp: 9,715,781 - 5,701,632 = 4,014,149. Encoder and conv_bot
    # do not change. The same hand count reproduces the published original counts (test above).
    assert _branch_params(3, 2) == 4_013_954 and _branch_params(3, 5) == 4_014_149
    assert NP_HV_BRANCH_PARAMS - _branch_params(3, 2) == 16 * 356_352 == TP_BRANCH_PARAMS - _branch_params(3, 5)
    assert ENCODER_PARAMS + CONV_BOT_PARAMS + 2 * 4_013_954 + 4_014_149 == 37_639_561


# --- the tensor-name contract (issue 12.8); no graph is built here ---
def test_input_names_are_declared_once_and_match_the_dataflow():
    from dataset.patches import datapoint_names
    from src.model.graph import TARGET_INPUTS, input_names

    cfg = config_from_args()
    assert input_names(5) == ["images", "np_target", "hv_target", "tp_target"] == INFERENCE_INPUTS + TARGET_INPUTS
    assert input_names(None) == ["images", "np_target", "hv_target"]
    for nr_types in (5, None):
        names = [s.name for s in HoVerNet(cfg, nr_types=nr_types).inputs()]
        assert names == input_names(nr_types) == datapoint_names(nr_types)


def test_hovernet_requires_a_finalised_config():
    from src.config import make_config

    for cfg in (None, make_config()):
        with pytest.raises(ValueError, match=r"HoVerNet needs a finalised config \(src.config.config_from_args\)"):
            HoVerNet(cfg)
    with pytest.raises(TypeError):
        HoVerNet()


def test_data_format_is_checked_by_the_config_rule():
    from src.model.graph import resolve_data_format

    assert resolve_data_format("NCHW") == "NCHW" and resolve_data_format("NHWC") == "NHWC"
    with pytest.raises(ValueError) as info:
        resolve_data_format("NCWH")
    assert str(info.value) == "config MODEL.DATA_FORMAT='NCWH': expected one of ['auto', 'NCHW', 'NHWC']"


def test_check_inference_tensors_names_every_missing_tensor():
    graph = tf.Graph()
    with graph.as_default():
        tf1.placeholder(tf.float32, [None, 4, 4, 3], INFERENCE_INPUTS[0])
        tf.identity(tf1.placeholder(tf.float32, [None, 4, 4, 2]), name="np_prob")
    with pytest.raises(KeyError) as info:
        check_inference_tensors(graph, 5)
    assert "graph lacks the inference tensors ['hv', 'tp_prob'] of a HoVer-Net with 5 type channels" in str(info.value)
    with pytest.raises(KeyError, match=r"\['hv'\] of a HoVer-Net with no type branch"):
        check_inference_tensors(graph, None)
