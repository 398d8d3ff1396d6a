"""infer.py and src/infer/predictor.py: the real network (random weights) end to end on CPU.

One session-scoped .npz of randomly initialised weights of the MICRO network (conftest.py,
tests/shrunk_networks.py; 270 -> 216, recorded in the file) stands in for a trained model: the outputs are
meaningless as segmentations but must be complete, mutually consistent and readable by compute_stats.
Images are kept under one output window so each forward pass is a single 270x270 window.
"""
import json
import re

import cv2
import numpy as np
import pytest

import infer
from metrics.compute_stats import main as compute_stats
from misc.io import load_label_mat
from src.infer.predictor import HoVerNetPredictor
from src.model.weights_file import model_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights_npz(micro_weights_npz):
    return micro_weights_npz  # read-only: tests copy it before changing it


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("small", (60, 75)), ("tiny", (9, 13))):
        image = rng.integers(0, 255, size=shape + (3,), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{name}.png"), image)
    return folder


def test_predictor_output_layout(weights_npz, shared_predictor):
    cfg = model_config(weights_npz)
    assert (cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE) == (270, 216)  # the network recorded in the file
    predictor = shared_predictor(weights_npz, cfg)
    assert isinstance(predictor, HoVerNetPredictor)
    assert predictor.nr_types == 5
    batch = np.random.default_rng(0).integers(0, 255, (2, 270, 270, 3)).astype(np.float32)
    maps = predictor(batch)
    assert maps.shape == (2, 216, 216, 1 + 2 + 5) and maps.dtype == np.float32
    assert np.all((maps[..., 0] >= 0) & (maps[..., 0] <= 1))
    np.testing.assert_allclose(maps[..., 3:].sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="270"):
        predictor(batch[:, :100])


def test_infer_end_to_end_then_resume(weights_npz, images, tmp_path, capsys, shared_predictor):
    out = tmp_path / "out"
    argv = ["--input", str(images), "--output", str(out), "--model", str(weights_npz), "--quiet"]
    assert infer.main(argv) == 0
    for name in ("small", "tiny"):
        for suffix in (".mat", ".json", ".png", ".geojson"):
            assert (out / f"{name}{suffix}").is_file()
        label = load_label_mat(out / f"{name}.mat", with_types=True)
        nuclei = json.loads((out / f"{name}.json").read_text())["nuclei"]
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        n = int(label["inst_map"].max())
        assert len(nuclei) == len(features) == len(label["inst_type"]) == n
    assert label["inst_map"].shape == (9, 13)
    assert (out / "summary.csv").is_file()
    scores = tmp_path / "self.json"
    assert compute_stats(["--mode", "instance", "--true_dir", str(out), "--pred_dir", str(out),
                          "--json", str(scores)]) == 0
    assert "small" in json.loads(scores.read_text())["per_image"]
    capsys.readouterr()
    assert infer.main(argv) == 0
    assert "0 image(s) written, 2 already complete" in capsys.readouterr().out


def test_infer_reports_bad_images_and_exit_status(weights_npz, images, tmp_path, capsys, caplog, shared_predictor):
    cv2.imwrite(str(images / "gray.png"), np.zeros((20, 20), np.uint8))
    (images / "corrupt.tif").write_bytes(b"II*\x00 not really a tiff")
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(weights_npz),
                       "--quiet", "--formats", "mat"])
    err = capsys.readouterr().err
    assert code == 1
    assert "gray.png" in err and "grayscale" in err and "corrupt.tif" in err
    # issue 13.13: each reason once, naming the path once
    assert (err + caplog.text).count("grayscale") == 1 and (err + caplog.text).count("gray.png") == 1
    assert (tmp_path / "out" / "small.mat").is_file()


def test_model_with_missing_variables_is_refused(weights_npz, images, tmp_path, capsys):
    with np.load(weights_npz) as data:
        partial = {k: data[k] for k in data.files if not k.startswith("hv/")}
    partial["not_in_the_network/W"] = np.zeros(3, np.float32)
    path = tmp_path / "partial.npz"
    np.savez(path, **partial)
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(path)])
    message = capsys.readouterr().err  # the predictor's InputError, as infer.py reports it
    assert code == 2 and message.startswith("infer.py: error:")
    assert "missing from the file" in message and "hv/u3/conva/W" in message
    assert "unexpected in the file" in message and "not_in_the_network/W" in message
    assert not (tmp_path / "out").exists()


