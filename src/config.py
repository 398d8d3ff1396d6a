"""The one configuration object: every published HoVer-Net setting, grouped by section.

Modelled on tensorpack's ``examples/FasterRCNN/config.py``: a tree of attribute dictionaries holding the
published values (``../shared/docs/HOVERNET_SPEC.md``; values marked **(code)** there follow the
published code) as defaults. Library code receives the values it needs as arguments; entry points build
a config with :func:`make_config`, apply ``--config KEY=VALUE`` overrides, then call
:func:`finalize_config`, which derives the geometry, checks it and freezes the tree.

Nothing here imports TensorFlow.
"""
from __future__ import annotations

import ast
import logging
import pprint

from opt.schedules import SCHEDULES, valid_lr_schedule
from src.geometry import MODES, derive_geometry

logger = logging.getLogger(__name__)

__all__ = ["AttrDict", "make_config", "finalize_config", "config_from_args", "validate_config", "check_value",
           "MODEL_PRESETS", "BEST_METRICS", "MSGE_VARIANTS", "MSGE_FOCUS_MODES", "PHASE2_INIT_CHOICES", "DATA_FORMATS",
           "TARGETS_FROM_CHOICES"]


class AttrDict(dict):
    """A dict whose keys are also attributes; nested on first access, frozen by :meth:`freeze`."""

    _frozen = False

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self:
            if self._frozen:
                raise AttributeError(f"config has no key {name!r}")
            self[name] = AttrDict()
        return self[name]

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(f"config is frozen; cannot set {name!r}")
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def freeze(self, frozen: bool = True) -> AttrDict:
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, AttrDict):
                value.freeze(frozen)
        return self

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, AttrDict) else v for k, v in self.items()}

    def update_args(self, overrides: list[str]) -> None:
        """Apply ``["SECTION.KEY=VALUE", ...]``; values parsed with :func:`ast.literal_eval`.

        An unknown key is an error: a typo must not silently train with the default.
        """
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"config override {item!r} is not of the form KEY=VALUE")
            key, raw = item.split("=", 1)
            *path, leaf = key.strip().split(".")
            node = self
            for part in path:
                if part not in node or not isinstance(node[part], AttrDict):
                    raise KeyError(f"unknown config section {part!r} in {key!r}")
                node = node[part]
            if leaf not in node:
                raise KeyError(f"unknown config key {key!r}")
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw  # a bare word such as `paper` is a string
            setattr(node, leaf, value)


# The MSGE term's derivative variants (spec section 3): the released code's cross derivatives, or eq. (3).
MSGE_VARIANTS = ("published", "paper")
# What weights the MSGE term's pixels (spec section 3): the released training passes the instance-id map
# (an id-weighted mean over nuclear pixels), or the binary nucleus mask of the paper and the PyTorch release.
MSGE_FOCUS_MODES = ("published", "binary")
# Which phase-1 checkpoint phase 2 starts from (spec section 4): the released train.py takes the one with
# the largest global step ('last'); 'best' is the one with the highest validation NP Dice.
PHASE2_INIT_CHOICES = ("last", "best")
# TRAIN.BEST_METRIC: the validation score that picks model-best. 'np_dice' (published): pooled NP Dice of the
# validation patches; the others are means over the held-out tiles (train.py --valid_images) after post-processing.
BEST_METRICS = ("np_dice", "pq", "aji", "dice")
# MODEL.DATA_FORMAT: 'auto' resolves to NCHW on a GPU, NHWC on the CPU (src.model.graph.resolve_data_format).
DATA_FORMATS = ("auto", "NCHW", "NHWC")
# TARGETS.FROM: where the training targets are computed (see make_config).
TARGETS_FROM_CHOICES = ("input", "patch")

