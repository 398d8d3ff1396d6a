"""scripts/select_postproc.py: post-processing settings chosen on held-out images, one table, a quiet console."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from src.maps.synthetic import synthetic_instance_map
from src.model.weights_file import read_npz_metadata

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, "scripts/select_postproc.py", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def _data_set(root: Path, names) -> None:
    rng = np.random.default_rng(0)
    for folder in ("Images", "Labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        inst = synthetic_instance_map((96, 96), 6, rng)
        image = np.where(inst[..., None] > 0, 60, 220).astype(np.uint8).repeat(3, axis=2)
        cv2.imwrite(str(root / "Images" / f"{name}.png"), image)
        scipy.io.savemat(root / "Labels" / f"{name}.mat", {"inst_map": inst.astype(np.int32)})


def test_one_row_per_combination_the_best_recorded_and_no_graph_log_on_the_console(tmp_path, micro_weights_npz):
    """A bundle's training record names the held-out images; --record writes the best row into the bundle."""
    _data_set(tmp_path / "data", ["a", "b", "c"])
    model = tmp_path / "micro.npz"
    model.write_bytes(micro_weights_npz.read_bytes())
    model.with_suffix(".json").write_text(json.dumps({"split": {"holdout": ["a", "c"], "train": ["b"]}}))
    run = _run("--model", model, "--split", model.with_suffix(".json"), "--data", tmp_path / "data",
               "--thresholds", "0.4,0.7", "--ksizes", "21,5", "--record")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("2 validation images")
    rows = [line.split() for line in lines[2:-1]]
    assert sorted((float(r[0]), int(r[1])) for r in rows) == [(0.4, 5), (0.4, 21), (0.7, 5), (0.7, 21)]
    pq = [float(r[3]) for r in rows]
    assert pq == sorted(pq) and all(0 <= v <= 1 for v in pq)  # best PQ last
    best = {"MARKER_THRESHOLD": float(rows[-1][0]), "SOBEL_KSIZE": int(rows[-1][1])}
    assert lines[-1].startswith(f"recorded in {model}")
    assert read_npz_metadata(model)["POSTPROC"] == best
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["postproc_selection"]["chosen"] == best and len(record["postproc_selection"]["rows"]) == 4
    assert record["postproc_selection"]["holdout"] == ["a", "c"]
    console = run.stdout + run.stderr
    assert "conv0" not in console and "Restoring" not in console and "I0000" not in console, console


def test_bad_inputs_are_one_line_errors_before_the_model_loads(tmp_path):
    _data_set(tmp_path / "data", ["a"])
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"holdout": ["a", "zz"]}))
    cases = [
        (("--split", tmp_path / "none.json"), "no such file"),
        (("--split", split), "zz"),  # a held-out name without an image
        (("--split", split, "--ksizes", "4"), "SOBEL_KSIZE"),
        (("--split", split, "--thresholds", "0.5,x"), "MARKER_THRESHOLD"),
    ]
    for args, words in cases:
        run = _run("--model", tmp_path / "no-model.npz", "--data", tmp_path / "data", *args)
        assert run.returncode == 2 and words in run.stderr, run.stderr
        last = run.stderr.strip().splitlines()[-1]  # argparse's usage lines come first
        assert "error" in last and words in last and "Traceback" not in run.stderr
