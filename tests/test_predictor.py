"""src/infer/predictor.py: the tensor-name contract it checks and its session settings (its forward pass is tested
through infer.py in tests/test_infer.py and on the bundled model in tests/test_bundle.py)."""
from pathlib import Path

import pytest
from shrunk_networks import MICRO

import src.infer.predictor
import src.model.graph
from src.config import config_from_args
from src.infer.predictor import HoVerNetPredictor, session_config

# Any weights file names the number of types; the graph check fails before a single weight is loaded, so the
# network can be the smallest one (tests/shrunk_networks.py).
WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "small-consep.npz"


def test_predictor_refuses_a_graph_without_the_declared_tensors(monkeypatch):
    """A declared output the graph does not build fails in check_inference_tensors, naming it, before any
    tensor lookup inside tensorpack (whose error names one tensor without saying why it was expected)."""
    monkeypatch.setattr(src.model.graph, "INFERENCE_OUTPUTS", ["np_prob", "hv", "tp_probabilities"])
    configs = []
    monkeypatch.setattr(src.infer.predictor, "session_config", lambda: configs.append(session_config()) or configs[-1])
    with pytest.raises(KeyError, match=r"graph lacks the inference tensors \['tp_probabilities'\] of a HoVer-Net "
                                       r"with 5 type channels"):
        HoVerNetPredictor(WEIGHTS, config_from_args(["MODEL.MODE=fast", *MICRO]))
    assert len(configs) == 1  # the predictor's session is made with session_config()


def test_predictor_sessions_use_tensorflows_thread_count():
    """Not tensorpack's one thread per operation, which ran a CPU forward pass on one core."""
    config = session_config()
    assert config.intra_op_parallelism_threads == 0  # every core, or $TF_NUM_INTRAOP_THREADS
    assert config.allow_soft_placement and config.gpu_options.allow_growth  # tensorpack's other defaults kept


def test_predictor_from_an_opened_model_does_not_read_the_file_again(micro_weights_npz, tmp_path):
    """open_model reads an .npz once (issue 21.1): the predictor restores the arrays it holds, so the same maps come
    out after the file is gone."""
    import numpy as np

    from src.model.weights_file import open_model

    copy = tmp_path / "copy.npz"
    copy.write_bytes(micro_weights_npz.read_bytes())
    weights = open_model(copy)
    copy.unlink()
    predictor = HoVerNetPredictor(weights)
    assert predictor.nr_types == 5
    windows = np.random.default_rng(0).integers(0, 255, (2, weights.cfg.MODEL.INPUT_SHAPE,
                                                        weights.cfg.MODEL.INPUT_SHAPE, 3)).astype(np.float32)
    reference = HoVerNetPredictor(micro_weights_npz, weights.cfg)
    np.testing.assert_array_equal(predictor(windows), reference(windows))
    with pytest.raises(TypeError, match="needs its cfg"):
        HoVerNetPredictor(micro_weights_npz)
