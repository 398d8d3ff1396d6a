"""train.py and src/train/trainer.py on the CPU: run directories, trainer choice, two-tower training, resume.

A tiny network keeps every step fast: the published geometry (270 -> 80, dense units (8, 4), so the same
crops and shapes) with every width shrunk through the config, the way a user would override it.
"""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from shrunk_networks import MICRO
from tensorpack import (
    Callback,
    QueueInput,
    SimpleTrainer,
    SyncMultiGPUTrainerReplicated,
    TrainConfig,
    launch_train_with_config,
)
from tensorpack.dataflow import DataFromList
from tensorpack.utils import logger
from test_run_folder import finished_phase

import train
from dataset.dataflow import TrainingDataPreprocessor, get_train_dataflow, get_valid_dataflow
from misc.io import InputError, save_label_mat
from src.config import config_from_args
from src.model.graph import COST_NAME, HoVerNet
from src.train import trainer
from src.train.run_folder import BEST_CHECKPOINT, FINISHED_MARKER, RUN_HISTORY, inspect_run_dir
from src.train.trainer import Dataflows, PooledDice, Towers, TrainOptions, select_trainer

pytestmark = pytest.mark.slow

DATAFLOWS = Dataflows(train=get_train_dataflow, valid=get_valid_dataflow)  # what train.py passes