# Named network sizes, as data: MODEL.PRESET picks one and its values replace the MODEL defaults before any
# other --config override is applied. 'full' is the published network (54.7M parameters); 'small' divides
# every width by 8 and halves the depth, the CPU-trainable companion model bundled with the project
# (models/README.md): same layer types, losses, targets and post-processing; its HV head starts at zero.
MODEL_PRESETS = {
    "full": {},
    "small": {
        "CONV0_CHANNELS": 8,
        "ENCODER_UNITS": (2, 2, 2, 2),
        "ENCODER_CHANNELS": (8, 16, 32, 64),
        "BOTTLENECK_CHANNELS": 128,
        "DECODER_CHANNELS": (32, 16, 8),
        "DENSE_UNITS": (4, 2),
        "DENSE_GROWTH": 8,
        "DENSE_BOTTLENECK": 16,
        # the recipe that makes HV learn from scratch within a CPU budget (models/README.md, overfit table)
        "HEAD_ZERO_INIT": ("hv",),
    },
}


# --- value rules: one line per key of make_config(), all checked by finalize_config (validate_config) ---
def _int(lo: int = 0) -> tuple:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _num(lo: float = 0.0, hi: float = float("inf"), lo_open: bool = False, hi_open: bool = False) -> tuple:
    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) \
            and (v < hi if hi_open else v <= hi)
    return ok, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _ints(n: int, lo: int = 1) -> tuple:
    return (lambda v: isinstance(v, (tuple, list)) and len(v) == n and all(_int(lo)[0](x) for x in v),
            f"{n} integers >= {lo}, e.g. {tuple(range(lo, lo + n))}")


def _pair(lo: float = float("-inf")) -> tuple:
    return (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_num(lo)[0](x) for x in v)
            and v[0] <= v[1], f"(low, high) numbers >= {lo:g}, low <= high")


def _odd(lo: int = 1) -> tuple:
    return (lambda v: _int(lo)[0](v) and v % 2 == 1), f"an odd integer >= {lo}"


def _one_of(*values) -> tuple:
    return (lambda v: isinstance(v, str) and v in values), f"one of {list(values)}"


def _map(key_ok, value_ok, what: str) -> tuple:
    return (lambda v: isinstance(v, dict) and all(key_ok(k) and value_ok(x) for k, x in v.items())), what


