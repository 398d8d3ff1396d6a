"""src/model/weights_file.py: --model paths, the .npz format, and the training config recorded with the weights."""
import json

import numpy as np
import pytest
import tensorflow as tf
from shrunk_networks import MICRO

from misc.io import InputError
from src.config import config_from_args
from src.model.weights import read_weights
from src.model.weights_file import (
    METADATA_KEY,
    TP_HEAD_BIAS,
    checkpoint_prefix,
    detect_nr_types,
    model_config,
    open_model,
    read_npz,
    recorded_config,
    recorded_overrides,
    resolve_model_path,
    weights_digest,
    write_npz,
)


def _phase(folder, overrides, weights=None):
    """A phase folder as train.py leaves it: run.json with the finalised config, and a model-best (a checkpoint
    of ``weights``, {name: value}, or an empty stand-in)."""
    folder.mkdir(parents=True)
    cfg = config_from_args(overrides)
    (folder / "run.json").write_text(json.dumps({"phase": "phase1", "config": cfg.to_dict()}, default=str))
    if weights is None:
        (folder / "model-best.index").write_bytes(b"")
        return folder
    tf1 = tf.compat.v1
    with tf.Graph().as_default():
        variables = [tf1.Variable(value, name=name) for name, value in weights.items()]
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver(variables).save(sess, str(folder / "model-best"), write_meta_graph=False)
    return folder


def test_run_and_phase_folders_resolve_to_model_best(tmp_path):
    _phase(tmp_path / "run" / "phase1", MICRO)
    assert resolve_model_path(tmp_path / "run") == tmp_path / "run" / "phase1" / "model-best"
    _phase(tmp_path / "run" / "phase2", MICRO)
    assert resolve_model_path(tmp_path / "run") == tmp_path / "run" / "phase2" / "model-best"
    assert resolve_model_path(tmp_path / "run" / "phase1") == tmp_path / "run" / "phase1" / "model-best"
    assert resolve_model_path(tmp_path / "w.npz") == tmp_path / "w.npz"


def test_recorded_training_config_builds_the_network_and_overrides_win(tmp_path):
    phase = _phase(tmp_path / "phase1", [*MICRO, "MODEL.NR_TYPES=7", "LOSS.MSGE=paper"])
    cfg = model_config(phase / "model-best")
    assert cfg.MODEL.ENCODER_CHANNELS == (4, 4, 8, 16) and cfg.MODEL.NR_TYPES == 7
    assert cfg.DATA.TYPE_NAMES[0] == "background"  # integer keys again after JSON
    assert cfg.LOSS.MSGE == "published"  # training-only sections are not taken over
    assert model_config(phase / "model-best", ["MODEL.NR_TYPES=None"]).MODEL.NR_TYPES is None
    assert recorded_config(tmp_path / "w.npz") is None
    assert model_config(tmp_path / "w.npz").MODEL.ENCODER_CHANNELS == (64, 128, 256, 512)


def test_recorded_overrides_carry_what_does_not_shape_the_graph(tmp_path):
    """xla_runner infer's graph is the export's; the file's POSTPROC and type names still apply (issue 21)."""
    path = tmp_path / "bundle.npz"
    record = {"MODEL": {"PRESET": "small"}, "POSTPROC": {"MARKER_THRESHOLD": 0.7, "SOBEL_KSIZE": 11},
              "DATA": {"TYPE_NAMES": {"0": "background", "1": "nucleus"}, "TYPE_MERGE": {"1": 1}}}
    np.savez(path, w=np.zeros(2, np.float32), **{METADATA_KEY: np.array(json.dumps(record))})
    overrides = recorded_overrides(path)
    assert overrides == ["DATA.TYPE_NAMES={0: 'background', 1: 'nucleus'}", "POSTPROC.MARKER_THRESHOLD=0.7",
                         "POSTPROC.SOBEL_KSIZE=11"]  # never MODEL, and only the recorded DATA key
    cfg = config_from_args([*overrides, "POSTPROC.SOBEL_KSIZE=5"])  # the user's --config still wins
    assert (cfg.POSTPROC.MARKER_THRESHOLD, cfg.POSTPROC.SOBEL_KSIZE, cfg.DATA.TYPE_NAMES[1]) == (0.7, 5, "nucleus")
    assert cfg.POSTPROC.MARKER_THRESHOLD == model_config(path).POSTPROC.MARKER_THRESHOLD  # what infer.py uses
    assert recorded_overrides(tmp_path / "none.npz") == []


