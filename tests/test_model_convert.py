"""src/model/convert.py: a released-style PyTorch state dict back to this project's weights, exactly.

The state dicts are built here from this project's own random weights through the inverse of the published
name table (TensorFlow -> PyTorch names, HWIO -> OIHW kernels), so the test does not need torch nor the
authors' files. Widths are shrunk (the 'small' preset's) but the depth is the published one, because the
table names every unit: the name set does not depend on the widths. Two graph builds in all (the
converter caches the shapes of a network it has built).
"""
import csv
import json
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils import sesscreate
from tensorpack.tfutils.tower import PredictTowerContext

import infer
from src.config import config_from_args
from src.model import convert
from src.model.graph import INFERENCE_INPUTS, HoVerNet, inference_output_names
from src.model.weights import match_weights, read_weights
from src.model.weights_file import model_config, read_npz_metadata

pytestmark = pytest.mark.slow
tf1 = tf.compat.v1

# the 'small' preset's widths at the published depth (every name of the table exists)
SHRUNK = ["MODEL.PRESET='small'", "MODEL.ENCODER_UNITS=(3, 4, 6, 3)", "MODEL.DENSE_UNITS=(8, 4)"]
DECODER_KERNEL = re.compile(r"/u[123]/conva/W$|/dense/blk/\d+/conv2/W$")


def _inverse_table():
    """{TensorFlow name without ':0': PyTorch name}, read straight from the shipped CSV."""
    with open(convert.NAME_TABLE, newline="", encoding="utf-8") as handle:
        return {row["Tensorflow"].removesuffix(":0"): row["Pytorch"] for row in csv.DictReader(handle)}


def _random_weights(shapes, seed):
    """Random values for every variable; variances positive so that BN stays finite."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        value = rng.normal(0.0, 0.1, shape).astype(np.float32)
        out[name] = np.abs(value) + 0.5 if name.endswith("variance/EMA") else value
    return out


def _to_pytorch(weights):
    """What the authors' converter produced: PyTorch names under DataParallel's 'module.', OIHW kernels,
    plus the up-sampling constant and a BatchNorm step counter that have no TensorFlow variable."""
    inverse = _inverse_table()
    state = {f"module.{inverse[name]}": value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
             for name, value in weights.items()}
    state["module.upsample2x.unpool_mat"] = np.ones((2, 2), np.float32)
    state["module.conv0.bn.num_batches_tracked"] = np.array(7)
    return state


@pytest.fixture(scope="module")
def fast_graph():
    """The fast-mode inference graph (shrunk widths, 6 type channels as PanNuke), its variables and a session."""
    cfg = config_from_args(SHRUNK + ["MODEL.MODE='fast'", "MODEL.DATA_FORMAT='NHWC'"])
    graph = tf.Graph()
    with graph.as_default(), PredictTowerContext(""):
        size = cfg.MODEL.INPUT_SHAPE
        HoVerNet(nr_types=6, cfg=cfg).build_outputs(tf1.placeholder(tf.float32, [None, size, size, 3],
                                                                    INFERENCE_INPUTS[0]))
        variables = {v.op.name: v for v in tf1.global_variables()}
    sess = tf1.Session(graph=graph, config=sesscreate.get_default_sess_config())  # as a predictor's (conftest.py)
    yield cfg, graph, variables, sess
    sess.close()


def _forward(graph, variables, sess, weights, images):
    # Every variable in one session run: one Variable.load run per variable (667) took minutes on this CPU.
    with graph.as_default():
        feeds = {name: tf1.placeholder(var.dtype.base_dtype, var.shape) for name, var in variables.items()}
        load = tf.group(*[var.assign(feeds[name]) for name, var in variables.items()])
    sess.run(load, {feeds[name]: weights[name] for name in variables})
    return sess.run([f"{n}:0" for n in inference_output_names(6)], {f"{INFERENCE_INPUTS[0]}:0": images})


def test_table_covers_every_variable_of_the_graph(fast_graph):
    _, _, variables, _ = fast_graph
    assert set(_inverse_table()) == set(variables)  # names do not depend on mode or widths
    assert len(variables) == 667  # the 668-line CSV less its header


def test_fast_round_trip_gives_identical_outputs(fast_graph, tmp_path):
    cfg, graph, variables, sess = fast_graph
    shapes = {name: tuple(var.shape.as_list()) for name, var in variables.items()}
    weights = _random_weights(shapes, seed=0)
    np.savez(tmp_path / "state.npz", **_to_pytorch(weights))

    assert convert.main([str(tmp_path / "state.npz"), str(tmp_path / "tf.npz"), "--no-check",
                         "--config", *SHRUNK]) == 0
    converted = read_weights(tmp_path / "tf.npz")
    assert sorted(converted) == sorted(weights)
    for name in weights:
        np.testing.assert_array_equal(converted[name], weights[name], err_msg=name)
    match = match_weights(converted, shapes)  # what the strict loader checks
    assert not (match.missing or match.unexpected or match.shape_mismatch)

    record = read_npz_metadata(tmp_path / "tf.npz")["MODEL"]
    assert {"MODE": "fast", "NR_TYPES": 6, "PRESET": "small", "ENCODER_UNITS": [3, 4, 6, 3],
            "DENSE_UNITS": [8, 4]}.items() <= record.items()
    recorded = model_config(tmp_path / "tf.npz")
    assert (recorded.MODEL.INPUT_SHAPE, recorded.MODEL.OUTPUT_SHAPE) == (256, 164)

    images = np.random.default_rng(1).uniform(0, 255, (1, 256, 256, 3)).astype(np.float32)
    before = _forward(graph, variables, sess, weights, images)
    after = _forward(graph, variables, sess, converted, images)
    assert before[0].shape == (1, 164, 164, 2) and before[2].shape == (1, 164, 164, 6)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_original_mode_without_types_checked_against_its_graph(fast_graph, tmp_path, capsys, monkeypatch):
    """Original mode (5x5 decoder kernels), no tp branch (as the Kumar/CPM17 checkpoints): the CLI's strict
    check builds the original graph and every variable must be there with its shape. Two checks of the same
    network build it once."""
    builds = []
    real_build = HoVerNet.build_outputs
    monkeypatch.setattr(HoVerNet, "build_outputs", lambda self, images: builds.append(1) or real_build(self, images))
    monkeypatch.setattr(convert, "_GRAPH_SHAPES", {})
    _, _, variables, _ = fast_graph
    shapes = {}
    for name, var in variables.items():
        if name.split("/")[0] in ("tp", "preact_out_tp", "conv_out_tp"):
            continue
        shape = tuple(var.shape.as_list())
        shapes[name] = (5, 5) + shape[2:] if DECODER_KERNEL.search(name) else shape  # 3x3 fast -> 5x5
    np.savez(tmp_path / "state.npz", **_to_pytorch(_random_weights(shapes, seed=2)))
    assert convert.main([str(tmp_path / "state.npz"), str(tmp_path / "tf.npz"), "--config", *SHRUNK]) == 0
    assert "mode original, no type branch" in capsys.readouterr().out
    record = read_npz_metadata(tmp_path / "tf.npz")["MODEL"]
    assert record["MODE"] == "original" and record["NR_TYPES"] is None
    # the check catches a kernel of the wrong size, naming it
    shapes["np/u2/conva/W"] = (5, 5, 64, 8)
    np.savez(tmp_path / "bad.npz", **_to_pytorch(_random_weights(shapes, seed=2)))
    assert convert.main([str(tmp_path / "bad.npz"), str(tmp_path / "bad_tf.npz"), "--config", *SHRUNK]) == 2
    assert "np/u2/conva/W" in capsys.readouterr().err
    assert not (tmp_path / "bad_tf.npz").exists()
    assert len(builds) == 1


def test_infer_picks_up_the_fast_geometry_from_the_npz(fast_graph, tmp_path, monkeypatch):
    """infer.py with a converted fast-mode .npz and no --config: windows of 256, outputs of 164, PanNuke's type
    names. The predictor is a recording stand-in: the real one on a file's recorded network is run by
    tests/test_bundle.py and tests/test_weights_file.py, and this file's network by the round trip above."""
    import src.infer.predictor

    _, _, variables, _ = fast_graph
    weights = _random_weights({n: tuple(v.shape.as_list()) for n, v in variables.items()}, seed=3)
    np.savez(tmp_path / "state.npz", **_to_pytorch(weights))
    assert convert.main([str(tmp_path / "state.npz"), str(tmp_path / "tf.npz"), "--no-check",
                         "--config", *SHRUNK]) == 0
    seen = []

    class Recording:
        def __init__(self, weights):
            cfg = weights.cfg
            seen.append((weights.path, cfg.MODEL.MODE, cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE))
            self.nr_types = cfg.MODEL.NR_TYPES

        def __call__(self, batch):
            assert batch.shape[1:] == (256, 256, 3)
            maps = np.zeros((len(batch), 164, 164, 3 + self.nr_types), np.float32)
            maps[..., 3] = 1.0
            return maps

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", Recording)
    folder = tmp_path / "tiles"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    types = "misc/type_info/pannuke.json"
    assert infer.main(["--input", str(folder), "--output", str(tmp_path / "out"), "--model",
                       str(tmp_path / "tf.npz"), "--types", types, "--quiet", "--formats", "mat,json"]) == 0
    assert seen == [(str(tmp_path / "tf.npz"), "fast", 256, 164)]
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    assert record["image_shape"] == [40, 50]
    assert record["type_info"] == json.loads(open(types, encoding="utf-8").read())