_BOOL = ((lambda v: isinstance(v, bool)), "True or False")
_RULES = {
    "MODEL.MODE": _one_of(*MODES),
    "MODEL.PRESET": _one_of(*MODEL_PRESETS),
    "MODEL.CONV0_CHANNELS": _int(1),
    "MODEL.NR_TYPES": ((lambda v: v is None or _int(2)[0](v)), "None or an integer >= 2"),
    "MODEL.DATA_FORMAT": _one_of(*DATA_FORMATS),
    "MODEL.ENCODER_UNITS": _ints(4),
    "MODEL.ENCODER_CHANNELS": _ints(4),
    "MODEL.ENCODER_STRIDES": _ints(4),
    "MODEL.BOTTLENECK_CHANNELS": _int(1),
    "MODEL.DECODER_CHANNELS": _ints(3),
    "MODEL.DENSE_UNITS": _ints(2),
    "MODEL.DENSE_GROWTH": _int(1),
    "MODEL.DENSE_BOTTLENECK": _int(1),
    "MODEL.DENSE_SPLIT": _int(1),
    "MODEL.HEAD_ZERO_INIT": ((lambda v: isinstance(v, (tuple, list)) and len(set(v)) == len(v)
                              and all(b in ("np", "hv", "tp") for b in v)),
                             "a tuple of distinct branches among 'np', 'hv', 'tp', e.g. ('hv',); () = published"),
    "LOSS.MSGE": _one_of(*MSGE_VARIANTS),
    "LOSS.MSGE_FOCUS": _one_of(*MSGE_FOCUS_MODES),
    "LOSS.WEIGHTS": _map(lambda k: isinstance(k, str), _num()[0], "a dict of term name -> weight >= 0"),
    "LOSS.DICE_EPS": _num(0, lo_open=True),
    "TARGETS.MIN_INSTANCE_SIZE": _int(0),
    "TARGETS.HV_PUBLISHED_OFFSET": _BOOL,
    "TARGETS.FROM": _one_of(*TARGETS_FROM_CHOICES),
    "DATA.PATCH_SIZE": ((lambda v: v is None or _int(1)[0](v)), "None (derived) or an integer >= 1"),
    "DATA.PATCH_STEP": ((lambda v: v is None or _int(1)[0](v)), "None (derived) or an integer >= 1"),
    "DATA.TYPE_MERGE": _map(_int(0)[0], _int(0)[0], "a dict of type id -> type id (integers >= 0)"),
    "DATA.TYPE_NAMES": _map(_int(0)[0], lambda x: isinstance(x, str), "a dict of type id -> name"),
    "DATA.NUM_WORKERS": ((lambda v: v == "auto" or _int(0)[0](v)), "'auto' or an integer >= 0"),
    "AUG.SHEAR_DEG": _num(),
    "AUG.SCALE": _pair(0),
    "AUG.ROTATE_DEG": _num(0, 180),
    "AUG.TRANSLATE_FRAC": _num(0, 1),
    "AUG.FLIP": _BOOL,
    "AUG.BLUR_NOISE_PROB": _num(0, 1),
    "AUG.BLUR_KSIZE": ((lambda v: _ints(2)[0](v) and all(k % 2 for k in v) and v[0] <= v[1]),
                       "(low, high) odd kernel sizes, low <= high"),
    "AUG.NOISE_SIGMA": _num(),
    "AUG.HUE": _pair(),
    "AUG.SATURATION": _num(),
    "AUG.BRIGHTNESS": _num(),
    "AUG.CONTRAST": _pair(0),
    "TRAIN.SCHEDULE": _one_of(*SCHEDULES),  # opt/schedules.py
    "TRAIN.VALID_BATCH_SIZE": _int(1),
    "TRAIN.PHASE2_INIT": _one_of(*PHASE2_INIT_CHOICES),
    "TRAIN.BEST_METRIC": _one_of(*BEST_METRICS),
    "TRAIN.LR_SCHEDULE": ((lambda v: v is None or valid_lr_schedule(v)),
                          "None or ((0, lr), (epoch, lr), ...): epochs increasing from 0, learning rates > 0"),
    "POSTPROC.NP_THRESHOLD": _num(0, 1),
    "POSTPROC.MARKER_THRESHOLD": _num(0, 1),
    "POSTPROC.SOBEL_KSIZE": _odd(1),
    "POSTPROC.MIN_SIZE": _int(0),
    "POSTPROC.ENERGY_BLUR": _odd(1),
    "POSTPROC.MARKER_OPENING": _int(1),
    "INFER.BATCH_SIZE": _int(1),
    "INFER.BLOCK_SIZE": _int(1),
    "WSI.MODEL_MPP": _num(0, lo_open=True),
    "WSI.MPP_TOLERANCE": _num(0),
    "WSI.TILE_SIZE": _int(1),
    "WSI.MAX_NUCLEUS_PX": _int(0),
    "WSI.TISSUE_MPP": _num(0, lo_open=True),
    "WSI.TISSUE_MIN_SATURATION": ((lambda v: _int(0)[0](v) and v <= 255), "an integer in [0, 255]"),
    "WSI.TISSUE_CLOSE_PX": _int(0),
    "WSI.TISSUE_OPEN_PX": _int(0),
    "WSI.TISSUE_MIN_AREA_PX": _int(0),
    "WSI.THUMB_MAX_SIDE": _int(1),
    "EVAL.MATCH_IOU": _num(0, 1, hi_open=True),  # metrics.stats.pq: [0, 1)
    "EVAL.RADIUS": _num(0, lo_open=True),
}


def check_value(key: str, value) -> None:
    """ValueError ``config KEY=VALUE: expected <allowed values>`` (one line) when ``value`` breaks ``key``'s rule."""
    ok, what = _RULES[key]
    if not ok(value):
        raise ValueError(f"config {key}={value!r}: expected {what}")


def validate_config(C: AttrDict) -> None:
    """Check every key that has a rule in ``_RULES``; ValueError naming the first bad key, in one line."""
    for key in _RULES:
        section, leaf = key.split(".")
        if section in C and leaf in C[section]:
            check_value(key, C[section][leaf])


