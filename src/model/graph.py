"""The HoVer-Net graph (Graham et al. 2019, section 3.1; spec section 1) as a tensorpack ``ModelDesc``.

Architecture, scope names and loss follow the published TensorFlow/tensorpack code (vqdang/hover_net,
``src/model/graph.py``), rewritten for the current tensorpack API:

* encoder: Preact-ResNet50 with total down-sampling 8, scope names of tensorpack's ImageNet
  Preact-ResNet50 checkpoint (``conv0/W``, ``group0/block0/conv1/W``, ``group0/block1/preact/bn/gamma``,
  ``group0/block0/convshortcut/W``, ``group0/bnlast/bn/gamma``...), so ImageNet weights load by name;
* decoders ``np``, ``hv`` and ``tp`` with the published scope names (``np/u3/conva/W``,
  ``np/u3/dense/blk/0/conv1/W``, ``np/u3/dense/blk_bna/bn/gamma``, ``np/u3/convf/W``...) and heads
  ``preact_out_<branch>`` (BNReLU) + ``conv_out_<branch>`` (1x1 with bias), so the released HoVer-Net
  checkpoints load by name as well.

Inputs are NHWC RGB images in 0..255; outputs are NHWC whatever the internal data format (NCHW on a
GPU, NHWC on the CPU, where TensorFlow has no NCHW convolution). Inference tensor names are declared
once, in :data:`INFERENCE_INPUTS` / :data:`TARGET_INPUTS` / :data:`INFERENCE_OUTPUTS`, and checked against a
built graph by :func:`check_inference_tensors` (the predictor does so before it fetches them).
"""
from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc
from tensorpack.models import BatchNorm, BNReLU, Conv2D, FixedUnPooling
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import get_current_tower_context

from opt.schedules import get_phase
from src.config import check_value
from src.geometry import CONV0_KSIZE, DENSE_BOTTLENECK_KSIZE, MODES
from src.model.losses import get_loss, hard_dice_terms, msge_focus

log = logging.getLogger(__name__)
tf1 = tf.compat.v1
# TF1 tensor hashing for the whole process. tf_keras's legacy layers (tensorpack's Conv2D, BatchNorm) put every
# global variable in a set each time they add a weight, and TF2's Variable.__hash__ first asks whether it runs
# eagerly, which made each graph build quadratic in its variables (a third of its time). In a tf.Graph, ``==`` on
# tensors is identity either way; the XLA export's ``wrap_function`` needs this hashing as well.
tf1.disable_tensor_equality()

__all__ = ["HoVerNet", "INFERENCE_INPUTS", "TARGET_INPUTS", "INFERENCE_OUTPUTS", "input_names",
           "inference_output_names", "check_inference_tensors", "resolve_data_format", "ENCODER_SCOPES",
           "DECODER_SCOPES", "LOSS_TENSOR_PREFIX", "COST_NAME", "NP_DICE_NAME"]

# --- tensor names: the one place inference and validation look them up ---
INFERENCE_INPUTS = ["images"]  # float32 N x in x in x 3 RGB 0..255
# The training/validation inputs after the images, in ``inputs()`` order (dataset.patches.datapoint_names must
# yield the same order); tp_target only when the model has a type branch.
TARGET_INPUTS = ["np_target", "hv_target", "tp_target"]
INFERENCE_OUTPUTS = ["np_prob", "hv", "tp_prob"]  # tp_prob only when the model has a type branch
LOSS_TENSOR_PREFIX = "loss_"  # each term of cfg.LOSS.WEIGHTS is a tensor 'loss_<term>', e.g. 'loss_hv_msge'
COST_NAME = "overall_cost"
NP_DICE_NAME = "np_dice"  # hard Dice of argmax(np_prob) vs np_target over the batch, the validation metric
NP_DICE_SUMS = ("np_dice_inter", "np_dice_total")  # its numerator/2 and denominator, to pool over batches

# Variable scopes owned by the encoder (ImageNet Preact-ResNet50 names); conv_bot is not part of it.
ENCODER_SCOPES = ("conv0", "group0", "group1", "group2", "group3")
# Variable scopes of a branch: its decoder and its head.
DECODER_SCOPES = {b: (b, f"preact_out_{b}", f"conv_out_{b}") for b in ("np", "hv", "tp")}


def input_names(nr_types: int | None) -> list[str]:
    """Names of ``HoVerNet.inputs()`` in order: the images, then the targets (no tp_target if ``nr_types`` is None)."""
    return INFERENCE_INPUTS + [n for n in TARGET_INPUTS if nr_types is not None or n != "tp_target"]


