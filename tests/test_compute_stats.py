"""Tests of the metrics/compute_stats.py CLI on tiny .mat folders written into tmp_path."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from metrics.compute_stats import main
from misc.io import save_label_mat

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = ["dice", "aji", "aji_plus", "dq", "sq", "pq"]


def _discs():
    yy, xx = np.mgrid[:32, :32]
    inst = np.zeros((32, 32), np.int32)
    inst[(yy - 10) ** 2 + (xx - 10) ** 2 < 36] = 3
    inst[(yy - 20) ** 2 + (xx - 22) ** 2 < 49] = 8
    return inst


def _instance_folders(tmp_path):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    # image "a": identical maps; image "b": the hand case of tests/test_metrics.py (match, miss, FP)
    save_label_mat(true_dir / "a.mat", _discs())
    save_label_mat(pred_dir / "a.mat", _discs())
    save_label_mat(true_dir / "b.mat", np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2, 0, 3, 3, 0, 0, 0]]))
    save_label_mat(pred_dir / "b.mat", np.array([[5, 5, 5, 5, 0, 0, 7, 7, 7, 7, 0, 0, 0, 9, 9]]))
    return true_dir, pred_dir


def _type_folders(tmp_path):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    blank = np.zeros((8, 8), np.int32)  # type mode reads centroids and types; the map must only exist
    # image "x": truth type 1 at (0, 0) found as type 2 (distance 5); truth type 2 at (200, 200) missed
    save_label_mat(true_dir / "x.mat", blank, inst_type=[1, 2], inst_centroid=[[0, 0], [200, 200]])
    save_label_mat(pred_dir / "x.mat", blank, inst_type=[2], inst_centroid=[[3, 4]])
    # image "y": one exact type-1 match and one type-1 false positive
    save_label_mat(true_dir / "y.mat", blank, inst_type=[1], inst_centroid=[[50, 50]])
    save_label_mat(pred_dir / "y.mat", blank, inst_type=[1, 1], inst_centroid=[[50, 51], [90, 90]])
    return true_dir, pred_dir


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_instance_mode_json(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    out_json = tmp_path / "out" / "stats.json"
    code, out, err = _run(capsys, "--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir,
                          "--json", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert list(result) == ["per_image", "mean"]
    assert list(result["per_image"]) == ["a", "b"]
    assert all(list(scores) == KEYS for scores in result["per_image"].values())
    assert list(result["mean"]) == KEYS
    assert result["per_image"]["a"] == {k: 1.0 for k in KEYS}
    # b: DICE1 0.7, AJI = AJI+ = 7/13, DQ 2/3, SQ 0.8, PQ 8/15 (arithmetic in tests/test_metrics.py)
    expected_b = {"dice": 0.7, "aji": 7 / 13, "aji_plus": 7 / 13, "dq": 2 / 3, "sq": 0.8, "pq": 8 / 15}
    assert result["per_image"]["b"] == pytest.approx(expected_b, abs=1e-12)
    assert result["mean"] == pytest.approx({k: (1 + v) / 2 for k, v in expected_b.items()}, abs=1e-12)
    assert "mean" in out and "aji_plus" in out and "0.53333" in out  # readable table with the PQ of b
    assert not list(out_json.parent.glob(".*part*"))  # the atomic write left no temporary file


def test_type_mode_json(tmp_path, capsys):
    true_dir, pred_dir = _type_folders(tmp_path)
    out_json = tmp_path / "type.json"
    code, out, err = _run(capsys, "--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir,
                          "--json", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert list(result) == ["f1_d", "acc", "f1_type"]
    # pooled: 2 pairs (1->2, 1->1), 1 FP, 1 FN -> F1d 4/6; accuracy 1/2
    assert result["f1_d"] == pytest.approx(2 / 3, abs=1e-12)
    assert result["acc"] == 0.5
    # type 1: TPc 1, FNc 1, FPd 1 -> 2/5; type 2: FPc 1, FNd 1 -> 0 (types default to those in the truth)
    assert result["f1_type"] == pytest.approx({"1": 0.4, "2": 0.0}, abs=1e-12)
    assert "f1_d" in out and "0.66667" in out


def test_type_mode_types_option(tmp_path, capsys):
    true_dir, pred_dir = _type_folders(tmp_path)
    out_json = tmp_path / "type.json"
    code, _, err = _run(capsys, "--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir,
                        "--types", "2,5", "--json", out_json)
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["f1_type"] == {"2": 0.0, "5": 1.0}
    assert "[5]" in err  # warned that type 5 occurs nowhere


def test_type_mode_radius(tmp_path, capsys):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    blank = np.zeros((4, 4), np.int32)
    save_label_mat(true_dir / "r.mat", blank, inst_type=[1], inst_centroid=[[0, 0]])
    save_label_mat(pred_dir / "r.mat", blank, inst_type=[1], inst_centroid=[[12, 5]])  # 13 px away
    out_json = tmp_path / "r.json"
    base = ["--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir, "--json", out_json]
    assert _run(capsys, *base)[0] == 0  # default EVAL.RADIUS 12: not paired
    assert json.loads(out_json.read_text())["f1_d"] == 0.0
    assert _run(capsys, *base, "--radius", "13")[0] == 0
    assert json.loads(out_json.read_text())["f1_d"] == 1.0


def test_progress_bar_for_many_files(tmp_path, capsys):
    for i in range(11):
        save_label_mat(tmp_path / "true" / f"img{i:02d}.mat", _discs())
        save_label_mat(tmp_path / "pred" / f"img{i:02d}.mat", _discs())
    code, out, err = _run(capsys, "--mode", "instance", "--true_dir", tmp_path / "true",
                          "--pred_dir", tmp_path / "pred")
    assert code == 0
    assert "11/11" in err and "img10" in out


def test_help_explains_json(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--radius", "--types", "--json", "per_image", "f1_type", "aji_plus"):
        assert word in out


# ----------------------------------------------------------------------------------------------------
# bad input: exit code 2 and one line on stderr naming the culprit
# ----------------------------------------------------------------------------------------------------
def _assert_bad(capsys, argv, *fragments):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert str(fragment) in err, (fragment, err)


def test_missing_directories(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    missing = tmp_path / "nope"
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", missing, "--pred_dir", pred_dir], missing, "--true_dir")
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", missing], missing, "--pred_dir")


def test_no_mat_files(tmp_path, capsys):
    true_dir, _ = _instance_folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", empty], empty, "no .mat")


def test_prediction_without_truth(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    save_label_mat(pred_dir / "zeta.mat", _discs())
    save_label_mat(pred_dir / "omega.mat", _discs())
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir],
                "2 prediction(s) without a matching truth", "omega, zeta")


def test_truth_without_prediction_is_an_error_unless_allowed_and_then_listed(tmp_path, capsys):
    """Issue 22.6: a subset was scored with exit 0 and the JSON did not say which truths were left out."""
    true_dir, pred_dir = _instance_folders(tmp_path)
    save_label_mat(true_dir / "extra.mat", _discs())
    args = ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir]
    _assert_bad(capsys, args, "no prediction for 1", "extra", "--allow_missing")
    out = tmp_path / "scores.json"
    code, _, err = _run(capsys, *args, "--allow_missing", "--json", out)
    assert code == 0
    assert "warning" in err and "extra" in err
    assert json.loads(out.read_text())["missing_predictions"] == ["extra"]


def test_shape_mismatch(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    save_label_mat(pred_dir / "b.mat", np.zeros((2, 15), np.int32))
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir],
                pred_dir / "b.mat", "(2, 15)", "(1, 15)")


def test_missing_key(tmp_path, capsys):
    true_dir, pred_dir = _type_folders(tmp_path)
    save_label_mat(true_dir / "y.mat", np.zeros((8, 8), np.int32))  # no inst_type / inst_centroid
    _assert_bad(capsys, ["--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir],
                true_dir / "y.mat", "inst_type")
    scipy.io.savemat(str(pred_dir / "x.mat"), {"something_else": np.zeros((8, 8))})
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir],
                pred_dir / "x.mat", "inst_map")


def test_negative_ids(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    scipy.io.savemat(str(pred_dir / "a.mat"), {"inst_map": -np.ones((32, 32), np.int32)})
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir],
                pred_dir / "a.mat", "negative")


def test_corrupt_mat(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    (true_dir / "b.mat").write_bytes(b"definitely not a MATLAB file")
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir],
                true_dir / "b.mat", "not a readable .mat")


def test_unwritable_json(tmp_path, capsys):
    true_dir, pred_dir = _instance_folders(tmp_path)
    target = tmp_path / "a_directory"
    target.mkdir()
    _assert_bad(capsys, ["--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir,
                         "--json", target], target)


# ----------------------------------------------------------------------------------------------------
# the command line itself, from the repository root
# ----------------------------------------------------------------------------------------------------
def test_module_form_subprocess(tmp_path):
    true_dir, pred_dir = _instance_folders(tmp_path)
    out_json = tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, "-m", "metrics.compute_stats", "--mode", "instance",
                           "--true_dir", str(true_dir), "--pred_dir", str(pred_dir), "--json", str(out_json)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out_json.read_text())["per_image"]["a"]["pq"] == 1.0


def test_script_form_subprocess(tmp_path):
    true_dir, pred_dir = _instance_folders(tmp_path)
    out_json = tmp_path / "cli.json"
    proc = subprocess.run([sys.executable, "metrics/compute_stats.py", "--mode", "instance",
                           "--true_dir", str(true_dir), "--pred_dir", str(pred_dir), "--json", str(out_json)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out_json.read_text())["per_image"]["a"]["pq"] == 1.0


def test_type_mode_merges_original_consep_types_of_the_truth(tmp_path, capsys):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    blank = np.zeros((8, 8), np.int32)
    # truth in CoNSeP's original 7 types: 4 (epithelial) and 6 (spindle) merge to 3 and 4
    save_label_mat(true_dir / "x.mat", blank, inst_type=[4, 6], inst_centroid=[[10, 10], [40, 40]])
    save_label_mat(pred_dir / "x.mat", blank, inst_type=[3, 4], inst_centroid=[[10, 11], [40, 41]])
    out_json = tmp_path / "t.json"
    args = ["--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir, "--json", out_json]
    code, _, err = _run(capsys, *args, "--merge_types")
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["acc"] == 1.0 and set(result["f1_type"]) == {"3", "4"}
    code, _, _ = _run(capsys, *args)
    assert code == 0 and json.loads(out_json.read_text())["acc"] == 0.0  # unmerged: 4 vs 3, 6 vs 4
    save_label_mat(true_dir / "x.mat", blank, inst_type=[9, 6], inst_centroid=[[10, 10], [40, 40]])
    code, _, err = _run(capsys, *args, "--merge_types")
    assert code == 2 and "[9]" in err and "x.mat" in err


def _points_mat(path, types, xy):
    """A point-annotation truth (CRCHisto style): inst_type and inst_centroid only, no inst_map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"inst_type": np.array(types, np.int32).reshape(-1, 1),
                            "inst_centroid": np.array(xy, np.float64).reshape(-1, 2)})


