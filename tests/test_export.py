"""XLA export (src/model/export.py): the artifacts compute what TensorFlow/tensorpack compute.

Shrunk network (``tests/xla_fixtures.py``), exported once per session; the runner side runs them with jax.
"""
import numpy as np
import pytest
from xla_fixtures import BATCH, CROP, XLA_TINY, disc_patch, exported

pytestmark = [pytest.mark.slow, pytest.mark.xla]


@pytest.fixture(scope="session")
def xla_artifacts(tmp_path_factory):
    """Folder holding the tiny network's forward and phase-2 training step artifacts (batch 2)."""
    return exported(tmp_path_factory)


def _rel(a, b) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def test_manifest_lists_arguments_outputs_and_aliases(xla_artifacts):
    from xla_runner.artifacts import Artifacts

    artifacts = Artifacts(xla_artifacts)
    manifest = artifacts.manifest
    assert manifest["tensorflow"].startswith("2.")
    assert (artifacts.input_shape, artifacts.output_shape, artifacts.nr_types) == (270, 216, 5)
    forward = artifacts.find("forward", BATCH)
    assert forward["inputs"][0] == {"name": "images", "shape": [2, 270, 270, 3], "dtype": "float32", "role": "data"}
    names = {s["name"] for s in forward["inputs"]}
    assert {"conv0/W", "conv0/bn/mean/EMA", "conv_out_tp/b", "np/u3/dense/blk/0/conv2/W"} <= names
    assert [s["name"] for s in forward["outputs"]] == ["np_prob", "hv", "tp_prob"]
    assert forward["outputs"][2]["shape"] == [2, 216, 216, 5]

    step = artifacts.find("train_step", phase=2)
    assert [s["name"] for s in step["inputs"][:4]] == ["images", "np_target", "hv_target", "tp_target"]
    metrics = [s["name"] for s in step["outputs"] if s["role"] == "metric"]
    assert metrics == ["loss_hv_mse", "loss_hv_msge", "loss_np_ce", "loss_np_dice", "loss_tp_ce", "loss_tp_dice",
                       "overall_cost", "np_dice"]
    inputs = step["inputs"]
    updated = [s for s in step["outputs"] if s["role"] == "state"]
    for out in updated:  # every written variable replaces the argument of the same name
        assert inputs[out["aliases_input"]]["name"] == out["name"]
        assert inputs[out["aliases_input"]]["shape"] == out["shape"]
    written = {s["name"] for s in updated}
    assert {"conv0/W", "conv0/W/Adam", "conv0/W/Adam_1", "beta1_power", "conv0/bn/mean/EMA"} <= written
    assert "learning_rate" not in written and "learning_rate" in {s["name"] for s in inputs}
    assert not any(s["name"].startswith("EMA/") for s in inputs)  # summaries are not part of the step


def test_export_without_eager_mode_is_refused_with_the_remedy(monkeypatch, tmp_path):
    """After tensorpack training in the same process (eager mode off) the export would fail deep inside
    TensorFlow; it says what to do instead, before it writes anything."""
    import tensorflow as tf

    from src.model.export import export_all

    monkeypatch.setattr(tf, "executing_eagerly", lambda: False)
    with pytest.raises(RuntimeError, match=r"process of its own \(python -m src.model.export\)"):
        export_all(tmp_path / "out", XLA_TINY, batch_sizes=(BATCH,), phases=())
    assert not (tmp_path / "out").exists()


def test_forward_matches_tensorflow_predictor(xla_artifacts, tmp_path):
    from misc.io import read_image_rgb
    from src.config import config_from_args
    from src.infer.predictor import HoVerNetPredictor
    from src.infer.windows import predict_tile
    from src.model.weights_file import write_npz
    from xla_runner.artifacts import Artifacts, XlaPredictor, initial_state

    artifacts = Artifacts(xla_artifacts)
    weights, missing = initial_state(artifacts.find("forward", BATCH), seed=3)
    # numpy initialisers cover the whole network, and TensorFlow's strict loader accepts the file
    assert missing and len(missing) == len(weights)
    rng = np.random.default_rng(1)
    for name in weights:  # non-trivial BatchNorm statistics, so inference-mode BatchNorm is exercised
        if name.endswith("/mean/EMA"):
            weights[name] = rng.normal(0, 0.1, weights[name].shape).astype(np.float32)
        elif name.endswith("/variance/EMA"):
            weights[name] = rng.uniform(0.5, 2.0, weights[name].shape).astype(np.float32)
    write_npz(tmp_path / "w.npz", weights)
    image = read_image_rgb(CROP)
    geometry = {"batch_size": BATCH, "input_shape": artifacts.input_shape, "output_shape": artifacts.output_shape}
    tf_maps = predict_tile(image, HoVerNetPredictor(tmp_path / "w.npz", config_from_args(XLA_TINY)), **geometry)
    xla_maps = predict_tile(image, XlaPredictor(artifacts, tmp_path / "w.npz"), **geometry)
    assert tf_maps.shape == xla_maps.shape == (256, 256, 8)
    np.testing.assert_array_equal(xla_maps[..., 0] > 0.5, tf_maps[..., 0] > 0.5)
    np.testing.assert_array_equal(np.argmax(xla_maps[..., 3:], -1), np.argmax(tf_maps[..., 3:], -1))
    assert _rel(xla_maps[..., 1:3], tf_maps[..., 1:3]) < 1e-4
    assert _rel(xla_maps[..., 0], tf_maps[..., 0]) < 1e-4