def make_config() -> AttrDict:
    """A fresh, unfrozen config holding the published defaults."""
    C = AttrDict()

    # --- network (spec section 1) ---
    C.MODEL.MODE = "original"  # 'original' (valid convs, 270 -> 80) or 'fast' (padded, 256 -> 164); src/geometry.py
    C.MODEL.PRESET = "full"  # a key of MODEL_PRESETS: 'full' (published) or 'small' (bundled CPU model)
    C.MODEL.NR_TYPES = 5  # tp output channels incl. background; None = np+hv only (no type labels)
    C.MODEL.DATA_FORMAT = "auto"  # 'NCHW' on GPU, 'NHWC' on CPU (TF has no NCHW conv on CPU); or force one
    C.MODEL.CONV0_CHANNELS = 64  # output channels of the 7x7 conv0
    C.MODEL.ENCODER_UNITS = (3, 4, 6, 3)  # Preact-ResNet50 bottleneck units (count) per group 0..3
    C.MODEL.ENCODER_CHANNELS = (64, 128, 256, 512)  # bottleneck width (channels) per group (output is 4x)
    C.MODEL.ENCODER_STRIDES = (1, 2, 2, 2)  # px stride of each group's first unit; total down-sampling 8, not 32
    C.MODEL.BOTTLENECK_CHANNELS = 1024  # output channels of the 1x1 conv_bot
    C.MODEL.DECODER_CHANNELS = (256, 128, 64)  # 'conva' width in u3, u2, u1 (5x5 original, 3x3 fast)
    C.MODEL.DENSE_UNITS = (8, 4)  # (code) dense units (count) in u3, u2; the paper's text says (4, 8)
    C.MODEL.DENSE_GROWTH = 32  # channels added by each dense unit
    C.MODEL.DENSE_BOTTLENECK = 128  # 1x1 width inside a dense unit
    C.MODEL.DENSE_SPLIT = 4  # groups (count) of the dense unit's 5x5 (fast: 3x3) conv
    # Branches whose 1x1 output kernel (conv_out_<branch>/W) starts at zero instead of the published He init, so
    # the untrained network predicts hv = 0 (np/tp: uniform probabilities). Not in the published code: with 2
    # output channels He fan_out gives every weight std 1, so the first hv prediction has std ~2-6 and the first
    # steps are spent shrinking it (models/README.md, recipe table). () = published.
    C.MODEL.HEAD_ZERO_INIT = ()

    # --- loss (spec section 3, equation 1) ---
    C.LOSS.MSGE = "published"  # 'published': cross derivatives as in the released code; 'paper': eq. (3)
    C.LOSS.WEIGHTS = {  # term -> unitless weight in eq. (1); every term is a named summarised tensor
        "hv_mse": 2.0, "hv_msge": 1.0, "np_ce": 1.0, "np_dice": 1.0, "tp_ce": 1.0, "tp_dice": 1.0,
    }
    C.LOSS.DICE_EPS = 1e-3  # smoothing added to the soft Dice numerator and denominator (probability sums)
    # (code) MSGE focus: 'published' weights each nuclear pixel by its instance id, as the released
    # graph did (its focus was label channel 0, the raw id map whenever types are trained; binarised, so
    # binary, in a model without types); 'binary' is the paper's mean over nuclear pixels (and the
    # PyTorch release). np_target carries the ids either way.
    C.LOSS.MSGE_FOCUS = "published"

    # --- training targets (spec section 2) ---
    C.TARGETS.MIN_INSTANCE_SIZE = 30  # instances smaller than this (px, inside the output window) get no HV
    # (code) The released code's HV grid is np.arange(1, n + 1) - round(com), which puts the zero row/column
    # one pixel above/left of the rounded centre of mass: True (default) reproduces it; False puts the zero
    # on the rounded centre itself, as the spec's text (section 2) describes.
    C.TARGETS.HV_PUBLISHED_OFFSET = True
    # Where training targets are computed: 'input' = on the 270x270 augmented input crop, then cropped to 80
    # (the released order: CenterCrop is one of the shape augmentations, applied before GenInstanceHV);
    # 'patch' = on the full 540x540 augmented patch (differs only for nuclei reaching far beyond the output).
    C.TARGETS.FROM = "input"

    # --- patches and augmentation (spec section 4) ---
    # Extracted window (px); augmentation works on it before the centre crop. None = derived: twice the input
    # (540 original, 512 fast).
    C.DATA.PATCH_SIZE = None
    C.DATA.PATCH_STEP = None  # stride of the extraction windows (px); None = the output size (80 / 164)
    C.DATA.TYPE_MERGE = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}  # CoNSeP 7 types -> 4
    # type id (after TYPE_MERGE) -> name, for the output files and overlays (type_info.json)
    C.DATA.TYPE_NAMES = {0: "background", 1: "miscellaneous", 2: "inflammatory", 3: "epithelial", 4: "spindle"}
    C.DATA.NUM_WORKERS = "auto"  # dataflow processes (count; 0 = map in the main process); 'auto' = all cores but one
    C.AUG.SHEAR_DEG = 5.0  # degrees: max |shear|
    C.AUG.SCALE = (0.8, 1.2)  # (low, high) isotropic scale factor
    C.AUG.ROTATE_DEG = 179.0  # degrees: max |rotation|
    C.AUG.TRANSLATE_FRAC = 0.01  # max |shift| as a fraction of the patch side (rounded to whole px)
    C.AUG.FLIP = True  # random vertical and horizontal flips, each with probability 0.5
    C.AUG.BLUR_NOISE_PROB = 0.5  # probability of one of gaussian blur / median blur / gaussian noise
    C.AUG.BLUR_KSIZE = (3, 5)  # px: (smallest, largest) odd blur kernel side, inclusive
    C.AUG.NOISE_SIGMA = 1.0  # 0-255 intensity units: sigma of the additive noise (tensorpack GaussianNoise() default)
    C.AUG.HUE = (-8, 8)  # (low, high) hue offset in OpenCV 8-bit hue units (1 unit = 2 degrees)
    C.AUG.SATURATION = 0.2  # max |change| of the saturation factor around 1
    C.AUG.BRIGHTNESS = 26.0  # 0-255 intensity units: max |offset| added to every channel
    C.AUG.CONTRAST = (0.75, 1.25)  # (low, high) contrast factor around each channel's mean

    # --- schedule (spec section 4; see opt/ for the phases as data) ---
    C.TRAIN.SCHEDULE = "published"  # name of a schedule in opt.schedules: 'published' (two phases) or 'scratch'
    C.TRAIN.VALID_BATCH_SIZE = 16  # patches per validation batch
    # (code) phase 2 starts from phase 1's checkpoint with the largest global step ('last', as the released
    # train.py); 'best' = phase 1's model-best (highest validation NP Dice). --pretrained overrides both.
    C.TRAIN.PHASE2_INIT = "last"
    # validation score kept as model-best (highest wins): 'np_dice' (published, pooled over the validation patches)
    # or 'pq' / 'aji' / 'dice' of the post-processed held-out tiles (needs train.py --valid_images); BEST_METRICS
    C.TRAIN.BEST_METRIC = "np_dice"
    # ((epoch, lr), ...) in the schedule's form (set after that epoch; opt/schedules.py) replacing the learning
    # rates of every phase, e.g. ((0, 1e-3), (24, 1e-4)) to drop a scratch run's rate early; None = the schedule's
    C.TRAIN.LR_SCHEDULE = None

    # --- post-processing (spec section 5) ---
    C.POSTPROC.NP_THRESHOLD = 0.5  # nuclear probability (0..1) at or above which a pixel is foreground
    C.POSTPROC.MARKER_THRESHOLD = 0.4  # HV Sobel energy (0..1) at or above which a pixel is not a marker
    C.POSTPROC.SOBEL_KSIZE = 21  # px: odd side of the Sobel kernel on the HV maps
    C.POSTPROC.MIN_SIZE = 10  # px, both blobs and markers
    C.POSTPROC.ENERGY_BLUR = 3  # px: odd side of the Gaussian kernel on the energy
    C.POSTPROC.MARKER_OPENING = 5  # px: side of the elliptical opening applied to the markers

    # --- inference (spec section 6) ---
    C.INFER.BATCH_SIZE = 16  # input windows per forward pass
    # px at model resolution: a tile with a longer side is predicted and post-processed in overlapping blocks of
    # at most this side (src/infer/blocks.py), so memory does not grow with the tile; tiles within it (1000x1000 ones)
    # are processed whole, as always
    C.INFER.BLOCK_SIZE = 2048

    # --- whole-slide inference (infer.py --mode wsi; src/infer/slides.py) ---
    C.WSI.MODEL_MPP = 0.25  # um/px the model was trained at (CoNSeP: 40x, 0.25); inputs are resampled to it
    C.WSI.MPP_TOLERANCE = 0.05  # relative mpp difference under which no resampling is done
    C.WSI.TILE_SIZE = 4096  # px at model resolution: core side of a large tile (rounded down to the output size)
    C.WSI.MAX_NUCLEUS_PX = 80  # px at model resolution: widest nucleus the tile margin must hold whole (20 um)
    C.WSI.TISSUE_MPP = 8.0  # um/px of the tissue mask (about 1.25x)
    C.WSI.TISSUE_MIN_SATURATION = 20  # HSV saturation 0..255: Otsu threshold floor (white slides stay empty)
    C.WSI.TISSUE_CLOSE_PX = 5  # mask px: closing that joins tissue fragments
    C.WSI.TISSUE_OPEN_PX = 3  # mask px: opening that removes dust
    C.WSI.TISSUE_MIN_AREA_PX = 16  # mask px: smaller tissue components are dropped
    C.WSI.THUMB_MAX_SIDE = 4000  # px: longer side of the <name>.png overlay

    # --- evaluation (spec section 7) ---
    C.EVAL.MATCH_IOU = 0.5  # IoU (0..1) above which a true and a predicted nucleus are a match (PQ)
    C.EVAL.RADIUS = 12  # px at 40x (6 at 20x): max centroid distance of a type match
    return C


