"""Repository-root conftest: makes the packages importable from the root and prepares TensorFlow.

``import src`` sets TF_USE_LEGACY_KERAS before any test imports TensorFlow (see src/__init__.py).
Tests marked ``gpu`` are skipped unless TensorFlow sees a GPU.
"""
import os

import pytest
from shrunk_networks import MICRO

import src  # noqa: F401

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per operation for TensorFlow and XLA in each worker (and each process it starts): `make test`
    # runs as many workers as cores, and each runtime's default of a thread per core made them wait on each
    # other's threads. (Not one inter-op thread: tensorpack's input queue would wait forever on the training.)
    for _name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    # XLA's optimisation level 0 compiles the tests' training step in 7.3 s instead of 12.2 s and costs about a
    # tenth of each step's time. (Only flags: XLA ignored every flag after a bare 'intra_op_parallelism_threads=1'.)
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0")


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a GPU visible to TensorFlow")
        for item in gpu_items:
            item.add_marker(skip)
    # The longest work units first, the quick ones after them in collection order: xdist hands out units in this
    # order, so that the short ones fill the end and the workers finish together.
    rank = {unit: i for i, unit in enumerate(LONGEST_UNITS)}
    items.sort(key=lambda item: rank.get(_work_unit(item.nodeid), len(rank)))


# --- pytest-xdist (`make test` runs two workers). A worker runs whole work units: a test module, so that its
# shared graphs are built once (xdist's --dist loadfile), except for modules that share a session's expensive
# fixture, which form one unit: the two XLA modules (one export and its compiled executables, which otherwise
# one worker waited for while the other made them) and the two users of the full-size graph.
SHARED_UNITS = {"tests/test_export.py": "xla", "tests/test_xla_runner.py": "xla",
                "tests/test_graph.py": "full-size graph", "tests/test_weights.py": "full-size graph"}
# Units by their time on 2 cores (pytest --durations, 2026-11): about 75, 60, 50, 35 and 25 s; the rest take
# under 15 s each. A stale list only costs balance.
LONGEST_UNITS = ("xla", "tests/test_trainer.py", "full-size graph", "tests/test_slides.py",
                 "tests/test_model_convert.py")


def _work_unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return SHARED_UNITS.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the collection's order (longest first), not xdist's by count
    return WorkUnits(config, log)


# --- Networks shared across test modules: their builds dominate the suite's time. A graph build costs seconds of
# Python on this CPU whatever the widths (the published depth has ~400 variables), so the full-size graph is built
# once per session and shared by every test that needs its variable names and shapes, and the shrunk network that
# stands in for a trained model is written once.


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
def micro_weights_npz(tmp_path_factory):
    """Random initial weights of the MICRO network (tests/shrunk_networks.py; nr_types=5) as an .npz with its
    MODEL record, so that infer.py rebuilds the same network from the file alone. Stands in for a trained model."""
    from src.config import config_from_args
    from src.model.weights import save_initial_weights

    path = tmp_path_factory.mktemp("micro_model") / "random.npz"
    save_initial_weights(path, config_from_args(list(MICRO)), nr_types=5)
    return path


@pytest.fixture(scope="session")
def _predictor_cache():
    return {}


@pytest.fixture
def shared_predictor(monkeypatch, _predictor_cache):
    """Makes ``src.infer.predictor.HoVerNetPredictor`` (what infer.py builds) return one real predictor per weights
    file and network config for the whole session: each build costs seconds, and the tests that use this
    are about what happens around the network, not about loading it. Keyed by the file's path, size and
    modification time and the MODEL config, so a changed file or config still gets a fresh build. Returns
    the caching factory, ``(weights, cfg=None) -> predictor`` (HoVerNetPredictor's signature)."""
    import os

    import src.infer.predictor

    real = src.infer.predictor.HoVerNetPredictor

    def factory(weights, cfg=None):
        cfg = weights.cfg if cfg is None else cfg
        model_path = getattr(weights, "path", weights)
        stat = os.stat(model_path)
        key = (os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns, repr(sorted(cfg.MODEL.items())))
        if key not in _predictor_cache:
            _predictor_cache[key] = real(weights, cfg)
        return _predictor_cache[key]

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", factory)
    return factory


@pytest.fixture(scope="session", autouse=True)
def _sessions_without_grappler():
    """The sessions tensorpack creates in the test processes (trainers, predictors; tests that open their own
    take ``sesscreate.get_default_sess_config()``) skip grappler, TensorFlow's graph optimiser. The suite's
    small networks run a few steps each, and optimising each graph cost more than it saved: the shrunk
    network's first training step took 1.9 s instead of 0.6 s, its first inference run 1.0 s instead of
    0.14 s. Real runs keep it (on the full network it makes a CPU forward pass about 10% faster). Processes the
    tests start (slide workers, the XLA export) are not affected. (TensorFlow's global switch,
    ``tf.config.optimizer.set_experimental_options``, made the training tests slower instead.)"""
    from tensorpack.tfutils import sesscreate

    default = sesscreate.get_default_sess_config

    def config(mem_fraction=0.99):
        proto = default(mem_fraction)
        proto.graph_options.rewrite_options.disable_meta_optimizer = True
        return proto

    sesscreate.get_default_sess_config = config
    yield
    sesscreate.get_default_sess_config = default


@pytest.fixture(autouse=True)
def _sigterm_handler_restored():
    """The command lines install a SIGTERM handler for their process (misc.proc.stop_on_sigterm); tests call their
    main() inside the test process, whose own handler must come back afterwards."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)
