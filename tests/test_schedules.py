"""opt/schedules.py: the schedules as data, and both trainers (tensorpack's train.py, xla_runner train) reading them
the same way: the learning rate of every epoch and the checkpoint phase 2 starts from (issue 21.2)."""
import pytest
from tensorpack.callbacks import ScheduledHyperParamSetter

import src.train.trainer as tp_train
import xla_runner.train as xla_train
from opt.schedules import SCHEDULES, get_phase, lr_for_epoch
from src.train.run_folder import phase_init_checkpoint


def _tensorpack_lr(phase, epoch: int) -> float:
    """The value tensorpack's ScheduledHyperParamSetter has set when ``epoch`` (1-based) runs: the last one it set
    at a point (an epoch that has finished, 0 = before training) before it."""
    setter = ScheduledHyperParamSetter("learning_rate", list(phase.lr_schedule))
    value = None
    for point in range(epoch):
        value = setter._get_value_to_set_at_point(point) or value
    return value


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_gives_tensorpacks_learning_rate_in_both_trainers(name):
    assert xla_train.lr_for_epoch is lr_for_epoch  # the XLA trainer has no schedule logic of its own
    for index in range(1, len(SCHEDULES[name]) + 1):
        phase = get_phase(name, index)
        for epoch in range(1, phase.epochs + 6):
            assert lr_for_epoch(phase, epoch) == _tensorpack_lr(phase, epoch), (name, index, epoch)


def test_published_drop_after_epoch_25():
    phase = get_phase("published", 1)
    assert [lr_for_epoch(phase, e) for e in (1, 25, 26, 50)] == [1e-4, 1e-4, 1e-5, 1e-5]


@pytest.mark.parametrize("init", ["last", "best"])
def test_both_trainers_start_phase_2_from_the_same_epoch(tmp_path, init):
    """Phase 1 ran 3 epochs, its best at epoch 2: 'last' (published) starts from epoch 3 in both trainers, which
    share the rule (src.train.run_folder) and differ only in their checkpoints' names."""
    assert tp_train.phase_start is xla_train.phase_start  # the rule and its refusal, in src.train.run_folder
    tp_run, xla_run = tmp_path / "tp", tmp_path / "xla"
    (tp_run / "phase1").mkdir(parents=True)
    (xla_run / "phase1").mkdir(parents=True)
    for epoch in (2, 3):  # both keep the last two epochs' checkpoints
        (tp_run / "phase1" / f"model-{10 * epoch}.index").write_bytes(b"")
        (xla_run / "phase1" / f"model-epoch{epoch}.npz").write_bytes(b"")
    (tp_run / "phase1" / "model-best.index").write_bytes(b"")
    (xla_run / "phase1" / "model-best.npz").write_bytes(b"")
    tp_start = phase_init_checkpoint(tp_run, 2, init)
    xla_start = phase_init_checkpoint(xla_run, 2, init)
    assert tp_start.name == ("model-30" if init == "last" else "model-best")
    assert xla_start.name == ("model-epoch3.npz" if init == "last" else "model-best.npz")
    assert phase_init_checkpoint(tmp_path / "none", 2, init) is None


def test_lr_schedule_override_replaces_every_phases_rates_in_both_trainers():
    """TRAIN.LR_SCHEDULE: a scratch run's rate dropped early; both trainers read the phase through get_phase."""
    from src.config import config_from_args

    cfg = config_from_args(["TRAIN.SCHEDULE=scratch", "TRAIN.LR_SCHEDULE=((0, 1e-3), (22, 1e-4))"])
    phase = get_phase(cfg.TRAIN.SCHEDULE, 1, cfg.TRAIN.LR_SCHEDULE)
    assert phase.epochs == 36 and phase.init == "scratch"  # only the rates change
    assert [lr_for_epoch(phase, e) for e in (22, 23)] == [1e-3, 1e-4] == [_tensorpack_lr(phase, e) for e in (22, 23)]
    assert get_phase("scratch", 1, None) == get_phase("scratch", 1)
    for bad in ("((1, 1e-3),)", "((0, 0),)", "((0, 1e-3), (5, 1e-4), (3, 1e-5))", "5"):
        with pytest.raises(ValueError, match="TRAIN.LR_SCHEDULE"):
            config_from_args([f"TRAIN.LR_SCHEDULE={bad}"])