def apply_preset(C: AttrDict, preset: str) -> None:
    """Set ``MODEL.PRESET`` and replace the MODEL values it names (see :data:`MODEL_PRESETS`)."""
    check_value("MODEL.PRESET", preset)
    C.MODEL.PRESET = preset
    for key, value in MODEL_PRESETS[preset].items():
        setattr(C.MODEL, key, value)


def finalize_config(C: AttrDict, is_training: bool = False) -> AttrDict:
    """Derive the geometry from ``MODEL.MODE`` and the layer list, check the values, log them and freeze ``C``.

    Derived: ``MODEL.INPUT_SHAPE``, ``MODEL.OUTPUT_SHAPE``, ``MODEL.CROP_GROUP0``, ``MODEL.CROP_GROUP1``
    (src/geometry.py) and, where left ``None``, ``DATA.PATCH_SIZE`` / ``DATA.PATCH_STEP``.
    """
    C.freeze(False)
    validate_config(C)
    geometry = derive_geometry(C.MODEL.MODE, tuple(C.MODEL.DENSE_UNITS), tuple(C.MODEL.ENCODER_STRIDES))
    C.MODEL.INPUT_SHAPE = geometry.input_shape
    C.MODEL.OUTPUT_SHAPE = geometry.output_shape
    C.MODEL.CROP_GROUP0 = geometry.crop_group0
    C.MODEL.CROP_GROUP1 = geometry.crop_group1
    if C.DATA.PATCH_SIZE is None:
        C.DATA.PATCH_SIZE = geometry.patch_size
    if C.DATA.PATCH_STEP is None:
        C.DATA.PATCH_STEP = geometry.patch_step
    if C.DATA.PATCH_SIZE < C.MODEL.INPUT_SHAPE:
        raise ValueError(f"DATA.PATCH_SIZE {C.DATA.PATCH_SIZE} is smaller than the input {C.MODEL.INPUT_SHAPE}")
    if is_training:  # run.json keeps it too; the console shows what is loading and progress (misc/logs.py)
        logger.debug("Config:\n%s", pprint.pformat(C.to_dict(), width=110))
    return C.freeze()


def config_from_args(overrides: list[str] | None = None, is_training: bool = False) -> AttrDict:
    """The published config with ``KEY=VALUE`` overrides applied, finalised and frozen."""
    C = make_config()
    overrides = list(overrides or [])
    # The preset goes first, so that an explicit MODEL.* override still wins over the preset's value.
    presets = [o for o in overrides if o.split("=", 1)[0].strip() == "MODEL.PRESET"]
    if presets:
        C.update_args(presets[-1:])
        apply_preset(C, C.MODEL.PRESET)
    C.update_args([o for o in overrides if o not in presets])
    return finalize_config(C, is_training=is_training)