def test_missing_and_extra_names_are_listed():
    table = convert.read_name_table()
    state = {name: np.zeros((1, 1, 1, 1), np.float32) for name in table}
    del state["decoder.hv.u2.convf.weight"]
    state["decoder.np.u4.conva.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dict(state, table)
    assert "1 missing: decoder.hv.u2.convf.weight" in str(err.value)
    assert "1 extra: decoder.np.u4.conva.weight" in str(err.value)


def test_mode_and_type_detection():
    fast = {name: np.zeros((8, 8, 3, 3)) for name in convert.MODE_KERNELS}
    assert convert.detect_mode(fast) == "fast"
    assert convert.detect_mode({k: np.zeros((8, 8, 5, 5)) for k in convert.MODE_KERNELS}) == "original"
    fast["decoder.np.u1.conva.weight"] = np.zeros((8, 8, 5, 5))
    with pytest.raises(convert.ConversionError, match="no single mode"):
        convert.detect_mode(fast)
    assert convert.detect_nr_types({convert.TP_HEAD: np.zeros((6, 64, 1, 1))}) == 6
    assert convert.detect_nr_types({}) is None
    cleaned = convert.clean_state_dict({"desc.module.conv0./.weight": np.ones(1), "upsample2x.unpool_mat": 1})
    assert list(cleaned) == ["conv0./.weight"]


def test_tar_without_torch_is_a_clear_error(tmp_path, capsys):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed")
    except ImportError:
        pass
    (tmp_path / "model.tar").write_bytes(b"not read")
    assert convert.main([str(tmp_path / "model.tar"), str(tmp_path / "out.npz")]) == 2
    assert "requirements-convert.txt" in capsys.readouterr().err
