"""src/config.py: published defaults, derived geometry, overrides, freezing."""
import pytest

from opt.schedules import get_phase, get_schedule, lr_for_epoch
from src.config import _RULES, config_from_args, make_config


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


def test_small_preset_sets_its_widths_and_explicit_overrides_win():
    cfg = config_from_args(["MODEL.PRESET=small", "MODEL.MODE=fast"])
    assert cfg.MODEL.PRESET == "small"
    assert (cfg.MODEL.CONV0_CHANNELS, cfg.MODEL.ENCODER_CHANNELS, cfg.MODEL.DENSE_UNITS) == (8, (8, 16, 32, 64), (4, 2))
    # fewer dense units shrink the decoder less: the derived output grows from 164 to 204
    assert (cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE) == (256, 204)
    assert (cfg.DATA.PATCH_SIZE, cfg.DATA.PATCH_STEP) == (512, 204)
    # the preset goes first whatever the order on the command line, so an explicit key still wins
    cfg = config_from_args(["MODEL.DENSE_UNITS=(8,4)", "MODEL.PRESET=small"])
    assert cfg.MODEL.DENSE_UNITS == (8, 4) and cfg.MODEL.ENCODER_CHANNELS == (8, 16, 32, 64)
    assert config_from_args().MODEL.PRESET == "full"
    with pytest.raises(ValueError, match=r"config MODEL.PRESET='tiny': expected one of \['full', 'small'\]"):
        config_from_args(["MODEL.PRESET=tiny"])


def test_patch_geometry_follows_the_mode_unless_given():
    assert (config_from_args().DATA.PATCH_SIZE, config_from_args().DATA.PATCH_STEP) == (540, 80)
    cfg = config_from_args(["MODEL.MODE=fast", "DATA.PATCH_SIZE=600", "DATA.PATCH_STEP=100"])
    assert (cfg.DATA.PATCH_SIZE, cfg.DATA.PATCH_STEP) == (600, 100)


def test_scratch_schedule_is_one_trainable_phase():
    (phase,) = get_schedule("scratch")
    assert not phase.freeze_encoder and phase.init == "scratch" and phase.batch_size_per_gpu == 8
    assert phase.epochs == 36
    assert [lr_for_epoch(phase, e) for e in (1, 30, 31, 36)] == [1.0e-3, 1.0e-3, 1.0e-4, 1.0e-4]


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


@pytest.mark.parametrize("override, key", [
    ("MODEL.ENCODER_CHANNELS=abc", "MODEL.ENCODER_CHANNELS"),
    ("MODEL.ENCODER_CHANNELS=(64,128,256)", "MODEL.ENCODER_CHANNELS"),
    ("MODEL.DENSE_GROWTH=0", "MODEL.DENSE_GROWTH"),
    ("MODEL.DENSE_SPLIT=2.5", "MODEL.DENSE_SPLIT"),
    ("MODEL.NR_TYPES=True", "MODEL.NR_TYPES"),
    ("LOSS.WEIGHTS={'np_ce':'x'}", "LOSS.WEIGHTS"),
    ("AUG.BLUR_KSIZE=(2,4)", "AUG.BLUR_KSIZE"),
    ("AUG.BLUR_NOISE_PROB=1.5", "AUG.BLUR_NOISE_PROB"),
    ("DATA.NUM_WORKERS=-1", "DATA.NUM_WORKERS"),
    ("POSTPROC.NP_THRESHOLD=high", "POSTPROC.NP_THRESHOLD"),
    ("POSTPROC.SOBEL_KSIZE=4", "POSTPROC.SOBEL_KSIZE"),
    ("INFER.BATCH_SIZE=0", "INFER.BATCH_SIZE"),
    ("EVAL.MATCH_IOU=1.0", "EVAL.MATCH_IOU"),
    ("TARGETS.HV_PUBLISHED_OFFSET=1", "TARGETS.HV_PUBLISHED_OFFSET"),
])
def test_every_value_is_checked_in_one_line_naming_the_key(override, key):
    """Issue 13.8: a bad value is a ValueError naming the key, raised by finalize_config."""
    with pytest.raises(ValueError) as info:
        config_from_args([override])
    message = str(info.value)
    assert message.startswith(f"config {key}=") and "\n" not in message


def test_published_and_fast_configs_pass_validation():
    config_from_args()
    config_from_args(["MODEL.MODE=fast", "MODEL.NR_TYPES=None", "DATA.NUM_WORKERS=0", "AUG.SCALE=(1,1)"])


@pytest.mark.parametrize("override, expected", [
    ("MODEL.MODE=slow", "config MODEL.MODE='slow': expected one of ['original', 'fast']"),
    ("MODEL.PRESET=tiny", "config MODEL.PRESET='tiny': expected one of ['full', 'small']"),
    ("MODEL.DATA_FORMAT=NCWH", "config MODEL.DATA_FORMAT='NCWH': expected one of ['auto', 'NCHW', 'NHWC']"),
    ("LOSS.MSGE=eq3", "config LOSS.MSGE='eq3': expected one of ['published', 'paper']"),
    ("LOSS.MSGE_FOCUS=ids", "config LOSS.MSGE_FOCUS='ids': expected one of ['published', 'binary']"),
    ("TARGETS.FROM=output", "config TARGETS.FROM='output': expected one of ['input', 'patch']"),
    ("DATA.NUM_WORKERS=all", "config DATA.NUM_WORKERS='all': expected 'auto' or an integer >= 0"),
    ("TRAIN.SCHEDULE=fast", "config TRAIN.SCHEDULE='fast': expected one of ['published', 'scratch']"),
    ("TRAIN.SCHEDULE=''", "config TRAIN.SCHEDULE='': expected one of ['published', 'scratch']"),
    ("TRAIN.PHASE2_INIT=first", "config TRAIN.PHASE2_INIT='first': expected one of ['last', 'best']"),
    ("WSI.TISSUE_MIN_SATURATION=300", "config WSI.TISSUE_MIN_SATURATION=300: expected an integer in [0, 255]"),
    ("WSI.MODEL_MPP=0", "config WSI.MODEL_MPP=0: expected a number in (0, inf]"),
])
def test_each_enumerated_setting_refuses_a_bad_value_naming_the_key_and_the_allowed_values(override, expected):
    """Issue 12.5: finalize_config is the one place every setting is checked; the message lists what is allowed."""
    with pytest.raises(ValueError) as info:
        config_from_args([override])
    assert str(info.value) == expected


def test_every_config_key_has_a_rule():
    """Issue 12.5: no key of make_config() escapes validate_config (derived keys are added by finalize_config)."""
    defaults = make_config()
    keys = {f"{section}.{key}" for section, values in defaults.items() for key in values}
    assert keys == set(_RULES)


def test_every_config_key_is_commented():
    """Issue 12.5: every ``C.SECTION.KEY = value`` line of make_config carries a comment, on it or just above it."""
    import inspect

    import src.config

    lines = inspect.getsource(src.config.make_config).splitlines()
    bare = [line.strip() for k, line in enumerate(lines)
            if line.strip().startswith("C.") and "#" not in line and not lines[k - 1].strip().startswith("#")]
    assert bare == []
