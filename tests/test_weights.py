"""Loading weights by name: .npz and checkpoints, the match report, strict and non-strict loading."""
import logging

import numpy as np
import pytest
import tensorflow as tf

from src.config import config_from_args
from src.model.weights import (
    WeightsMismatchError,
    graph_variable_shapes,
    initial_weights,
    is_training_state,
    make_session_init,
    match_weights,
    model_metadata,
    read_weight_shapes,
    read_weights,
)
from src.model.weights_file import METADATA_KEY, checkpoint_prefix, model_config, read_npz_metadata, write_npz

tf1 = tf.compat.v1


@pytest.fixture(scope="module")
def hovernet_shapes(full_train_graph):
    """{name: shape} of every variable of the published graph (nr_types=5) that a weights file holds: the
    session's full-size training graph less its training state (the loss EMAs), i.e. the inference tower's."""
    graph = full_train_graph[0]
    with graph.as_default():
        shapes = graph_variable_shapes()
    return {name: shape for name, shape in shapes.items() if not is_training_state(name)}


def _imagenet_like_npz(path):
    """A few ImageNet Preact-ResNet50 names (tensorpack varmanip keys, some with ':0'), one name the
    graph lacks, one wrong shape, and training state that must not count as unexpected."""
    rng = np.random.default_rng(0)
    arrays = {
        "conv0/W:0": rng.normal(size=(7, 7, 3, 64)).astype(np.float32),
        "conv0/bn/gamma:0": rng.normal(size=(64,)).astype(np.float32),
        "group0/block0/conv1/W": rng.normal(size=(1, 1, 64, 64)).astype(np.float32),
        "group0/bnlast/bn/mean/EMA:0": rng.normal(size=(256,)).astype(np.float32),
        "linear/W:0": rng.normal(size=(2048, 1000)).astype(np.float32),  # ImageNet classifier
        "group0/block0/conv2/W:0": rng.normal(size=(3, 3, 64, 32)).astype(np.float32),  # wrong shape
        "conv0/W/Adam:0": np.zeros((7, 7, 3, 64), np.float32),  # optimizer slot: training state
        "learning_rate:0": np.float32(0.1),
    }
    np.savez(path, **arrays)
    return {k.replace(":0", ""): v for k, v in arrays.items()}


def test_training_state_names():
    for name in ("conv0/W/Adam", "conv0/W/Adam_1:0", "beta1_power", "global_step", "learning_rate",
                 "EMA/overall_cost/EMA", "tower0/EMA/loss_hv_mse/EMA"):
        assert is_training_state(name), name
    for name in ("conv0/W", "group0/bnlast/bn/mean/EMA", "np/u3/dense/blk/0/conv1/bn/variance/EMA:0"):
        assert not is_training_state(name), name


def test_read_npz_strips_output_suffix(tmp_path):
    expected = _imagenet_like_npz(tmp_path / "w.npz")
    weights = read_weights(tmp_path / "w.npz")
    assert set(weights) == set(expected)
    np.testing.assert_array_equal(weights["conv0/W"], expected["conv0/W"])
    assert read_weight_shapes(tmp_path / "w.npz")["conv0/W"] == (7, 7, 3, 64)


def test_npz_metadata_round_trip(tmp_path, caplog):
    cfg = config_from_args(["MODEL.MODE=fast", "MODEL.PRESET=small", "MODEL.DENSE_UNITS=(8, 4)",
                            "MODEL.DATA_FORMAT=NHWC"])
    metadata = model_metadata(cfg, nr_types=6)
    # mode, preset and type count always; other MODEL keys only where they differ from the preset's value;
    # never the derived geometry nor the machine's data format
    assert metadata == {"MODEL": {"MODE": "fast", "PRESET": "small", "NR_TYPES": 6, "DENSE_UNITS": [8, 4]}}
    write_npz(tmp_path / "m.npz", {"conv0/W": np.ones((7, 7, 3, 8), np.float32)}, metadata)
    with np.load(tmp_path / "m.npz") as data:
        assert data[METADATA_KEY].shape == () and data[METADATA_KEY].dtype.kind == "U"
    assert list(read_weights(tmp_path / "m.npz")) == ["conv0/W"]  # '__' keys are not variables
    assert read_weight_shapes(tmp_path / "m.npz") == {"conv0/W": (7, 7, 3, 8)}
    assert read_npz_metadata(tmp_path / "m.npz") == metadata
    # the record rebuilds the network (the preset first, then what differs from it); the user's overrides win
    recorded = model_config(tmp_path / "m.npz")
    assert (recorded.MODEL.MODE, recorded.MODEL.NR_TYPES, recorded.MODEL.DENSE_UNITS) == ("fast", 6, (8, 4))
    again = model_config(tmp_path / "m.npz", ["MODEL.MODE=original"])
    assert (again.MODEL.MODE, again.MODEL.NR_TYPES, again.MODEL.ENCODER_UNITS) == ("original", 6, (2, 2, 2, 2))
    # no record, a checkpoint path, a missing file: nothing to apply
    write_npz(tmp_path / "plain.npz", {"conv0/W": np.ones(1, np.float32)})
    for path in ("plain.npz", "train_log/model-100", "absent.npz"):
        assert read_npz_metadata(tmp_path / path) == {}
    # a record that is not a JSON object: said, and ignored
    np.savez(tmp_path / "bad.npz", **{METADATA_KEY: np.array("[1, 2]")})
    with caplog.at_level(logging.WARNING, logger="src.model.weights_file"):
        assert read_npz_metadata(tmp_path / "bad.npz") == {}
    assert f"bad.npz: {METADATA_KEY} is not" in caplog.text


