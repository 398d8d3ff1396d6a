"""The TensorFlow-free runner (xla_runner/): the training loop, exact resume, and no TensorFlow anywhere.

Uses the shrunk network exported once per session (``tests/xla_fixtures.py``). That a step lowers the loss
follows from two other tests: the exported step computes tensorpack's step (tests/test_export.py), and
tensorpack's step lowers the loss (tests/test_trainer.py).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from xla_fixtures import CROP, ROOT, exported

pytestmark = [pytest.mark.slow, pytest.mark.xla]


@pytest.fixture(scope="session")
def xla_artifacts(tmp_path_factory):
    """Folder holding the tiny network's forward and phase-2 training step artifacts (batch 2)."""
    return exported(tmp_path_factory)


def _patches(folder: Path, count: int, seed: int, size: int = 290) -> Path:
    """``count`` HxWx5 int32 patches (RGB, instance id, type id) of dark discs on a light background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for k in range(count):
        inst = np.zeros((size, size), np.int32)
        types = np.zeros_like(inst)
        for i in range(1, 40):
            cy, cx = rng.integers(70, size - 70, 2)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(5, 10) ** 2) & (inst == 0)
            inst[disc], types[disc] = i, rng.integers(1, 5)
        image = rng.integers(170, 240, (size, size, 3)).astype(np.int32)
        image[inst > 0] = (90, 40, 140)
        np.save(folder / f"p{k}.npy", np.concatenate([image, inst[..., None], types[..., None]], -1))
    return folder


def test_epoch_datapoints_are_whole_passes_and_reproducible():
    from xla_runner.train import epoch_datapoints

    order, seeds = epoch_datapoints(5, 7, seed=0, epoch=3)
    assert sorted(order[:5]) == [0, 1, 2, 3, 4] and len(order) == 7  # whole passes, then the next one
    again = epoch_datapoints(5, 7, seed=0, epoch=3)
    np.testing.assert_array_equal(order, again[0])
    np.testing.assert_array_equal(seeds, again[1])


def test_train_resumes_exactly_after_a_kill(xla_artifacts, tmp_path):
    from src.model.weights_file import read_npz, write_npz
    from xla_runner.artifacts import Artifacts, initial_state
    from xla_runner.train import train_phase

    artifacts = Artifacts(xla_artifacts)
    train_dir = _patches(tmp_path / "train", 3, seed=1)
    valid_dir = _patches(tmp_path / "valid", 2, seed=2)
    write_npz(tmp_path / "init.npz", initial_state(artifacts.find("train_step", phase=2), seed=4)[0])
    kwargs = {"pretrained": tmp_path / "init.npz", "epochs": 2, "steps_per_epoch": 1, "seed": 7}

    whole = train_phase(artifacts, 2, train_dir, valid_dir, tmp_path / "whole", **kwargs)

    class KilledError(Exception):
        pass

    def kill(epoch):
        if epoch == 1:
            raise KilledError

    with pytest.raises(KilledError):
        train_phase(artifacts, 2, train_dir, valid_dir, tmp_path / "killed", on_epoch_end=kill, **kwargs)
    killed = tmp_path / "killed" / "phase2"
    assert json.loads((killed / "checkpoint.json").read_text())["epoch"] == 1
    assert not (killed / "finished.json").exists()
    resumed = train_phase(artifacts, 2, train_dir, valid_dir, tmp_path / "killed", **kwargs)

    final, again = read_npz(whole / "model-epoch2.npz")[0], read_npz(resumed / "model-epoch2.npz")[0]
    assert sorted(final) == sorted(again)
    for name in final:
        np.testing.assert_array_equal(final[name], again[name], err_msg=name)
    stats, stats_again = (json.loads((d / "stats.json").read_text()) for d in (whole, resumed))
    drop = ("epoch_seconds", "patches_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in stats] == \
        [{k: v for k, v in r.items() if k not in drop} for r in stats_again]
    assert [r["epoch_num"] for r in stats] == [1, 2] and 0.0 <= stats[-1]["validation_np_dice"] <= 1.0
    for name in ("model-best.npz", "curves.png", "finished.json"):
        assert (resumed / name).is_file()
    assert "conv0/W/Adam" in final  # the checkpoint carries Adam's state
    from src.model.weights_file import model_config, read_npz_metadata

    # the graph's settings are recorded, so infer.py / train.py rebuild the exported graph from the file alone
    assert read_npz_metadata(resumed / "model-epoch2.npz") == artifacts.manifest["weights_metadata"]
    assert model_config(resumed / "model-epoch2.npz").MODEL.OUTPUT_SHAPE == artifacts.output_shape == 216


def test_runner_never_imports_tensorflow(xla_artifacts, tmp_path):
    """`python -m xla_runner infer` end to end, then the train and bench modules imported: no tensorflow."""
    from src.model.weights_file import write_npz
    from xla_runner.artifacts import Artifacts, initial_state

    artifacts = Artifacts(xla_artifacts)
    # a model file that records its own post-processing (as the bundled models do): xla_runner must apply it,
    # as infer.py does (issue 21: the bundled model found 0 nuclei where infer.py found 90)
    metadata = {**artifacts.manifest["weights_metadata"], "POSTPROC": {"MARKER_THRESHOLD": 0.7, "SOBEL_KSIZE": 11}}
    write_npz(tmp_path / "w.npz", initial_state(artifacts.find("forward", 2))[0], metadata)
    code = (
        "import sys\n"
        "from xla_runner.__main__ import main\n"
        f"rc = main(['infer', '--artifacts', {str(xla_artifacts)!r}, '--model', {str(tmp_path / 'w.npz')!r}, "
        f"'--input', {str(CROP)!r}, '--output', {str(tmp_path / 'out')!r}, '--quiet'])\n"
        "import xla_runner.train, xla_runner.bench  # noqa\n"
        "banned = ('tensorflow', 'tensorpack', 'keras', 'tf_keras')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print('RC', rc, 'LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "RC 0 LOADED []" in result.stdout, result.stdout + result.stderr[-3000:]
    for suffix in (".mat", ".json", ".png", ".geojson"):
        assert (tmp_path / "out" / f"test_1_000{suffix}").is_file()
    assert (tmp_path / "out" / "summary.csv").is_file()
    postproc = json.loads((tmp_path / "out" / "run_info.json").read_text())["postproc"]
    assert (postproc["marker_threshold"], postproc["sobel_ksize"]) == (0.7, 11)


def test_bundled_model_gives_the_same_nuclei_in_xla_runner_and_infer(tmp_path, capsys):
    """Issue 21: `xla_runner infer --model small-consep` found 0 nuclei where infer.py found 90, because it ignored
    the post-processing recorded in the file. Now, with no --config, both write the same instance map."""
    import infer
    from misc.io import load_label_mat
    from src.model.weights_file import locate_weights, read_npz_metadata
    from xla_runner.__main__ import main as xla_main

    model = locate_weights("small-consep")
    overrides = [f"MODEL.{k}={tuple(v) if isinstance(v, list) else v!r}"
                 for k, v in read_npz_metadata(model)["MODEL"].items()]
    export = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "src.model.export", "--out_dir", str(export), "--batch_sizes", "4",
                           "--no_train", "--config", *overrides], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert xla_main(["infer", "--artifacts", str(export), "--model", "small-consep", "--input", str(CROP),
                     "--output", str(tmp_path / "xla"), "--quiet"]) == 0
    assert infer.main(["--model", "small-consep", "--input", str(CROP), "--output", str(tmp_path / "tf"),
                       "--quiet"]) == 0
    xla = load_label_mat(tmp_path / "xla" / f"{CROP.stem}.mat")["inst_map"]
    tf = load_label_mat(tmp_path / "tf" / f"{CROP.stem}.mat")["inst_map"]
    assert xla.max() > 5  # a trained model finds nuclei on a real crop
    np.testing.assert_array_equal(xla, tf)
    runs = [json.loads((tmp_path / d / "run_info.json").read_text()) for d in ("xla", "tf")]
    assert runs[0] == runs[1]  # one run record: the weights by content and path, the post-processing
    # so either runner resumes the other's folder: nothing to redo, nothing refused
    assert xla_main(["infer", "--artifacts", str(export), "--model", "small-consep", "--input", str(CROP),
                     "--output", str(tmp_path / "tf"), "--quiet"]) == 0
    assert infer.main(["--model", "small-consep", "--input", str(CROP), "--output", str(tmp_path / "xla"),
                       "--quiet"]) == 0
    assert capsys.readouterr().out.count("0 image(s) written, 1 already complete") == 2