def test_bad_arguments(images, tmp_path, capsys):
    assert infer.main(["--input", str(images), "--output", str(tmp_path / "o"), "--model",
                       str(tmp_path / "none.npz")]) == 2
    assert "none.npz" in capsys.readouterr().err
    assert infer.main(["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), "--model", "x"]) == 2
    with pytest.raises(SystemExit):
        infer.main(["--input", str(images), "--output", "o", "--model", "m", "--formats", "mat,tiff"])


@pytest.mark.gpu
def test_nchw_on_gpu_equals_nhwc(weights_npz):
    """Spec section 1: NCHW on the GPU, NHWC acceptable elsewhere only if the results are equal."""
    batch = np.random.default_rng(1).integers(0, 255, (2, 270, 270, 3)).astype(np.float32)
    nchw = HoVerNetPredictor(weights_npz, model_config(weights_npz, ["MODEL.DATA_FORMAT=NCHW"]))(batch)
    nhwc = HoVerNetPredictor(weights_npz, model_config(weights_npz, ["MODEL.DATA_FORMAT=NHWC"]))(batch)
    np.testing.assert_allclose(nchw, nhwc, atol=2e-3)


def test_type_file_must_name_every_type_of_the_model(weights_npz, images, tmp_path, capsys, shared_predictor):
    types = tmp_path / "types.json"
    types.write_text(json.dumps({"1": ["tumour", [255, 0, 0]], "2": ["immune", [0, 255, 0]]}))
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(weights_npz),
                       "--types", str(types)])
    assert code == 2 and "[3, 4]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_weights_is_named_so(images, tmp_path, capsys):
    """Issue 13.7: no allow_pickle advice for a file that is not weights."""
    bogus = tmp_path / "model.npz"
    bogus.write_bytes(b"\x80\x04not weights")
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(bogus)])
    err = capsys.readouterr().err
    assert code == 2 and "not a weights file (.npz of arrays or a checkpoint)" in err and "pickle" not in err
    other = tmp_path / "model.h5"
    other.write_bytes(b"HDF")
    assert infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(other)]) == 2
    assert "not a weights file" in capsys.readouterr().err


def test_help_documents_every_json_key(capsys):
    """Issue 13.15: image_shape is in the JSON, so in --help (and the README) too."""
    with pytest.raises(SystemExit):
        infer.parse_args(["--help"])
    assert "image_shape" in capsys.readouterr().out


def test_gpu_asked_but_none_visible_warns(images, tmp_path, monkeypatch, caplog):
    """Issue 13.10: --gpu 0 on a machine without a GPU runs on the CPU, but says so."""
    import tensorflow as tf

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "x.npz"),
                "--gpu", "0"])
    assert "no GPU visible" in caplog.text


class _FakePredictor:
    """Stands in for HoVerNetPredictor (no graph): np+hv maps of nothing, or a failure on call ``fail_at``."""

    def __init__(self, weights, cfg=None, fail_at=None, error=KeyboardInterrupt):
        self.nr_types, self.calls, self.fail_at, self.error = 5, 0, fail_at, error

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        maps = np.zeros((len(batch), 80, 80, 8), np.float32)
        maps[..., 3] = 1.0
        return maps


def test_ctrl_c_is_one_line_and_exit_130(images, tmp_path, monkeypatch, capsys):
    """Issue 13.9: Ctrl-C prints 'interrupted; N images done, rerun to resume' and exits 130, no traceback."""
    import src.infer.predictor

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", lambda weights: _FakePredictor(weights, fail_at=2))
    model = tmp_path / "m.npz"
    np.savez(model, w=np.zeros(3, np.float32))  # --model must exist; the fake predictor never reads it
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip() == "infer.py: interrupted; 1 image(s) done, rerun the same command to resume"


