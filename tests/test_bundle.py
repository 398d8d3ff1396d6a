"""src/model/bundle.py: bundled models as float16 .npz with their config, found by name (src/model/weights_file.py)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from shrunk_networks import MICRO

import infer
from misc.io import InputError
from src.config import config_from_args
from src.model import bundle, weights_file
from src.model.weights import read_weights, save_initial_weights
from src.model.weights_file import METADATA_KEY, model_config, read_npz_metadata

pytestmark = pytest.mark.slow

# A fast-mode network different from the defaults in mode, preset, widths and type count, so that loading it
# without its recorded config would fail: the 'small' preset with the MICRO widths (tests/shrunk_networks.py).
NETWORK = ["MODEL.MODE=fast", "MODEL.PRESET=small", *MICRO, "MODEL.NR_TYPES=3"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    cfg = config_from_args(NETWORK)
    save_initial_weights(root / "random.npz", cfg, nr_types=3)
    folder = root / "models"
    meta = bundle.write_bundle(root / "random.npz", dict(cfg.MODEL), folder / "tiny-test.npz", "a test model",
                               postproc={"MARKER_THRESHOLD": 0.7})
    assert meta["MODEL"]["MODE"] == "fast" and "INPUT_SHAPE" not in meta["MODEL"]
    return folder


def test_bundle_is_float16_with_metadata_and_loads_back_as_float32(models_dir, tmp_path):
    path = models_dir / "tiny-test.npz"
    original = read_weights(models_dir.parent / "random.npz")
    with np.load(path) as data:
        assert METADATA_KEY in data.files
        assert {data[k].dtype for k in data.files if k != METADATA_KEY} == {np.dtype(np.float16)}
    loaded = read_weights(path)
    assert set(loaded) == set(original) and all(v.dtype == np.float32 for v in loaded.values())
    for name, value in original.items():
        np.testing.assert_allclose(loaded[name], value, rtol=1e-3, atol=1e-4)
    meta = read_npz_metadata(path)
    assert meta["description"] == "a test model" and meta["MODEL"]["NR_TYPES"] == 3
    assert meta["parameters"] == sum(v.size for v in original.values())
    cfg = model_config(path)  # the network recorded inside the file: mode, preset, widths, types
    assert (cfg.MODEL.MODE, cfg.MODEL.ENCODER_UNITS, cfg.MODEL.INPUT_SHAPE) == ("fast", (1, 1, 1, 1), 256)
    assert model_config(path, ["MODEL.NR_TYPES=4"]).MODEL.NR_TYPES == 4  # --config still wins
    assert cfg.POSTPROC.MARKER_THRESHOLD == 0.7 and cfg.POSTPROC.SOBEL_KSIZE == 21  # recorded, others default
    assert model_config(path, ["POSTPROC.MARKER_THRESHOLD=0.5"]).POSTPROC.MARKER_THRESHOLD == 0.5


def test_recorded_postproc_is_replaced_and_the_weights_are_kept_as_stored(models_dir, tmp_path):
    path = tmp_path / "tiny-test.npz"
    path.write_bytes((models_dir / "tiny-test.npz").read_bytes())
    path.with_suffix(".json").write_text(json.dumps({"split": {"holdout": ["a"]}, "bundle": {}}))
    with np.load(models_dir / "tiny-test.npz") as before:
        stored = {k: before[k] for k in before.files if k != METADATA_KEY}
    meta = bundle.record_postproc(path, {"SOBEL_KSIZE": 11}, {"chosen": {"SOBEL_KSIZE": 11}})
    assert meta["POSTPROC"] == {"MARKER_THRESHOLD": 0.7, "SOBEL_KSIZE": 11}  # the earlier value kept
    with np.load(path) as after:
        assert set(after.files) - {METADATA_KEY} == set(stored)
        for name, value in stored.items():
            assert after[name].dtype == np.float16 and np.array_equal(after[name], value)
    cfg = model_config(path)
    assert (cfg.POSTPROC.MARKER_THRESHOLD, cfg.POSTPROC.SOBEL_KSIZE, cfg.MODEL.NR_TYPES) == (0.7, 11, 3)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["bundle"]["POSTPROC"]["SOBEL_KSIZE"] == 11 and record["postproc_selection"]["chosen"]
    with pytest.raises(InputError, match="NO_SUCH"):
        bundle.record_postproc(path, {"NO_SUCH": 1})
    np.savez(tmp_path / "bare.npz", **stored)  # weights without a MODEL record
    with pytest.raises(InputError, match="not a bundled model"):
        bundle.record_postproc(tmp_path / "bare.npz", {"SOBEL_KSIZE": 11})


def test_a_model_fine_tuned_from_a_bundle_carries_the_record_it_started_from(models_dir, tmp_path):
    run = tmp_path / "run" / "phase1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"phase": "phase1", "epochs": 9, "train_dir": str(tmp_path),
                                              "config": config_from_args(NETWORK).to_dict()}))
    (run / "stats.json").write_text(json.dumps([{"epoch_num": 1, "tiles_pq": 0.3}]))
    (run / "run_history.jsonl").write_text(json.dumps({"time": "2026-12-03 20:13:00", "start": "new"}) + "\n")
    (run / "finished.json").write_text(json.dumps({"epochs": 9, "finished": "2026-12-03 21:00:00"}))
    earlier = {"path": "models/tiny-test.json", "history": [{"epoch_num": 36}], "wall_seconds": 60.0}
    (run / "init_record.json").write_text(json.dumps(earlier))
    out = tmp_path / "models" / "tuned.npz"
    assert bundle.main(["--checkpoint", str(models_dir.parent / "random.npz"), "--run_dir", str(run),
                        "--output", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["init_record"] == earlier and record["history"] == [{"epoch_num": 1, "tiles_pq": 0.3}]
    assert record["wall_seconds"] == 47 * 60
    assert [r["epoch_num"] for r in bundle.chained_history(record)] == [36, 37]  # numbered on from the start's
    assert out.with_name("tuned-curves.png").read_bytes().startswith(b"\x89PNG")


def test_names_resolve_to_bundled_files_and_unknown_names_list_them(models_dir, tmp_path):
    assert weights_file.locate_weights("tiny-test", models_dir) == str(models_dir / "tiny-test.npz")
    assert weights_file.locate_weights(str(models_dir / "tiny-test.npz"), models_dir).endswith("tiny-test.npz")
    with pytest.raises(InputError, match=r"no such file, checkpoint or bundled model \(bundled: tiny-test\)"):
        weights_file.locate_weights("no-such-model", models_dir)
    assert list(weights_file.bundled_models(models_dir)) == ["tiny-test"]
    assert weights_file.bundled_models(tmp_path / "none") == {}


def test_infer_runs_a_bundled_model_by_name_with_its_recorded_network(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights_file, "MODELS_DIR", models_dir)
    assert infer.main(["--list-models"]) == 0
    assert "tiny-test: a test model [mode fast, preset small," in capsys.readouterr().out
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    types = tmp_path / "types.json"
    types.write_text(json.dumps({"1": ["x", [255, 0, 0]], "2": ["y", [0, 255, 0]]}))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "a.png"), "--output", str(out), "--model", "tiny-test", "--types", str(types),
            "--quiet", "--formats", "json"]
    assert infer.main(argv) == 0
    assert json.loads((out / "a.json").read_text())["type_info"]["2"][0] == "y"
    assert infer.main(argv[:4] + ["--model", "nope"]) == 2
    assert "bundled: tiny-test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main(["--input", "x"])  # --output and --model are required unless --list-models


SHARED_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "consep256" / "test"
REAL_CROP = "test_1_005"  # a crop with ~60 nuclei of all four types
# small-consep scores DICE 0.819, PQ 0.375 on it (the published post-processing); a broken loader, channel order
# or post-processing gives ~0
MIN_DICE, MIN_PQ = 0.75, 0.2


def test_bundled_small_model_finds_the_nuclei_of_a_real_crop(tmp_path):
    """The shipped model end to end on a real CoNSeP test crop: a broken loader, a wrong channel order or a
    post-processing regression drops PQ far below what the model scores (see models/small-consep.json)."""
    from metrics.stats import instance_metrics
    from misc.io import load_label_mat

    if not SHARED_TEST.is_dir():
        pytest.skip(f"{SHARED_TEST} not present")
    out = tmp_path / "out"
    assert "small-consep" in weights_file.bundled_models()
    assert infer.main(["--input", str(SHARED_TEST / "Images" / f"{REAL_CROP}.jpg"), "--output", str(out),
                       "--model", "small-consep", "--quiet", "--formats", "mat"]) == 0
    truth = load_label_mat(SHARED_TEST / "Labels" / f"{REAL_CROP}.mat")["inst_map"]
    pred = load_label_mat(out / f"{REAL_CROP}.mat")["inst_map"]
    scores = instance_metrics(truth, pred)
    assert scores["dice"] >= MIN_DICE and scores["pq"] >= MIN_PQ, scores