def _synthetic_patch(rng, size=540):
    """One HxWx5 int32 patch (RGB, instance id, type id) of dark discs on a light background."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    types = np.zeros_like(inst)
    for inst_id in range(1, 60):
        cy, cx = rng.integers(150, size - 150, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(6, 12) ** 2
        inst[disc & (inst == 0)] = inst_id
        types[disc & (types == 0)] = rng.integers(1, 5)
    image = np.full((size, size, 3), 220, np.int32)
    image[inst > 0] = (90, 40, 140)
    image = np.clip(image + rng.integers(-10, 10, image.shape), 0, 255)
    return np.dstack([image, inst, types]).astype(np.int32)


@pytest.fixture(scope="module")
def patch_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(folder / f"synthetic_{i}.npy", _synthetic_patch(rng))
    return folder


def _args(patch_dir, out_dir, *extra, validate=True):
    valid = ["--valid_dir", str(patch_dir)] if validate else []
    return ["--data_dir", str(patch_dir), *valid, "--out_dir", str(out_dir), "--batch_size", "1",
            "--steps_per_epoch", "2", "--workers", "0", *extra, "--config", *MICRO]


def test_towers_are_the_one_place_that_knows_the_gpus(monkeypatch, caplog):
    monkeypatch.setattr(trainer.tf.config, "list_physical_devices", lambda kind=None: [])
    assert Towers.detect([]) == Towers(count=1, on_gpu=False) == TrainOptions("t", "o").towers
    towers = Towers.detect(["0", "1"])
    assert towers == Towers(count=2, on_gpu=False) and not towers.parallel_validation
    assert "no GPU visible: the 2 tower(s) will run on the CPU" in caplog.text
    monkeypatch.setattr(trainer.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0", "GPU:1"])
    assert Towers.detect(["0", "1"]).parallel_validation and not Towers.detect(["0"]).parallel_validation


def test_train_refuses_foreign_phase_before_any_work(tmp_path):
    out = tmp_path / "run"
    (out / "phase2").mkdir(parents=True)
    (out / "phase2" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a training run"):
        trainer.train(config_from_args(MICRO, is_training=True),
                       TrainOptions(tmp_path / "no_patches", out, phases=(1, 2), epochs=1), DATAFLOWS)
    assert not (out / "phase1").exists()


def _fake_launch(epochs_done):
    """Stands in for launch_train_with_config: leaves what tensorpack would after ``epochs_done`` epochs."""
    def launch(config, trainer):
        finished_phase(Path(logger.get_logger_dir()), epochs_done)
        (Path(logger.get_logger_dir()) / FINISHED_MARKER).unlink()
    return launch


def test_train_stopped_early_is_not_finished(patch_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "launch_train_with_config", _fake_launch(1))  # loop ended after epoch 1
    assert train.main(["--phase", "1", "--epochs", "3", *_args(patch_dir, out)]) == 1
    err = capsys.readouterr().err
    assert "training stopped after epoch 1 of 3" in err and str(out / "phase1" / "log.log") in err
    assert not (out / "phase1" / FINISHED_MARKER).exists()
    assert inspect_run_dir(out / "phase1", epochs=3).kind == "resume"


def test_train_gpu_flag_overwrite_and_history(patch_dir, tmp_path, monkeypatch):
    assert train.parse_args(["--data_dir", "x", "--out_dir", "y"]).gpu is None
    out = tmp_path / "run"
    phase1 = out / "phase1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # restored after the test
    monkeypatch.setattr(trainer, "launch_train_with_config", _fake_launch(1))
    assert train.main(["--phase", "1", "--epochs", "1", *_args(patch_dir, out)]) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"  # default: whatever TensorFlow sees
    assert train.main(["--gpu", "", "--phase", "1", "--epochs", "1", "--overwrite", *_args(patch_dir, out)]) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # '' forces the CPU
    assert json.loads((phase1 / "run.json").read_text())["towers"] == 1
    assert json.loads((phase1 / FINISHED_MARKER).read_text())["epochs"] == 1
    assert len([p for p in out.iterdir() if p.name.startswith("phase1.old-")]) == 1
    assert len((phase1 / RUN_HISTORY).read_text().splitlines()) == 1  # a fresh directory

    # Finished with the requested epochs: refused; with more: continued, keeping the first run.json.
    assert train.main(["--phase", "1", "--epochs", "1", *_args(patch_dir, out)]) == 2
    monkeypatch.setattr(trainer, "launch_train_with_config", _fake_launch(2))
    assert train.main(["--phase", "1", "--epochs", "2", "--batch_size", "2", *_args(patch_dir, out)]) == 0
    assert json.loads((phase1 / FINISHED_MARKER).read_text())["epochs"] == 2
    assert json.loads((phase1 / "run.json").read_text())["epochs"] == 1
    history = [json.loads(line) for line in (phase1 / RUN_HISTORY).read_text().splitlines()]
    assert [(h["start"], h["epochs"]) for h in history] == [("new", 1), ("resume", 2)]


def test_select_trainer_from_tower_count():
    assert isinstance(select_trainer(1), SimpleTrainer)
    assert isinstance(select_trainer(2), SyncMultiGPUTrainerReplicated)
    with pytest.raises(ValueError):
        select_trainer(0)


def test_train_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train.main(_args(empty, tmp_path / "run")) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "run" / "phase1").exists()  # bad data fails before the phase folder is written
    assert train.main(["--phase", "2", *_args(empty, tmp_path / "run2")]) == 2
    assert not (tmp_path / "run2" / "phase2").exists()
    with pytest.raises(SystemExit):
        train.main(["--data_dir", "x", "--out_dir", "y", "--epochs", "0"])


class _SetLearningRate(Callback):
    def __init__(self, value):
        self.value = value

    def _setup_graph(self):
        variable = next(v for v in tf.compat.v1.global_variables() if v.op.name == "learning_rate")
        self.assign = tf.compat.v1.assign(variable, self.value)

    def _before_train(self):
        self.trainer.sess.run(self.assign)


class _RecordCost(Callback):
    def __init__(self):
        self.costs = []

    def _before_run(self, _):
        return tf.compat.v1.train.SessionRunArgs(fetches=f"{COST_NAME}:0")

    def _after_run(self, _, run_values):
        self.costs.append(float(run_values.results))


def test_loss_falls_when_overfitting_one_batch(patch_dir, tmp_path):
    cfg = config_from_args(MICRO)
    patch = np.load(sorted(patch_dir.iterdir())[0])
    mapper = TrainingDataPreprocessor(cfg, is_training=False)
    datapoint = mapper.process(patch[..., :3].astype(np.uint8), patch[..., 3:], None)
    batch = [np.stack([component] * 2) for component in datapoint]
    recorder = _RecordCost()

    tf.compat.v1.reset_default_graph()
    logger.set_logger_dir(str(tmp_path / "overfit"), action="k")
    # A larger step than the published 1e-4, so that 8 steps show the trend (the MICRO network's cost fell from 92
    # to 24, each step lower than the one before).
    config = TrainConfig(model=HoVerNet(nr_types=5, cfg=cfg), data=QueueInput(DataFromList([batch], shuffle=False)),
                         callbacks=[recorder, _SetLearningRate(1e-3)], steps_per_epoch=8, max_epoch=1)
    launch_train_with_config(config, SimpleTrainer())
    costs = recorder.costs
    assert len(costs) == 8 and all(np.isfinite(costs))
    assert np.mean(costs[-3:]) < 0.6 * np.mean(costs[:3]), costs


def test_validation_dice_is_pooled_over_the_set_not_averaged_over_batches():
    dice = PooledDice()
    dice._before_inference()
    assert dice._get_fetches() == ["np_dice_inter", "np_dice_total"]
    dice._on_fetches([40.0, 100.0])  # a full batch: Dice 0.8
    dice._on_fetches([0.0, 0.0])  # a short batch without nuclei: per-batch Dice would call it 1.0
    dice._on_fetches([1.0, 10.0])  # a short batch: Dice 0.2
    assert dice._after_inference() == {"validation_np_dice": pytest.approx(2 * 41 / 110)}
    empty = PooledDice()
    empty._before_inference()
    assert empty._after_inference() == {"validation_np_dice": 1.0}


# The run-folder life test checks run bookkeeping, not the network: the MICRO network without the type branch
# (one decoder less to build per run and tower).
NO_TYPES = "MODEL.NR_TYPES=None"


def test_run_folder_life_on_two_cpu_towers_interrupt_resume_phase2(patch_dir, tmp_path, caplog, monkeypatch,
                                                                   micro_weights_npz):
    """A phase-1 folder from start to phase 2: a new run from an encoder-only file; Ctrl-C between epoch 2's
    checkpoint and its validation (issue 13.2: the resume must not restore that checkpoint and run epoch 2
    again); the resume, on two CPU towers (the replicated trainer restoring a one-tower checkpoint into both
    towers); the refusal once finished; phase 2 on one tower from phase 1's last checkpoint, written by the two
    towers. One run on two towers: each costs twice the graph building of a one-tower run. (A finished run
    continued with more epochs: test_train_gpu_flag_overwrite_and_history.)"""
    out = tmp_path / "run"
    phase1 = out / "phase1"
    pretrained = tmp_path / "imagenet_like.npz"
    with np.load(micro_weights_npz) as full:  # an encoder-only file, as the ImageNet weights are
        np.savez(pretrained, **{k: full[k] for k in full.files if k.split("/")[0] in ("conv0", "group0")})
    two_towers = ["--gpu", "0,1", "--phase", "1", "--epochs", "2", *_args(patch_dir, out), NO_TYPES]

    validations = {"n": 0}
    original = PooledDice._after_inference

    def interrupted_second_validation(self):
        validations["n"] += 1
        if validations["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(PooledDice, "_after_inference", interrupted_second_validation)
    caplog.set_level("INFO")
    assert train.main(["--phase", "1", "--epochs", "2",
                       *_args(patch_dir, out, "--pretrained", str(pretrained)), NO_TYPES]) == 130
    assert "loading" in caplog.text and "keep their initial values" in caplog.text
    assert (phase1 / "checkpoint").is_file() and (phase1 / f"{BEST_CHECKPOINT}.index").is_file()
    stats = json.loads((phase1 / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1] and [s["global_step"] for s in stats] == [2]
    assert 0.0 <= stats[0]["validation_np_dice"] <= 1.0
    assert (phase1 / "model-4.index").is_file()  # the checkpoint one epoch ahead of stats.json
    assert not (phase1 / FINISHED_MARKER).exists()

    monkeypatch.setattr(PooledDice, "_after_inference", original)
    assert train.main(two_towers) == 0  # resumes after epoch 1, on two towers
    assert "resuming" in caplog.text and "with different towers than it started with" in caplog.text
    stats = json.loads((phase1 / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1, 2] and [s["global_step"] for s in stats] == [2, 4]
    assert json.loads((phase1 / FINISHED_MARKER).read_text())["epochs"] == 2
    assert train.main(two_towers) == 2  # finished with the epochs asked for: refused

    history = [json.loads(line) for line in (phase1 / RUN_HISTORY).read_text().splitlines()]
    assert [(h["start"], h["towers"], h["epochs"]) for h in history] == [("new", 1, 2), ("resume", 2, 2)]
    assert json.loads((phase1 / "run.json").read_text())["towers"] == 1  # the first settings are kept

    # Phase 2 starts from phase 1's last checkpoint (largest global step, as released), on one CPU tower; here
    # without validation (no --valid_dir), which ends with the last checkpoint and no model-best.
    assert train.main(["--phase", "2", "--epochs", "1", *_args(patch_dir, out, validate=False), NO_TYPES]) == 0
    run2 = json.loads((out / "phase2" / "run.json").read_text())
    assert run2["init"].endswith("phase1/model-4") and run2["batch_size_per_tower"] == 1
    assert (out / "phase2" / FINISHED_MARKER).is_file() and (out / "phase2" / "checkpoint").is_file()
    assert not (out / "phase2" / f"{BEST_CHECKPOINT}.index").exists()


def test_bad_config_value_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Issue 13.8: MODEL.ENCODER_CHANNELS=abc was a raw TypeError after phase1/ was made."""
    out = tmp_path / "run"
    code = train.main(["--data_dir", str(tmp_path), "--out_dir", str(out), "--config", "MODEL.ENCODER_CHANNELS=abc"])
    err = capsys.readouterr().err
    assert code == 2 and "MODEL.ENCODER_CHANNELS" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_ctrl_c_is_one_line_and_exit_130(patch_dir, tmp_path, monkeypatch, capsys):
    """Issue 13.9: no traceback; one line and exit status 130."""
    def interrupted(config, trainer):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "launch_train_with_config", interrupted)
    assert train.main(["--phase", "1", "--epochs", "1", *_args(patch_dir, tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == ("train.py: interrupted; rerun the same command to resume from the "
                                               "last checkpoint")


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    """Two labelled 200x200 tiles (Images/ + Labels/) of touching synthetic nuclei, for --valid_images."""
    folder = tmp_path_factory.mktemp("tiles")
    (folder / "Images").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        patch = _synthetic_patch(rng)[170:370, 170:370]  # where the discs are
        bgr = cv2.cvtColor(patch[..., :3].astype(np.uint8), cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(folder / "Images" / f"tile_{i}.png"), bgr)
        save_label_mat(folder / "Labels" / f"tile_{i}.mat", patch[..., 3])
    return folder


def test_validation_on_post_processed_tiles_picks_model_best_by_pq(patch_dir, tiles_dir, tmp_path, capsys):
    """Issue 20.3: every epoch the held-out tiles go through inference and post-processing; AJI, PQ, DICE and the
    HV scores land in stats.json and curves.png, and TRAIN.BEST_METRIC=pq keeps model-best by the tiles' PQ."""
    out = tmp_path / "run"
    assert train.main(["--phase", "1", "--epochs", "1", *_args(patch_dir, out), "TRAIN.BEST_METRIC='pq'"]) == 2
    assert "--valid_images" in capsys.readouterr().err  # PQ needs the tiles: refused before training
    assert not (out / "phase1" / "checkpoint").exists()

    assert train.main(["--phase", "1", "--epochs", "2", "--valid_images", str(tiles_dir),
                       *_args(patch_dir, out), "TRAIN.BEST_METRIC='pq'"]) == 0
    phase1 = out / "phase1"
    stats = json.loads((phase1 / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1, 2]
    for record in stats:
        for key in ("tiles_dice", "tiles_aji", "tiles_pq", "tiles_np_dice", "tiles_hv_mse", "validation_np_dice"):
            assert 0.0 <= record[key] <= 1.0 or key == "tiles_hv_mse", (key, record)
        assert record["tiles_hv_mse_zero"] > 0.05  # the targets of touching discs: a real baseline
    assert (phase1 / f"{BEST_CHECKPOINT}.index").is_file() and (phase1 / "curves.png").is_file()
    assert json.loads((phase1 / "run.json").read_text())["config"]["TRAIN"]["BEST_METRIC"] == "pq"


def test_a_second_run_into_a_run_folder_in_use_is_refused(patch_dir, tmp_path, capsys):
    """Issue 22.2: both runs logged 'start: new' and the second's worse model-best replaced the first's."""
    from misc.io import folder_lock

    out = tmp_path / "run"
    with folder_lock(out, "training run"):  # another train.py (or xla_runner train) holding the folder
        assert train.main(["--phase", "1", "--epochs", "1", *_args(patch_dir, out)]) == 2
    err = capsys.readouterr().err
    assert "in use by another training run" in err and len(err.strip().splitlines()) == 1
    assert not (out / "phase1").exists()