def _batch(rng, size=BATCH):
    """A training batch built by the project's mapping (validation crop) from synthetic disc patches."""
    from dataset.patches import TrainingDataPreprocessor
    from src.config import config_from_args

    pre = TrainingDataPreprocessor(config_from_args(XLA_TINY), is_training=False)
    points = []
    for _ in range(size):
        image, inst, types = disc_patch(rng, 270, 60)
        points.append(pre.process(image, np.stack([inst, types], -1), None))
    return [np.stack(c) for c in zip(*points, strict=True)]


def _tensorpack_step(state: dict, batch, lr: float):
    """One step of tensorpack's SimpleTrainer in a TensorFlow session (TF kernels, no XLA), with UPDATE_OPS
    run alongside as RunUpdateOps does; returns (metrics, every variable after the step)."""
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext  # noqa: F401  (tensorpack first, as train.py)

    from src.config import config_from_args
    from src.model.export import build_train_step
    from src.model.graph import HoVerNet

    tf1 = tf.compat.v1
    cfg = config_from_args(XLA_TINY + ["MODEL.DATA_FORMAT=NHWC"])
    graph = tf.Graph()
    with graph.as_default():
        model = HoVerNet(nr_types=5, freeze=False, cfg=cfg)
        inputs = [tf1.placeholder(s.dtype, [len(batch[0])] + s.shape.as_list()[1:], s.name) for s in model.inputs()]
        train_op, updates, tensors = build_train_step(model, inputs)
        variables = {v.name[:-2]: v for v in tf1.global_variables()}
        values = dict(state, learning_rate=np.float32(lr))
        # one assign op per variable, all run at once (Variable.load adds an op and a run per variable: minutes)
        feeds = {n: tf1.placeholder(variables[n].dtype.base_dtype, variables[n].shape) for n in values}
        assign = tf.group(*(variables[n].assign(p) for n, p in feeds.items()))
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(assign, {feeds[n]: v for n, v in values.items()})
            results = sess.run([train_op, updates, tensors], dict(zip(inputs, batch, strict=True)))[2]
            after = sess.run({n: v for n, v in variables.items() if n in state})
    return results, after


def test_train_step_matches_tensorpack(xla_artifacts):
    from xla_runner.artifacts import Artifacts, initial_state
    from xla_runner.train import StepRunner

    artifacts = Artifacts(xla_artifacts)
    entry = artifacts.find("train_step", phase=2)
    state, _ = initial_state(entry, seed=5)
    batch = _batch(np.random.default_rng(2))
    ref_metrics, ref_state = _tensorpack_step(state, batch, 1e-4)
    runner = StepRunner(artifacts, entry, state)
    metrics = runner.step(batch, 1e-4)
    after = runner.host_state()
    assert set(metrics) == set(ref_metrics)
    for name, value in ref_metrics.items():
        # np_dice counts argmax pixels: a pixel whose two logits tie to float rounding may flip, and one flip
        # moves it by ~3e-5 here; the losses are smooth and agree to 1e-4 of their value
        tolerance = 1e-3 if name == "np_dice" else 1e-4 * max(abs(value), 1e-6)
        assert abs(metrics[name] - value) <= tolerance, (name, metrics[name], value)
    stats = [n for n in ref_state if n.endswith(("/mean/EMA", "/variance/EMA"))]
    assert len(stats) > 50
    for name in stats:
        # A moving mean is compared on the scale of its layer's activations (the square root of the moving
        # variance): a batch mean near zero of activations near 1 keeps the float32 rounding of the
        # activations, which moved the reference by up to 1.6e-4 of the largest mean from one process to the next.
        if name.endswith("/mean/EMA"):
            scale = np.sqrt(ref_state[name.replace("/mean/EMA", "/variance/EMA")])
            assert np.max(np.abs(after[name] - ref_state[name]) / scale) < 1e-4, name
        else:
            assert _rel(after[name], ref_state[name]) < 1e-4, name
        assert not np.array_equal(after[name], state[name]), name  # the step did update them
    for name in ("beta1_power", "beta2_power"):
        assert after[name] == pytest.approx(ref_state[name], rel=1e-6)
    # weights moved by the same Adam step (about lr each); sign flips of near-zero gradients aside
    moved = [n for n in ref_state if n.endswith("/W")]
    for name in moved:
        assert np.max(np.abs(after[name] - ref_state[name])) <= 2.5e-4, name
    assert np.mean([np.mean(np.abs(after[n] - ref_state[n]) < 1e-6) for n in moved]) > 0.95