def _partly_typed_folders(tmp_path):
    """Hand case, two images; -1 and 0 mark untyped truth nuclei. Pairs (truth type, pred type):
    A: (1, 1), (2, 1), (-1, 2), (-1, 1); missed truth type 1; false positive type 2.
    B: (0, 2), (2, 2); missed truth type 2."""
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    _points_mat(true_dir / "A.mat", [1, 2, -1, -1, 1], [[10, 10], [50, 10], [90, 10], [130, 10], [170, 10]])
    blank = np.zeros((8, 8), np.int32)  # predictions come from infer.py and have an inst_map
    save_label_mat(pred_dir / "A.mat", blank, inst_type=[1, 1, 2, 1, 2],
                   inst_centroid=[[11, 10], [50, 12], [90, 11], [131, 10], [300, 300]])
    _points_mat(true_dir / "B.mat", [0, 2, 2], [[210, 10], [250, 10], [400, 400]])
    save_label_mat(pred_dir / "B.mat", blank, inst_type=[2, 2], inst_centroid=[[210, 10], [250, 11]])
    return true_dir, pred_dir


def test_type_mode_point_truth_not_exhaustive_equals_released(tmp_path, capsys):
    true_dir, pred_dir = _partly_typed_folders(tmp_path)
    out_json = tmp_path / "s.json"
    code, out, err = _run(capsys, "--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir,
                          "--no-exhaustive", "--json", out_json)
    assert code == 0, err
    got = json.loads(out_json.read_text())
    assert set(got) == {"f1_d", "acc", "f1_type"}  # the type JSON schema is unchanged
    # Worked by hand with the released run_nuclei_type_stat(..., exhaustive=False) (truth 0 read as -1):
    # 6 pairs, 1 FP, 2 FN -> Fd = 2*6 / (2*6 + 1 + 2) = 0.8.
    # acc: agree 2 of 6, and the 3 pairs with an untyped truth leave the wrong side: 2 / (2 + (4 - 3)).
    # type 1: pairs (1,1) (2,1) (-1,1): TPc 1, FPc 2 - 1 ignored = 1, FNc 0; FPd 0, FNd 1 -> 2 / (2 + 2*1 + 1).
    # type 2: pairs (2,1) (-1,2) (0,2) (2,2): TPc 1, FPc 2 - 2 = 0, FNc 1; FPd 1, FNd 1 -> 2 / (2 + 2 + 1 + 1).
    assert got["f1_d"] == pytest.approx(0.8, abs=1e-6)
    assert got["acc"] == pytest.approx(2 / 3, abs=1e-6)
    assert got["f1_type"] == {"1": pytest.approx(2 / 5, abs=1e-6), "2": pytest.approx(2 / 6, abs=1e-6)}

    # The same points scored as exhaustive: -1 and 0 are types of their own, every pair is classified.
    code, out, err = _run(capsys, "--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir,
                          "--types", "1,2", "--json", out_json)
    assert code == 0, err
    got = json.loads(out_json.read_text())
    assert got["f1_d"] == pytest.approx(0.8, abs=1e-6)  # detection does not depend on the flag
    assert got["acc"] == pytest.approx(2 / 6, abs=1e-6)
    # type 1: FPc 2 -> 2 / (2 + 4 + 1); type 2: FPc 2, FNc 1 -> 2 / (2 + 4 + 2 + 1 + 1)
    assert got["f1_type"] == {"1": pytest.approx(2 / 7, abs=1e-6), "2": pytest.approx(2 / 10, abs=1e-6)}


