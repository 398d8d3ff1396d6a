"""metrics/evaluate.py: scoring folders of .mat labels, called directly (the CLI: tests/test_compute_stats.py)."""
import numpy as np
import pytest

from metrics.evaluate import evaluate_instance, evaluate_type, match_files
from misc.io import InputError, save_label_mat


def _disc_map():
    yy, xx = np.mgrid[:24, :24]
    inst = np.zeros((24, 24), np.int32)
    inst[(yy - 8) ** 2 + (xx - 8) ** 2 < 25] = 4
    inst[(yy - 16) ** 2 + (xx - 17) ** 2 < 16] = 9
    return inst


def test_match_files_scores_what_was_predicted(tmp_path, capsys):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    for name in ("a", "b", "c"):
        save_label_mat(true_dir / f"{name}.mat", _disc_map())
    for name in ("b", "a"):
        save_label_mat(pred_dir / f"{name}.mat", _disc_map())
    with pytest.raises(InputError, match="no prediction for 1 of the 3 truth file.*: c .*--allow_missing"):
        match_files(true_dir, pred_dir)  # issue 22.6: a subset is not the set's score
    assert match_files(true_dir, pred_dir, allow_missing=True) == (["a", "b"], ["c"])
    assert "1 truth file(s) without a prediction are not scored: c" in capsys.readouterr().err
    save_label_mat(pred_dir / "d.mat", _disc_map())
    with pytest.raises(InputError, match="1 prediction"):
        match_files(true_dir, pred_dir)


def test_evaluate_instance_and_type_on_hand_cases(tmp_path):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    save_label_mat(true_dir / "a.mat", _disc_map())
    save_label_mat(pred_dir / "a.mat", _disc_map())
    result = evaluate_instance(true_dir, pred_dir, ["a"])
    assert result["per_image"]["a"] == result["mean"] == {k: 1.0 for k in result["mean"]}

    blank = np.zeros((8, 8), np.int32)
    # x: truth type 1 found as type 2 (5 px away), truth type 2 missed; y: one exact match, one false positive
    save_label_mat(true_dir / "x.mat", blank, inst_type=[1, 2], inst_centroid=[[0, 0], [200, 200]])
    save_label_mat(pred_dir / "x.mat", blank, inst_type=[2], inst_centroid=[[3, 4]])
    save_label_mat(true_dir / "y.mat", blank, inst_type=[1], inst_centroid=[[50, 50]])
    save_label_mat(pred_dir / "y.mat", blank, inst_type=[1, 1], inst_centroid=[[50, 51], [90, 90]])
    scores = evaluate_type(true_dir, pred_dir, ["x", "y"], radius=12)
    assert scores["f1_d"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # pooled: 2 pairs, 1 miss, 1 false positive
    assert scores["acc"] == pytest.approx(0.5)  # one of the two pairs has the right type
    assert sorted(scores["f1_type"]) == ["1", "2"]