def test_sigterm_is_one_line_exit_143_and_leaves_no_temporary_file(images, tmp_path, monkeypatch, capsys):
    """Issue 22.5: SIGTERM (timeout, kill, batch schedulers) was a silent exit 143 with a .part file left."""
    import os
    import signal

    import src.infer.predictor

    class _Killed(_FakePredictor):
        def __call__(self, batch):
            if self.calls == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's kill, during the second forward pass
            return super().__call__(batch)

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", _Killed)
    model, out = tmp_path / "m.npz", tmp_path / "out"
    np.savez(model, w=np.zeros(3, np.float32))
    code = infer.main(["--input", str(images), "--output", str(out), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 143
    assert err.strip() == "infer.py: terminated; 1 image(s) done, rerun the same command to resume"
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_disk_full_stops_with_exit_2(images, tmp_path, monkeypatch, capsys):
    """Issue 13.5: 'disk full writing PATH', exit 2, no partial file."""
    import errno

    import scipy.io

    import src.infer.predictor

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", _FakePredictor)
    monkeypatch.setattr(scipy.io, "savemat", full)
    out, model = tmp_path / "out", tmp_path / "m.npz"
    np.savez(model, w=np.zeros(3, np.float32))  # --model must exist; the fake predictor never reads it
    code = infer.main(["--input", str(images), "--output", str(out), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "disk full writing" in err and ".mat" in err
    assert not list(out.glob(".*part*"))


def test_results_of_changed_weights_at_the_same_path_are_not_reused(images, tmp_path, monkeypatch, capsys):
    """Issue 13.1: run_info.json identifies the weights by content: new weights at the old path are refused."""
    import src.infer.predictor

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", _FakePredictor)
    model, out = tmp_path / "model.npz", tmp_path / "out"
    np.savez(model, w=np.zeros(3, np.float32))
    argv = ["--input", str(images), "--output", str(out), "--model", str(model), "--quiet", "--formats", "mat"]
    assert infer.main(argv) == 0
    np.savez(model, w=np.ones(3, np.float32))  # e.g. model-best after more training
    capsys.readouterr()
    assert infer.main(argv) == 2
    assert "weights" in capsys.readouterr().err
    moved = tmp_path / "moved.npz"  # the same weights elsewhere are the same model
    model.rename(moved)
    assert infer.main([*argv[:4], "--overwrite", *argv[4:]]) == 2  # the model path no longer exists
    assert infer.main([*argv[:5], str(moved), *argv[6:], "--overwrite"]) == 0
    model.write_bytes(moved.read_bytes())
    assert infer.main(argv) == 0 and "0 image(s) written, 2 already complete" in capsys.readouterr().out


def test_mpp_for_tiles(images, tmp_path, monkeypatch, capsys):
    """Issue 10: --mpp for tiles resamples them to the model's mpp; outputs keep the tile's size; run_info has it."""
    import src.infer.predictor

    windows = []

    class Counting(_FakePredictor):
        def __call__(self, batch):
            windows.append(len(batch))
            return super().__call__(batch)

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", Counting)
    model = tmp_path / "m.npz"
    np.savez(model, w=np.zeros(3, np.float32))
    argv = ["--input", str(images / "small.png"), "--model", str(model), "--quiet", "--formats", "mat,json"]
    assert infer.main([*argv, "--output", str(tmp_path / "plain")]) == 0
    assert "mpp" not in json.loads((tmp_path / "plain" / "run_info.json").read_text())
    assert infer.main([*argv, "--output", str(tmp_path / "x20"), "--mpp", "0.5"]) == 0
    info = json.loads((tmp_path / "x20" / "run_info.json").read_text())
    assert (info["mpp"], info["model_mpp"]) == (0.5, 0.25)
    assert load_label_mat(tmp_path / "x20" / "small.mat")["inst_map"].shape == (60, 75)
    assert json.loads((tmp_path / "x20" / "small.json").read_text())["image_shape"] == [60, 75]
    assert windows == [1, 4]  # 60x75: one window of 80; upsampled to 120x150 for the model: 2x2
    capsys.readouterr()
    for bad in ("0", "-0.5", "nan", "inf"):  # issue 22.9: nan and inf were tracebacks after the model loaded
        with pytest.raises(SystemExit):
            infer.main([*argv, "--output", str(tmp_path / "bad"), "--mpp", bad])
        assert "--mpp must be a finite number > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.parse_args(["--help"])
    assert "Tiles: e.g. 0.5 for 20x" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("poison", ["all", "one"])
def test_non_finite_weights_are_refused_naming_the_variables(weights_npz, images, tmp_path, capsys, poison):
    """Issue 22.1: an all-NaN file wrote '1 image(s)' with 0 nuclei, one NaN in conv0/W gave 2 nuclei of 21."""
    with np.load(weights_npz) as data:
        arrays = {k: data[k] for k in data.files}
    names = [k for k in arrays if not k.startswith("__") and arrays[k].dtype.kind == "f"]
    for name in names if poison == "all" else ["conv0/W"]:
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "NaN or infinity" in err and "conv0/W" in err
    assert not (tmp_path / "out" / "small.mat").exists()


def test_a_network_answering_nan_stops_the_run(images, tmp_path, monkeypatch, capsys):
    """Issue 22.1: non-finite maps stop the run with one line instead of writing empty results."""
    import src.infer.predictor

    class _NanPredictor(_FakePredictor):
        def __call__(self, batch):
            return np.full_like(super().__call__(batch), np.nan)

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", _NanPredictor)
    model = tmp_path / "m.npz"
    np.savez(model, w=np.zeros(3, np.float32))
    code = infer.main(["--input", str(images), "--output", str(tmp_path / "out"), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "NaN or infinity" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*.mat"))


def test_a_second_run_into_an_output_folder_in_use_is_refused(images, tmp_path, monkeypatch, capsys):
    """Issue 22.8: a concurrent run into one folder died with a traceback or computed every image twice."""
    import src.infer.predictor
    from misc.io import folder_lock

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", _FakePredictor)
    model, out = tmp_path / "m.npz", tmp_path / "out"
    np.savez(model, w=np.zeros(3, np.float32))
    with folder_lock(out, "run"):
        code = infer.main(["--input", str(images), "--output", str(out), "--model", str(model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "in use by another run" in err and len(err.strip().splitlines()) == 1
    assert not list(out.glob("*.mat"))
    assert infer.main(["--input", str(images), "--output", str(out), "--model", str(model), "--quiet"]) == 0


def test_a_corrupt_tiff_is_skipped_before_the_model_loads_without_library_noise(tmp_path, monkeypatch, capfd):
    """Issue 22.11: a corrupt TIFF in --mode auto printed libtiff's and OpenCV's own lines ("TIFFReadDirectory: ...",
    "[ WARN:0@...] global loadsave.cpp ...") once the model had loaded; now it is skipped in one line, found before
    the model loads (a folder of nothing else loads none), and the libraries say nothing."""
    import src.infer.predictor

    events = []

    class Recording(_FakePredictor):
        def __init__(self, weights, cfg=None):
            events.append("model")
            super().__init__(weights, cfg)

    real_check = infer.check_image_header

    def check(path):
        events.append(f"checked {path.name}")
        return real_check(path)

    monkeypatch.setattr(src.infer.predictor, "HoVerNetPredictor", Recording)
    monkeypatch.setattr(infer, "check_image_header", check)
    folder, model = tmp_path / "in", tmp_path / "m.npz"
    folder.mkdir()
    np.savez(model, w=np.zeros(3, np.float32))  # --model must exist; the fake predictor never reads it
    bad = folder / "corrupt.tif"
    bad.write_bytes(b"II*\x00 not really a tiff")
    argv = ["--input", str(folder), "--model", str(model), "--quiet", "--formats", "mat"]
    assert infer.main([*argv, "--output", str(tmp_path / "alone")]) == 1
    assert events == ["checked corrupt.tif"]  # no model loaded for nothing
    cv2.imwrite(str(folder / "good.png"), np.random.default_rng(0).integers(0, 255, (60, 75, 3), dtype=np.uint8))
    events.clear()
    capfd.readouterr()
    assert infer.main([*argv, "--output", str(tmp_path / "out")]) == 1
    assert events == ["checked corrupt.tif", "checked good.png", "model"]
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "corrupt.tif" in line] == [
        f"infer.py: skipped {bad}: not a readable image"]
    assert not [line for line in err.splitlines() if re.search(r"TIFF|^\[ ?(WARN|ERROR)", line)]  # the libraries'
    assert (tmp_path / "out" / "good.mat").is_file()
