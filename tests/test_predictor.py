"""src/predictor.py: the tensor-name contract it checks (its forward pass is tested through infer.py in
tests/test_infer.py and on the bundled model in tests/test_bundle.py)."""
from pathlib import Path

import pytest
from shrunk_networks import MICRO

import src.model.graph
from src.config import config_from_args
from src.predictor import HoVerNetPredictor

# Any weights file names the number of types; the graph check fails before a single weight is loaded, so the
# network can be the smallest one (tests/shrunk_networks.py).
WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "small-consep.npz"


def test_predictor_refuses_a_graph_without_the_declared_tensors(monkeypatch):
    """A declared output the graph does not build fails in check_inference_tensors, naming it, before any
    tensor lookup inside tensorpack (whose error names one tensor without saying why it was expected)."""
    monkeypatch.setattr(src.model.graph, "INFERENCE_OUTPUTS", ["np_prob", "hv", "tp_probabilities"])
    with pytest.raises(KeyError, match=r"graph lacks the inference tensors \['tp_probabilities'\] of a HoVer-Net "
                                       r"with 5 type channels"):
        HoVerNetPredictor(WEIGHTS, config_from_args(["MODEL.MODE=fast", *MICRO]))