def inference_output_names(nr_types: int | None) -> list[str]:
    """Output tensor names of a model with (``nr_types`` int) or without (None) the type branch."""
    return [n for n in INFERENCE_OUTPUTS if nr_types is not None or n != "tp_prob"]


def check_inference_tensors(graph: tf.Graph, nr_types: int | None, prefix: str = "") -> None:
    """Raise ``KeyError`` naming every declared input/output tensor missing from ``graph``.

    The names are :data:`INFERENCE_INPUTS` and :func:`inference_output_names` (``nr_types``), each looked up as
    ``<prefix><name>:0``: a graph built by another model version than the one its caller expects fails
    here, in one message, instead of deep inside a predictor.
    """
    missing = []
    for name in INFERENCE_INPUTS + inference_output_names(nr_types):
        try:
            graph.get_tensor_by_name(f"{prefix}{name}:0")
        except KeyError:
            missing.append(name)
    if missing:
        kind = f"{nr_types} type channels" if nr_types is not None else "no type branch"
        raise KeyError(f"graph lacks the inference tensors {missing} of a HoVer-Net with {kind} "
                       f"(names declared in src.model.graph: INFERENCE_INPUTS, INFERENCE_OUTPUTS)")


def resolve_data_format(data_format: str) -> str:
    """'auto' -> 'NCHW' when TensorFlow sees a GPU, else 'NHWC'; 'NCHW'/'NHWC' pass through."""
    if data_format == "auto":
        return "NCHW" if tf.config.list_physical_devices("GPU") else "NHWC"
    check_value("MODEL.DATA_FORMAT", data_format)
    return data_format


def _channels_axis(data_format: str) -> int:
    return 1 if data_format == "NCHW" else 3


def _centre_crop(x: tf.Tensor, crop: int, data_format: str) -> tf.Tensor:
    """Remove ``crop`` pixels from each spatial dim, ``crop // 2`` before and the rest after (published)."""
    if crop == 0:
        return x
    before, after = crop // 2, crop - crop // 2
    if data_format == "NCHW":
        return x[:, :, before:-after, before:-after]
    return x[:, before:-after, before:-after, :]


def _spatial_size(x: tf.Tensor, data_format: str) -> int:
    return x.shape.as_list()[2 if data_format == "NCHW" else 1]


