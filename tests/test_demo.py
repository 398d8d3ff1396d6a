"""scripts/demo.py: the README's first command."""
import numpy as np

from scripts.demo import run_name


def test_new_weights_under_the_same_name_get_their_own_prediction_folder(tmp_path):
    weights = tmp_path / "mine.npz"
    np.savez(weights, w=np.zeros(3, np.float32))
    first = run_name(str(weights))
    assert first.startswith("mine-") and len(first) == len("mine-") + 8
    assert run_name(str(weights)) == first  # the same weights: the same folder, so a rerun resumes
    np.savez(weights, w=np.ones(3, np.float32))  # retrained, same file name
    assert run_name(str(weights)) != first
    assert run_name(str(tmp_path / "missing.npz")) == "missing"  # infer.py reports the missing file
