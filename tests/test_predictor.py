"""src/predictor.py: the tensor-name contract it checks (its forward pass is tested through infer.py in
tests/test_infer.py and on the bundled model in tests/test_bundle.py)."""
from pathlib import Path

import pytest

import src.model.graph
from src.config import config_from_args
from src.predictor import HoVerNetPredictor

# Any weights file names the number of types; the graph check fails before a single weight is loaded, so the
# network can be the smallest one: one unit per group and per dense block.
WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "small-consep.npz"
TINY = ["MODEL.MODE=fast", "MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)",
        "MODEL.BOTTLENECK_CHANNELS=32", "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_UNITS=(1,1)",
        "MODEL.DENSE_BOTTLENECK=8", "MODEL.DENSE_GROWTH=4", "MODEL.DENSE_SPLIT=1"]


def test_predictor_refuses_a_graph_without_the_declared_tensors(monkeypatch):
    """A declared output the graph does not build fails in check_inference_tensors, naming it, before any
    tensor lookup inside tensorpack (whose error names one tensor without saying why it was expected)."""
    monkeypatch.setattr(src.model.graph, "INFERENCE_OUTPUTS", ["np_prob", "hv", "tp_probabilities"])
    with pytest.raises(KeyError, match=r"graph lacks the inference tensors \['tp_probabilities'\] of a HoVer-Net "
                                       r"with 5 type channels"):
        HoVerNetPredictor(WEIGHTS, config_from_args(TINY))