def _upsample2x(name: str, x: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour 2x up-sampling (published: FixedUnPooling with a 2x2 matrix of ones; no variables)."""
    return FixedUnPooling(name, x, 2, unpool_mat=np.ones((2, 2), dtype="float32"))


# --- encoder ---
def _residual_group(name: str, x: tf.Tensor, width: int, count: int, strides: int, data_format: str,
                    freeze: bool) -> tf.Tensor:
    """One Preact-ResNet bottleneck group ``[1x1 width, 3x3 width, 1x1 4*width]`` x ``count``.

    The first unit takes the raw input (the previous group ended with 'bnlast'); later units start with
    a 'preact' BNReLU. The shortcut is a 1x1 'convshortcut' (with the stride) on the first unit when
    the stride or channel count changes, identity otherwise. With ``freeze`` the residual branch of
    every unit is cut from the gradient (published), the group output is cut by the caller.
    """
    out_ch = 4 * width
    in_ch = x.shape.as_list()[_channels_axis(data_format)]
    with tf1.variable_scope(name):
        for i in range(count):
            with tf1.variable_scope(f"block{i}"):
                branch = x if i == 0 else BNReLU("preact", x)
                branch = Conv2D("conv1", branch, width, 1, activation=BNReLU)
                branch = Conv2D("conv2", branch, width, 3, strides=strides if i == 0 else 1, activation=BNReLU)
                branch = Conv2D("conv3", branch, out_ch, 1)
                if i == 0 and (strides != 1 or in_ch != out_ch):
                    x = Conv2D("convshortcut", x, out_ch, 1, strides=strides)
                if freeze:
                    branch = tf.stop_gradient(branch)
                x = x + branch
        # pre-activation units leave the sum un-normalised: every group ends with one BNReLU
        x = BNReLU("bnlast", x)
    return x


def _encoder(images: tf.Tensor, model_cfg, conv0_padding: str, data_format: str, freeze: bool) -> list[tf.Tensor]:
    """Preact-ResNet50, down-sampling 8. Returns [group0, group1, group2, conv_bot] in ``data_format``.

    ``freeze`` (phase 1) cuts the gradient exactly where the published code did: the residual branch
    of every unit and the outputs of group1, group2 and group3. The group0 output, used by the u1 skip,
    is *not* cut, so the path through the identity shortcuts of group0 still trains ``conv0`` (W and
    bn), ``group0/block0/convshortcut/W`` and ``group0/bnlast/bn`` - the published trainer's docstring:
    "finetune decoder portion (together with the first 7x7 in the encoder)". Every other encoder
    variable gets no gradient. conv_bot is outside the encoder and trains. BatchNorm stays in training
    mode: the frozen encoder normalises with batch statistics and keeps updating its moving averages,
    as the published tensorpack code did.
    """
    x = Conv2D("conv0", images, model_cfg.CONV0_CHANNELS, CONV0_KSIZE, padding=conv0_padding,
               activation=BNReLU)
    feats = []
    for g, (count, width, stride) in enumerate(zip(model_cfg.ENCODER_UNITS, model_cfg.ENCODER_CHANNELS,
                                                   model_cfg.ENCODER_STRIDES, strict=True)):
        x = _residual_group(f"group{g}", x, width, count, stride, data_format, freeze)
        if freeze and g > 0:  # published: group0's output stays trainable through the u1 skip
            x = tf.stop_gradient(x)
        feats.append(x)
    feats[-1] = Conv2D("conv_bot", feats[-1], model_cfg.BOTTLENECK_CHANNELS, 1)
    return feats


# --- decoder ---
def _dense_block(name: str, x: tf.Tensor, count: int, model_cfg, ksize: int, data_format: str) -> tf.Tensor:
    """``count`` dense units (BNReLU -> 1x1 + BNReLU -> grouped ``ksize`` valid, concat with the cropped
    input), closed by a BNReLU 'blk_bna'. Each unit adds ``DENSE_GROWTH`` channels and removes ``ksize - 1``
    pixels."""
    axis = _channels_axis(data_format)
    with tf1.variable_scope(name):
        for i in range(count):
            with tf1.variable_scope(f"blk/{i}"):
                new = BNReLU("preact_bna", x)
                new = Conv2D("conv1", new, model_cfg.DENSE_BOTTLENECK, DENSE_BOTTLENECK_KSIZE, padding="valid",
                             activation=BNReLU)
                new = Conv2D("conv2", new, model_cfg.DENSE_GROWTH, ksize, padding="valid",
                             split=model_cfg.DENSE_SPLIT)
                x = _centre_crop(x, _spatial_size(x, data_format) - _spatial_size(new, data_format), data_format)
                x = tf.concat([x, new], axis=axis)
        x = BNReLU("blk_bna", x)
    return x


def _decoder(name: str, feats: list[tf.Tensor], model_cfg, ksize: int, data_format: str) -> tf.Tensor:
    """One decoder branch (u3, u2, u1) on the encoder features; returns the u1 output
    (``DECODER_CHANNELS[2]`` channels). ``ksize``: the mode's decoder kernel (5 original, 3 fast).

    ``feats``: [group0 cropped, group1 cropped, group2, conv_bot], all in ``data_format``.
    """
    ch3, ch2, ch1 = model_cfg.DECODER_CHANNELS
    dense3, dense2 = model_cfg.DENSE_UNITS
    # Variables live under the published scope '<name>/...'; the ops under the name scope '<name>_branch/'
    # so that the output tensor can be named exactly 'hv' (a name scope 'hv/' would make it 'hv_1').
    with tf1.variable_scope(name, auxiliary_name_scope=False), tf1.name_scope(f"{name}_branch/"):
        with tf1.variable_scope("u3"):
            x = _upsample2x("rz", feats[3]) + feats[2]
            x = Conv2D("conva", x, ch3, ksize, padding="valid")
            x = _dense_block("dense", x, dense3, model_cfg, ksize, data_format)
            x = Conv2D("convf", x, 2 * ch3, 1)
        with tf1.variable_scope("u2"):
            x = _upsample2x("rz", x) + feats[1]
            x = Conv2D("conva", x, ch2, ksize, padding="valid")
            x = _dense_block("dense", x, dense2, model_cfg, ksize, data_format)
            x = Conv2D("convf", x, 2 * ch2, 1)
        with tf1.variable_scope("u1"):
            x = _upsample2x("rz", x) + feats[0]
            # 'same' here: the output keeps the size of the cropped group0 feature
            x = Conv2D("conva", x, ch1, ksize, padding="same")
    return x


def _head(branch: str, x: tf.Tensor, channels: int, data_format: str, zero_init: bool = False) -> tf.Tensor:
    """BNReLU then 1x1 conv with bias; returns NHWC logits (N x H x W x channels float32).

    ``zero_init`` (``MODEL.HEAD_ZERO_INIT``): the 1x1 kernel starts at zero, so the branch's first output is its
    bias (0), instead of the argscope's published He init."""
    x = BNReLU(f"preact_out_{branch}", x)
    extra = {"kernel_initializer": tf1.zeros_initializer()} if zero_init else {}
    x = Conv2D(f"conv_out_{branch}", x, channels, 1, use_bias=True, **extra)
    return tf.transpose(x, [0, 2, 3, 1]) if data_format == "NCHW" else x


class HoVerNet(ModelDesc):
    """HoVer-Net: 'original' (valid convolutions, 270x270 RGB in, 80x80 NP/HV/TP maps out) or 'fast' (padded,
    256 -> 164) by ``cfg.MODEL.MODE``; sizes from ``cfg.MODEL.PRESET`` and the MODEL widths.

    Args:
        nr_types: channels of the type (tp) output including background (5 for CoNSeP); None builds the
            two-branch np + hv model (no type labels).
        freeze: stop gradients into the encoder (phase 1 of the published schedule).
        cfg: a finalised config (``src.config.config_from_args``). Read: ``MODEL``
            (architecture, data format, geometry), ``LOSS`` (term weights, MSGE variant and focus, Dice
            eps) and ``TRAIN.SCHEDULE`` (initial learning rate).

    Inputs (``inputs()``): ``images`` float32 N x in x in x 3 RGB 0..255; ``np_target`` int32
    N x out x out instance ids (> 0 nucleus, 0 background; a 0/1 map is valid): NP is ``np_target > 0``
    and ``LOSS.MSGE_FOCUS`` decides whether the MSGE focus is the ids (published; binary in a model
    without types, as released) or binary;
    ``hv_target`` float32 N x out x out x 2 (channel 0 x, channel 1 y, in [-1, 1]); ``tp_target`` int32
    N x out x out (type id, 0 background) when ``nr_types`` is not None.

    Outputs (named tensors, NHWC): ``np_prob`` N x out x out x 2 softmax (channel 1 = nucleus);
    ``hv`` N x out x out x 2 linear; ``tp_prob`` N x out x out x nr_types softmax. With targets:
    ``np_dice`` (hard Dice of argmax np vs np_target over the batch), and when training ``loss_<term>``
    for each term of ``cfg.LOSS.WEIGHTS`` and ``overall_cost``.
    """

    def __init__(self, cfg, nr_types: int | None = 5, freeze: bool = False):
        super().__init__()
        # never a silent default: the geometry, widths and losses must be the caller's
        if cfg is None or "MODEL" not in cfg or "INPUT_SHAPE" not in cfg.MODEL:
            raise ValueError("HoVerNet needs a finalised config (src.config.config_from_args)")
        self.cfg = cfg
        if nr_types is not None and nr_types < 2:
            raise ValueError("nr_types must be None or >= 2 (background + at least one type)")
        self.nr_types = nr_types
        self.freeze = bool(freeze)
        self.data_format = resolve_data_format(self.cfg.MODEL.DATA_FORMAT)
        # the sizes were derived once, by finalize_config (src/geometry.py); the mode's layer settings are data
        self.layers = MODES[self.cfg.MODEL.MODE]

    @property
    def branches(self) -> tuple[str, ...]:
        return ("np", "hv") if self.nr_types is None else ("np", "hv", "tp")

    def inputs(self):
        size_in, size_out = self.cfg.MODEL.INPUT_SHAPE, self.cfg.MODEL.OUTPUT_SHAPE
        shapes = [([None, size_in, size_in, 3], tf.float32), ([None, size_out, size_out], tf.int32),
                  ([None, size_out, size_out, 2], tf.float32), ([None, size_out, size_out], tf.int32)]
        return [tf.TensorSpec(shape, dtype, name)
                for (shape, dtype), name in zip(shapes, input_names(self.nr_types), strict=False)]

    def build_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The network alone: NHWC 0..255 RGB images -> {'np_prob', 'hv', 'tp_prob'} named NHWC tensors."""
        model_cfg, fmt = self.cfg.MODEL, self.data_format
        he_init = tf1.variance_scaling_initializer(scale=2.0, mode="fan_out")
        keras_fmt = "channels_first" if fmt == "NCHW" else "channels_last"
        with argscope(Conv2D, activation=tf.identity, use_bias=False, kernel_initializer=he_init), \
                argscope([Conv2D, BatchNorm, FixedUnPooling], data_format=keras_fmt):
            x = images / 255.0
            if fmt == "NCHW":
                x = tf.transpose(x, [0, 3, 1, 2])
            feats = _encoder(x, model_cfg, self.layers.conv0_padding, fmt, self.freeze)
            feats[0] = _centre_crop(feats[0], model_cfg.CROP_GROUP0, fmt)
            feats[1] = _centre_crop(feats[1], model_cfg.CROP_GROUP1, fmt)
            out_channels = {"np": 2, "hv": 2, "tp": self.nr_types}
            ksize = self.layers.decoder_ksize
            zero_heads = tuple(model_cfg.HEAD_ZERO_INIT)
            logits = {b: _head(b, _decoder(b, feats, model_cfg, ksize, fmt), out_channels[b], fmt,
                               zero_init=b in zero_heads)
                      for b in self.branches}
        outputs = {
            "np_prob": tf.nn.softmax(logits["np"], axis=-1, name="np_prob"),
            "hv": tf.identity(logits["hv"], name="hv"),
        }
        if self.nr_types is not None:
            outputs["tp_prob"] = tf.nn.softmax(logits["tp"], axis=-1, name="tp_prob")
        return outputs

    def build_graph(self, images, np_target, hv_target, tp_target=None):
        outputs = self.build_outputs(images)

        inter, total = hard_dice_terms(np_target, tf.argmax(outputs["np_prob"], axis=-1))
        inter = tf.identity(inter, name=NP_DICE_SUMS[0])
        total = tf.identity(total, name=NP_DICE_SUMS[1])
        # Dice of an empty prediction on an empty target is 1, not 0/0
        np_dice = tf.where(total > 0, 2.0 * inter / tf.maximum(total, 1.0), 1.0)
        np_dice = tf.identity(np_dice, name=NP_DICE_NAME)

        ctx = get_current_tower_context()
        if ctx is None or not ctx.is_training:
            return None
        terms = self._loss_terms(outputs, np_target, hv_target, tp_target)
        cost = tf.add_n([self.cfg.LOSS.WEIGHTS[name] * value for name, value in terms.items()])
        cost = tf.identity(cost, name=COST_NAME)
        add_moving_summary(*terms.values(), np_dice, cost)
        return cost

    def _loss_terms(self, outputs, np_target, hv_target, tp_target) -> dict[str, tf.Tensor]:
        """Each weighted term of ``cfg.LOSS.WEIGHTS`` as a named scalar tensor 'loss_<term>' (eq. 1)."""
        loss_cfg = self.cfg.LOSS
        # np_target carries instance ids (the released label channel 0): binary for NP, ids for the focus
        probs = {"np": (tf.one_hot(tf.cast(np_target > 0, tf.int32), 2), outputs["np_prob"])}
        if self.nr_types is not None:
            probs["tp"] = (tf.one_hot(tp_target, self.nr_types), outputs["tp_prob"])
        terms = {}
        for term in loss_cfg.WEIGHTS:
            branch, _, kind = term.partition("_")
            fn = get_loss(kind)
            if branch == "tp" and self.nr_types is None:
                continue  # no type labels: the tp terms do not exist
            if branch == "hv" and kind == "mse":
                value = fn(hv_target, outputs["hv"])
            elif branch == "hv" and kind == "msge":
                # without types the released BinarizeLabel made channel 0 (the focus) binary
                focus_mode = loss_cfg.MSGE_FOCUS if self.nr_types is not None else "binary"
                value = fn(hv_target, outputs["hv"], msge_focus(np_target, focus_mode), variant=loss_cfg.MSGE)
            elif branch in probs and kind == "ce":
                value = fn(*probs[branch])
            elif branch in probs and kind == "dice":
                value = fn(*probs[branch], eps=loss_cfg.DICE_EPS)
            else:
                raise KeyError(f"loss term {term!r}: {kind!r} does not apply to branch {branch!r}")
            terms[term] = tf.identity(value, name=LOSS_TENSOR_PREFIX + term)
        if not terms:
            raise ValueError("cfg.LOSS.WEIGHTS selects no loss term")
        return terms

    def initial_learning_rate(self) -> float:
        """First learning rate of the configured schedule; ScheduledHyperParamSetter drives it after."""
        return float(get_phase(self.cfg.TRAIN.SCHEDULE, 1, self.cfg.TRAIN.LR_SCHEDULE).lr_schedule[0][1])

    def optimizer(self):
        """Adam (beta1 0.9, beta2 0.999, eps 1e-8: TF defaults, as published), no weight decay (published
        has none), on the non-trainable variable ``learning_rate``."""
        lr = tf1.get_variable("learning_rate", initializer=self.initial_learning_rate(), trainable=False)
        tf1.summary.scalar("learning_rate-summary", lr)
        return tf1.train.AdamOptimizer(learning_rate=lr, beta1=0.9, beta2=0.999, epsilon=1e-8)