def test_type_mode_strict_types(tmp_path, capsys):
    true_dir, pred_dir = _partly_typed_folders(tmp_path)
    args = ["--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir, "--no-exhaustive"]
    code, out, err = _run(capsys, *args, "--types", "1")  # type 2 predictions: no error unless asked
    assert code == 0, err
    code, out, err = _run(capsys, *args, "--types", "1", "--strict_types")
    assert code == 2 and "A.mat" in err and "[2]" in err and "--strict_types" in err
    code, out, err = _run(capsys, *args, "--strict_types")
    assert code == 2 and "needs --types" in err


def test_point_truth_cannot_be_scored_in_instance_mode(tmp_path, capsys):
    true_dir, pred_dir = _partly_typed_folders(tmp_path)
    code, out, err = _run(capsys, "--mode", "instance", "--true_dir", true_dir, "--pred_dir", pred_dir)
    assert code == 2 and "inst_map" in err


def test_help_describes_exhaustive_and_strict_types(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-exhaustive" in text and "untyped" in text and "--strict_types" in text


def test_type_accuracy_without_pairs_is_undefined(tmp_path, capsys):
    """Issue 13.12: with no matched pair the type accuracy is undefined, not 0."""
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    blank = np.zeros((8, 8), np.int32)
    save_label_mat(true_dir / "x.mat", blank, inst_type=[1], inst_centroid=[[0, 0]])
    save_label_mat(pred_dir / "x.mat", blank, inst_type=[1], inst_centroid=[[100, 100]])
    out_json = tmp_path / "type.json"
    code, out, err = _run(capsys, "--mode", "type", "--true_dir", true_dir, "--pred_dir", pred_dir,
                          "--json", out_json)
    assert code == 0, err
    assert np.isnan(json.loads(out_json.read_text())["acc"])
    assert "NaN" in out_json.read_text()
    assert "acc         n/a" in out and "0.00000" not in out.split("acc")[1].splitlines()[0]
    assert "no matched pair" in err