@pytest.mark.slow
def test_infer_loads_a_checkpoint_trained_with_overrides_without_repeating_them(tmp_path, capsys, micro_weights_npz):
    import cv2

    import infer

    _phase(tmp_path / "run" / "phase1", MICRO, weights=read_weights(micro_weights_npz))  # the same MICRO network
    (tmp_path / "tiles").mkdir()
    cv2.imwrite(str(tmp_path / "tiles" / "a.png"), np.full((20, 30, 3), 200, np.uint8))
    code = infer.main(["--input", str(tmp_path / "tiles"), "--output", str(tmp_path / "out"),
                       "--model", str(tmp_path / "run"), "--quiet", "--formats", "mat"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "a.mat").is_file()


def test_open_model_reads_an_npz_once_into_path_config_digest_and_arrays(micro_weights_npz, tmp_path):
    copy = tmp_path / "copy.npz"
    copy.write_bytes(micro_weights_npz.read_bytes())
    weights = open_model(copy, ["POSTPROC.MIN_SIZE=3"])
    assert weights.path == str(copy) and weights.digest == weights_digest(copy)
    assert weights.nr_types == 5 and weights.cfg.MODEL.ENCODER_CHANNELS == (4, 4, 8, 16)  # the MICRO record
    assert weights.cfg.POSTPROC.MIN_SIZE == 3 and weights.overrides == ("POSTPROC.MIN_SIZE=3",)
    assert set(weights.arrays) == set(read_npz(copy)[0]) and weights.metadata["MODEL"]["NR_TYPES"] == 5
    assert weights.run_identity() == {"weights": weights.digest, "model_path": str(copy.resolve())}
    # a bundled name and a folder resolve as --model does; a missing file is one InputError naming --model
    assert open_model("small-consep").path.endswith("models/small-consep.npz")
    with pytest.raises(InputError, match="--model nope"):
        open_model("nope")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a weights file"):
        open_model(tmp_path / "broken.npz")


def test_read_and_write_npz_are_one_format(tmp_path):
    arrays = {"conv0/W": np.ones((3, 3), np.float16), "conv0/b": np.zeros(3, np.float32)}
    write_npz(tmp_path / "w.npz", arrays, {"MODEL": {"MODE": "fast"}}, compress=True)
    read, metadata = read_npz(tmp_path / "w.npz")
    assert metadata == {"MODEL": {"MODE": "fast"}} and read["conv0/W"].dtype == np.float32  # half -> graph's float
    assert read_npz((tmp_path / "w.npz").read_bytes(), name="w")[1] == metadata
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="objects.npz: not a weights file") as info:
        read_npz(tmp_path / "objects.npz")
    assert "allow_pickle" not in str(info.value)


def test_checkpoint_prefix_reads_tensorflows_checkpoint_list_without_tensorflow(tmp_path):
    (tmp_path / "model-20.index").write_bytes(b"")
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model-20"\nall_model_checkpoint_paths: "model-10"\n')
    assert checkpoint_prefix(tmp_path) == str(tmp_path / "model-20") == checkpoint_prefix(tmp_path / "checkpoint")
    assert checkpoint_prefix(tmp_path / "model-20.index") == str(tmp_path / "model-20")
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{tmp_path / "model-20"}"\n')  # absolute
    assert checkpoint_prefix(tmp_path) == str(tmp_path / "model-20")
    with pytest.raises(FileNotFoundError):
        checkpoint_prefix(tmp_path / "empty")
    # an xla_runner phase folder resolves to its model-best.npz, as a train.py one to its model-best
    (tmp_path / "xla" / "phase1").mkdir(parents=True)
    (tmp_path / "xla" / "phase1" / "model-best.npz").write_bytes(b"")
    assert resolve_model_path(tmp_path / "xla") == tmp_path / "xla" / "phase1" / "model-best.npz"


def test_detect_nr_types():
    assert detect_nr_types({TP_HEAD_BIAS: (5,), "conv0/W": (7, 7, 3, 64)}) == 5
    assert detect_nr_types({"conv0/W": (7, 7, 3, 64)}) is None
