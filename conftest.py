"""Repository-root conftest: makes the packages importable from the root and prepares TensorFlow.

``import src`` sets TF_USE_LEGACY_KERAS before any test imports TensorFlow (see src/__init__.py).
Tests marked ``gpu`` are skipped unless TensorFlow sees a GPU.
"""
import pytest

import src  # noqa: F401


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a GPU visible to TensorFlow")
        for item in gpu_items:
            item.add_marker(skip)


# --- Networks shared across test modules: their builds dominate the suite's time. A graph build costs seconds of
# Python on this CPU whatever the widths (the published depth has ~400 variables), so the full-size graph is built
# once per session and shared by every test that needs its variable names and shapes, and the shrunk network that
# stands in for a trained model is written once.

# The published geometry (270 -> 80, dense units (8, 4), so the same crops and shapes) with every width
# shrunk: group outputs (16, 16, 32, 64); the decoder sums need conv_bot = group2 output, 2*u3 = group1
# output, 2*u2 = group0 output. Fast to build, initialise and run; the full size is only for tests of it.
TINY_OVERRIDES = ("MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)",
                  "MODEL.BOTTLENECK_CHANNELS=32", "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_BOTTLENECK=8",
                  "MODEL.DENSE_GROWTH=4")


@pytest.fixture(scope="session")
def full_train_graph():
    """The published network at full size (54.7M parameters): nr_types=5, training tower, NHWC, in its own
    graph, built once per session. Returns (graph, model, cost); read-only for its users (build nothing in it)."""
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext

    from src.config import config_from_args
    from src.model.graph import HoVerNet

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        model = HoVerNet(nr_types=5, cfg=config_from_args(["MODEL.DATA_FORMAT=NHWC"]))
        placeholders = [tf1.placeholder(s.dtype, s.shape, s.name) for s in model.inputs()]
        with TowerContext("", is_training=True):
            cost = model.build_graph(*placeholders)
    return graph, model, cost


@pytest.fixture(scope="session")
def tiny_weights_npz(tmp_path_factory):
    """Random initial weights of the shrunk network (nr_types=5) as an .npz with its MODEL record, so that
    infer.py rebuilds the same network from the file alone. Stands in for a trained model."""
    from src.config import config_from_args
    from src.model.weights import save_initial_weights

    path = tmp_path_factory.mktemp("tiny_model") / "random.npz"
    save_initial_weights(path, config_from_args(list(TINY_OVERRIDES)), nr_types=5)
    return path


@pytest.fixture(scope="session")
def _predictor_cache():
    return {}


@pytest.fixture
def shared_predictor(monkeypatch, _predictor_cache):
    """Makes ``src.predictor.HoVerNetPredictor`` (what infer.py builds) return one real predictor per weights
    file and network config for the whole session: each build costs seconds, and the tests that use this
    are about what happens around the network, not about loading it. Keyed by the file's path, size and
    modification time and the MODEL config, so a changed file or config still gets a fresh build. Returns
    the caching factory, ``(model_path, cfg) -> predictor``."""
    import os

    import src.predictor

    real = src.predictor.HoVerNetPredictor

    def factory(model_path, cfg):
        stat = os.stat(model_path)
        key = (os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns, repr(sorted(cfg.MODEL.items())))
        if key not in _predictor_cache:
            _predictor_cache[key] = real(model_path, cfg)
        return _predictor_cache[key]

    monkeypatch.setattr(src.predictor, "HoVerNetPredictor", factory)
    return factory