@pytest.mark.slow  # builds the shrunk network once
def test_initial_weights_are_the_same_on_every_run(micro_weights_npz):
    """The stand-in weights of the tests and the demo are seeded, so what they predict does not vary by run."""
    again = initial_weights(model_config(micro_weights_npz), nr_types=5)
    saved = read_weights(micro_weights_npz)
    assert sorted(again) == sorted(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


@pytest.mark.slow  # builds a MICRO graph
def test_head_zero_init_starts_the_chosen_heads_at_the_zero_prediction():
    """MODEL.HEAD_ZERO_INIT (a recipe option, models/README.md): those heads' 1x1 kernels start at zero, the
    others keep the published He init; the biases are zero either way."""
    from shrunk_networks import MICRO

    weights = initial_weights(config_from_args([*MICRO, "MODEL.HEAD_ZERO_INIT=('hv',)"]), nr_types=5)
    assert not weights["conv_out_hv/W"].any() and not weights["conv_out_hv/b"].any()
    assert weights["conv_out_np/W"].std() > 0.1 and weights["conv_out_tp/W"].std() > 0.1
    with pytest.raises(ValueError, match="HEAD_ZERO_INIT"):
        config_from_args(["MODEL.HEAD_ZERO_INIT=('xy',)"])


@pytest.mark.slow  # the full-size graph (shared: conftest.py)
def test_match_report_against_the_real_graph(tmp_path, hovernet_shapes):
    _imagenet_like_npz(tmp_path / "w.npz")
    loaded, missing, unexpected, mismatch = match_weights(read_weights(tmp_path / "w.npz"), hovernet_shapes)
    assert loaded == ["conv0/W", "conv0/bn/gamma", "group0/block0/conv1/W", "group0/bnlast/bn/mean/EMA"]
    assert unexpected == ["linear/W"]
    assert mismatch == [("group0/block0/conv2/W", (3, 3, 64, 32), (3, 3, 64, 64))]
    assert "np/u3/conva/W" in missing and "conv0/bn/beta" in missing
    assert "group0/block0/conv2/W" not in missing and "learning_rate" not in missing
    assert len(missing) == len(hovernet_shapes) - len(loaded) - len(mismatch)


def _tiny_graph_vars():
    """A few variables named like the encoder, plus one the files below lack."""
    with tf1.variable_scope("conv0"):
        w = tf1.get_variable("W", [7, 7, 3, 64], initializer=tf1.zeros_initializer())
        with tf1.variable_scope("bn"):
            gamma = tf1.get_variable("gamma", [64], initializer=tf1.ones_initializer())
    conv2 = tf1.get_variable("group0/block0/conv2/W", [3, 3, 64, 64], initializer=tf1.zeros_initializer())
    extra = tf1.get_variable("graph_only/W", [2], initializer=tf1.zeros_initializer())
    return {"conv0/W": w, "conv0/bn/gamma": gamma, "group0/block0/conv2/W": conv2, "graph_only/W": extra}


def test_non_strict_npz_loads_what_matches(tmp_path):
    expected = _imagenet_like_npz(tmp_path / "w.npz")
    with tf.Graph().as_default():
        variables = _tiny_graph_vars()
        init = make_session_init(str(tmp_path / "w.npz"), strict=False)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            init.init(sess)
            values = {k: sess.run(v) for k, v in variables.items()}
    np.testing.assert_array_equal(values["conv0/W"], expected["conv0/W"])
    np.testing.assert_array_equal(values["conv0/bn/gamma"], expected["conv0/bn/gamma"])
    np.testing.assert_array_equal(values["group0/block0/conv2/W"], 0.0)  # wrong shape: not loaded
    assert init.match.loaded == ["conv0/W", "conv0/bn/gamma"]
    assert init.match.missing == ["graph_only/W"]
    assert init.match.unexpected == ["group0/block0/conv1/W", "group0/bnlast/bn/mean/EMA", "linear/W"]


def test_strict_npz_raises_listing_the_problems(tmp_path):
    _imagenet_like_npz(tmp_path / "w.npz")
    with tf.Graph().as_default():
        _tiny_graph_vars()
        init = make_session_init(str(tmp_path / "w.npz"), strict=True)
        with tf1.Session() as sess, pytest.raises(WeightsMismatchError) as err:
            init.init(sess)
    message = str(err.value)
    for name in ("graph_only/W", "linear/W", "group0/block0/conv2/W", "(3, 3, 64, 32)"):
        assert name in message
    assert "Adam" not in message and "learning_rate" not in message


def _save_tiny_checkpoint(directory):
    """Save the tiny graph (values 0..n) with an Adam slot and global_step, as ModelSaver would."""
    with tf.Graph().as_default():
        variables = _tiny_graph_vars()
        tf1.get_variable("conv0/W/Adam", [7, 7, 3, 64], initializer=tf1.zeros_initializer())
        tf1.train.get_or_create_global_step()
        assigns = [v.assign(tf.reshape(tf.range(np.prod(v.shape), dtype=tf.float32), v.shape))
                   for v in variables.values()]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(assigns)
            expected = {k: sess.run(v) for k, v in variables.items()}
            prefix = tf1.train.Saver().save(sess, str(directory / "model"), global_step=7)
    return prefix, expected


def test_checkpoint_round_trip(tmp_path):
    prefix, expected = _save_tiny_checkpoint(tmp_path)
    assert checkpoint_prefix(tmp_path) == prefix == checkpoint_prefix(prefix + ".index")
    for source in (tmp_path, prefix, prefix + ".index", tmp_path / "checkpoint"):
        weights = read_weights(source)
        assert set(weights) == set(expected) | {"conv0/W/Adam", "global_step"}
        for name, value in expected.items():
            np.testing.assert_array_equal(weights[name], value)

    with tf.Graph().as_default():
        variables = _tiny_graph_vars()
        init = make_session_init(str(tmp_path), strict=True)  # same variables: strict passes
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            init.init(sess)
            for name, var in variables.items():
                np.testing.assert_array_equal(sess.run(var), expected[name])
    assert init.match.unexpected == [] and init.match.missing == []


def test_checkpoint_strict_mismatch_and_missing_path(tmp_path):
    prefix, _ = _save_tiny_checkpoint(tmp_path)
    with tf.Graph().as_default():
        tf1.get_variable("conv0/W", [7, 7, 3, 32])  # wrong shape
        tf1.get_variable("decoder_only/W", [3])  # not in the file
        init = make_session_init(prefix, strict=True)
        with tf1.Session() as sess, pytest.raises(WeightsMismatchError) as err:
            init.init(sess)
    message = str(err.value)
    assert "conv0/W" in message and "decoder_only/W" in message and "graph_only/W" in message
    with pytest.raises(FileNotFoundError):
        checkpoint_prefix(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        make_session_init(str(tmp_path / "missing.npz"), strict=False)


def test_checkpoint_non_strict_skips_mismatched_shapes(tmp_path):
    prefix, expected = _save_tiny_checkpoint(tmp_path)
    with tf.Graph().as_default():
        wrong = tf1.get_variable("conv0/W", [7, 7, 3, 32], initializer=tf1.zeros_initializer())
        with tf1.variable_scope("conv0/bn"):
            gamma = tf1.get_variable("gamma", [64], initializer=tf1.ones_initializer())
        init = make_session_init(prefix, strict=False)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            init.init(sess)
            np.testing.assert_array_equal(sess.run(gamma), expected["conv0/bn/gamma"])
            np.testing.assert_array_equal(sess.run(wrong), 0.0)
    assert init.match.shape_mismatch == [("conv0/W", (7, 7, 3, 64), (7, 7, 3, 32))]


@pytest.mark.parametrize("content", [b"not a zip at all", "pickle"])
def test_not_a_weights_file_never_suggests_pickle(tmp_path, content):
    """Issue 13.7: a file that is no .npz of arrays is 'not a weights file', with no allow_pickle hint."""
    from src.model.weights import read_weight_shapes

    path = tmp_path / "model.npz"
    if content == "pickle":
        np.savez(path, a=np.array([{"x": 1}], dtype=object))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_weight_shapes(path)
    assert "not a weights file (.npz of arrays or a checkpoint)" in str(info.value)
    assert "pickle" not in str(info.value).lower()
