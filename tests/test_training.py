"""train.py and src/training.py on the CPU: run directories, trainer choice, two-tower training, resume.

A tiny network keeps every step fast: the published geometry (270 -> 80, dense units (8, 4), so the same
crops and shapes) with every width shrunk through the config, the way a user would override it.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
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

import train
from dataset.dataflow import TrainingDataPreprocessor
from misc.io import InputError
from src.config import config_from_args
from src.model.graph import COST_NAME, HoVerNet
from src.model.weights import save_initial_weights
from src.training import BEST_CHECKPOINT, FINISHED_MARKER, inspect_run_dir, prepare_run_dir, select_trainer

pytestmark = pytest.mark.slow

# Same geometry as the published model, widths shrunk: group outputs (16, 16, 32, 64); the decoder sums
# need conv_bot = group2 output, 2*u3 = group1 output, 2*u2 = group0 output.
TINY = ["MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)", "MODEL.BOTTLENECK_CHANNELS=32",
        "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_BOTTLENECK=8", "MODEL.DENSE_GROWTH=4"]


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


def _args(patch_dir, out_dir, *extra):
    return ["--data_dir", str(patch_dir), "--valid_dir", str(patch_dir), "--out_dir", str(out_dir),
            "--batch_size", "1", "--steps_per_epoch", "2", "--workers", "0", *extra, "--config", *TINY]


def test_run_dir_states_and_refusals(tmp_path):
    run = tmp_path / "run"
    assert inspect_run_dir(run).kind == "new"
    assert prepare_run_dir(run, overwrite=False).kind == "new" and run.is_dir()
    (run / "checkpoint").write_text('model_checkpoint_path: "model-2"')
    (run / "stats.json").write_text(json.dumps([{"epoch_num": 1, "global_step": 2}]))
    state = prepare_run_dir(run, overwrite=False)
    assert (state.kind, state.last_epoch) == ("resume", 1)
    (run / FINISHED_MARKER).write_text("{}")
    with pytest.raises(InputError, match="finished run"):
        prepare_run_dir(run, overwrite=False)
    assert prepare_run_dir(run, overwrite=True).kind == "new"
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(backups) == 1 and (backups[0] / FINISHED_MARKER).is_file()  # moved aside, not deleted
    assert list(run.iterdir()) == []
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a training run"):
        prepare_run_dir(foreign, overwrite=False)


def test_select_trainer_from_tower_count():
    assert isinstance(select_trainer(1), SimpleTrainer)
    assert isinstance(select_trainer(2), SyncMultiGPUTrainerReplicated)
    with pytest.raises(ValueError):
        select_trainer(0)


def test_train_two_cpu_towers_checkpoint_resume_and_phase2(patch_dir, tmp_path, caplog):
    out = tmp_path / "run"
    pretrained = tmp_path / "imagenet_like.npz"
    cfg = config_from_args(TINY)
    save_initial_weights(tmp_path / "full.npz", cfg, nr_types=5)
    with np.load(tmp_path / "full.npz") as full:  # an encoder-only file, as the ImageNet weights are
        np.savez(pretrained, **{k: full[k] for k in full.files if k.split("/")[0] in ("conv0", "group0")})

    caplog.set_level("INFO")
    assert train.main(["--gpu", "0,1", "--phase", "1", "--epochs", "1", "--pretrained", str(pretrained),
                       *_args(patch_dir, out)]) == 0
    phase1 = out / "phase1"
    assert "loading" in caplog.text and "keep their initial values" in caplog.text
    assert (phase1 / "checkpoint").is_file() and (phase1 / f"{BEST_CHECKPOINT}.index").is_file()
    stats = json.loads((phase1 / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1] and "validation_np_dice" in stats[0]
    assert 0.0 <= stats[0]["validation_np_dice"] <= 1.0
    assert json.loads((phase1 / "run.json").read_text())["towers"] == 2

    # A finished run is refused ...
    assert train.main(["--gpu", "0,1", "--phase", "1", "--epochs", "2", *_args(patch_dir, out)]) == 2
    # ... an interrupted one (no finished marker) resumes after its last epoch instead of starting over.
    (phase1 / FINISHED_MARKER).unlink()
    assert train.main(["--gpu", "0,1", "--phase", "1", "--epochs", "2", *_args(patch_dir, out)]) == 0
    stats = json.loads((phase1 / "stats.json").read_text())
    assert [s["epoch_num"] for s in stats] == [1, 2]
    assert [s["global_step"] for s in stats] == [2, 4]

    # Phase 2 starts from phase 1's best checkpoint, on one CPU tower.
    assert train.main(["--phase", "2", "--epochs", "1", *_args(patch_dir, out)]) == 0
    run2 = json.loads((out / "phase2" / "run.json").read_text())
    assert run2["init"].endswith(f"phase1/{BEST_CHECKPOINT}") and run2["batch_size_per_tower"] == 1
    assert (out / "phase2" / FINISHED_MARKER).is_file()


def test_train_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train.main(_args(empty, tmp_path / "run")) == 2
    assert "empty" in capsys.readouterr().err
    assert train.main(["--phase", "2", *_args(empty, tmp_path / "run2")]) == 2
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
    cfg = config_from_args(TINY)
    patch = np.load(sorted(patch_dir.iterdir())[0])
    mapper = TrainingDataPreprocessor(cfg, is_training=False)
    datapoint = mapper.process(patch[..., :3].astype(np.uint8), patch[..., 3:], None)
    batch = [np.stack([component] * 2) for component in datapoint]
    recorder = _RecordCost()

    tf.compat.v1.reset_default_graph()
    logger.set_logger_dir(str(tmp_path / "overfit"), action="k")
    # A larger step than the published 1e-4, so that 40 steps show the trend.
    config = TrainConfig(model=HoVerNet(nr_types=5, cfg=cfg), data=QueueInput(DataFromList([batch], shuffle=False)),
                         callbacks=[recorder, _SetLearningRate(1e-3)], steps_per_epoch=40, max_epoch=1)
    launch_train_with_config(config, SimpleTrainer())
    costs = recorder.costs
    assert len(costs) == 40 and all(np.isfinite(costs))
    assert np.mean(costs[-5:]) < 0.6 * np.mean(costs[:5]), costs


