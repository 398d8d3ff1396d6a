"""src/config.py: published defaults, derived geometry, overrides, freezing."""
import pytest

from opt.schedules import get_phase, get_schedule, lr_for_epoch
from src.config import config_from_args, make_config


def test_published_defaults_and_derived_geometry():
    cfg = config_from_args()
    assert (cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE) == (270, 80)
    assert cfg.MODEL.DENSE_UNITS == (8, 4)  # (code), not the paper text's (4, 8)
    assert cfg.LOSS.MSGE == "published"
    # released-code defaults (issue 8), each with its alternative
    assert cfg.TARGETS.HV_PUBLISHED_OFFSET is True
    assert cfg.LOSS.MSGE_FOCUS == "published" and cfg.TRAIN.PHASE2_INIT == "last"
    assert config_from_args(["LOSS.MSGE_FOCUS=binary", "TRAIN.PHASE2_INIT=best",
                             "TARGETS.HV_PUBLISHED_OFFSET=False"]).LOSS.MSGE_FOCUS == "binary"
    with pytest.raises(ValueError, match="MSGE_FOCUS"):
        config_from_args(["LOSS.MSGE_FOCUS=ids"])
    assert cfg.LOSS.WEIGHTS["hv_mse"] == 2.0
    assert (cfg.POSTPROC.NP_THRESHOLD, cfg.POSTPROC.MARKER_THRESHOLD, cfg.POSTPROC.SOBEL_KSIZE) == (0.5, 0.4, 21)


def test_fast_mode_geometry():
    cfg = config_from_args(["MODEL.MODE='fast'"])
    assert (cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE) == (256, 164)


def test_overrides_parse_literals_and_bare_words():
    cfg = config_from_args(["MODEL.NR_TYPES=None", "LOSS.MSGE=paper", "POSTPROC.MIN_SIZE=12"])
    assert cfg.MODEL.NR_TYPES is None
    assert cfg.LOSS.MSGE == "paper"
    assert cfg.POSTPROC.MIN_SIZE == 12


@pytest.mark.parametrize("override, error", [
    ("MODEL.NO_SUCH_KEY=1", KeyError),
    ("NOSECTION.KEY=1", KeyError),
    ("MODEL.MODE", ValueError),
    ("MODEL.MODE=big", ValueError),
    ("LOSS.MSGE=other", ValueError),
    ("MODEL.NR_TYPES=1", ValueError),
])
def test_bad_overrides_are_errors(override, error):
    with pytest.raises(error):
        config_from_args([override])


def test_finalized_config_is_frozen_and_fresh_configs_are_independent():
    cfg = config_from_args()
    with pytest.raises(AttributeError):
        cfg.MODEL.MODE = "fast"
    with pytest.raises(AttributeError):
        _ = cfg.MODEL.NOT_A_KEY
    other = make_config()
    other.MODEL.MODE = "fast"
    assert cfg.MODEL.MODE == "original"


def test_published_schedule():
    phase1, phase2 = get_schedule("published")
    assert (phase1.freeze_encoder, phase1.batch_size_per_gpu, phase1.epochs) == (True, 8, 50)
    assert (phase2.freeze_encoder, phase2.batch_size_per_gpu, phase2.epochs) == (False, 4, 50)
    assert phase1.lr_schedule == phase2.lr_schedule == ((0, 1e-4), (25, 1e-5))
    # tensorpack sets a value after the epoch it names: 1e-4 in epochs 1-25, 1e-5 from epoch 26
    assert [lr_for_epoch(phase1, e) for e in (1, 25, 26, 50)] == [1e-4, 1e-4, 1e-5, 1e-5]
    assert get_phase("published", 2) is phase2
    with pytest.raises(ValueError):
        get_phase("published", 3)
    with pytest.raises(KeyError, match="known"):
        get_schedule("nope")


def test_schedule_matches_tensorpack_scheduled_hyperparam_setter():
    """lr_for_epoch agrees with what tensorpack's ScheduledHyperParamSetter has set before each epoch."""
    from tensorpack.callbacks import ScheduledHyperParamSetter

    phase = get_phase("published", 1)
    setter = ScheduledHyperParamSetter("learning_rate", list(phase.lr_schedule))
    value = None
    for epoch in range(1, phase.epochs + 1):
        # before epoch e, the values of points 0 .. e-1 (completed epochs) have been set, in order
        value = setter._get_value_to_set_at_point(epoch - 1) or value
        assert value == lr_for_epoch(phase, epoch), epoch
