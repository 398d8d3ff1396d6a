"""Spatial geometry of HoVer-Net, derived once from the layer list of each mode (spec section 1).

Every size the project uses - network input and output, skip-connection crops, training patch size and
step, inference window and step - comes from :func:`derive_geometry`; ``finalize_config`` stores the
result in the config and the graph, the targets, patch extraction and inference read it from there.
Nothing else types 270/80 or 256/164. No TensorFlow here.

The two published modes differ in three layer settings (:data:`MODES`):

``original``
    input 270; ``conv0`` 7x7 **valid**; decoder ``conva`` and dense-unit convolutions 5x5 **valid**
    (u1's ``conva`` 'same'). Output 80, skip crops 184 (group0) and 72 (group1).
``fast``
    input 256; ``conv0`` 7x7 **same**; decoder kernels **3x3** in ``conva`` and the dense units (still valid;
    u1's ``conva``, now 3x3 as well, still 'same'). Output 164, crops 92 and 36.

Checked against the released PyTorch code (vqdang/hover_net master, ``models/hovernet/net_desc.py``): one
``ksize = 5 if mode == 'original' else 3`` feeds every decoder ``conva`` (u1's included) and the dense units,
and ``fast`` prepends a TensorFlow-style 'same' padding layer to ``conv0``. TensorFlow 'same' puts the odd
pixel of padding bottom/right; for the stride-1 odd kernels of ``conv0`` and u1's ``conva`` the padding is
even (3 and 1 or 2 px each side), so it is symmetric there, and only the encoder's stride-2 3x3 convolutions
(identical in both modes, 'same' in the published TensorFlow code as well) pad asymmetrically.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModeLayers", "MODES", "Geometry", "derive_geometry", "CONV0_KSIZE", "DENSE_BOTTLENECK_KSIZE"]

CONV0_KSIZE = 7  # the encoder's first convolution
DENSE_BOTTLENECK_KSIZE = 1  # the 1x1 inside each dense unit, before its conv of the decoder kernel size


@dataclass(frozen=True)
class ModeLayers:
    """The layer settings that distinguish a mode: what the geometry is derived from."""

    input_shape: int  # network input side (px); the published choice for the mode
    conv0_padding: str  # 'valid' | 'same'
    decoder_ksize: int  # kernel of u3/u2/u1 'conva' and of each dense unit's grouped conv


MODES = {
    "original": ModeLayers(input_shape=270, conv0_padding="valid", decoder_ksize=5),
    "fast": ModeLayers(input_shape=256, conv0_padding="same", decoder_ksize=3),
}


@dataclass(frozen=True)
class Geometry:
    """All spatial sizes (pixels, square) of one network configuration.

    ``group_sizes``: outputs of group0..group3 (group3 = conv_bot). ``crop_group0`` / ``crop_group1``: total
    pixels centre-cropped from the group0 / group1 output before the u1 / u2 sums (``crop // 2`` before, the
    rest after). ``output_shape``: the decoder output, the central square of the input window.
    ``patch_size`` / ``patch_step``: training patch extraction (twice the input, so that rotation and
    shear of the patch never bring padding into the input crop; step = output, so the outputs tile the
    image). ``margin``: ``(input - output) / 2``, the context each side of the output.
    """

    mode: str
    input_shape: int
    conv0_padding: str
    decoder_ksize: int
    group_sizes: tuple[int, int, int, int]
    crop_group0: int
    crop_group1: int
    output_shape: int

    @property
    def margin(self) -> int:
        return (self.input_shape - self.output_shape) // 2

    @property
    def patch_size(self) -> int:
        return 2 * self.input_shape

    @property
    def patch_step(self) -> int:
        return self.output_shape


def _same(size: int, stride: int) -> int:
    return -(-size // stride)


def derive_geometry(mode: str = "original", dense_units: tuple[int, int] = (8, 4),
                    encoder_strides: tuple[int, ...] = (1, 2, 2, 2), input_shape: int | None = None) -> Geometry:
    """Walk the layer list of ``mode`` and return its :class:`Geometry`.

    Encoder: conv0 (valid removes ``CONV0_KSIZE - 1``, same keeps the size), then the residual groups,
    whose strided 'same' convolutions divide with ceil. Decoder: u3 up-samples conv_bot 2x onto group2,
    then a valid ``conva`` and ``dense_units[0]`` valid dense units each remove ``decoder_ksize - 1``;
    u2 likewise with ``dense_units[1]`` on the cropped group1; u1 up-samples onto the cropped group0 and
    keeps the size ('same' ``conva``). ``input_shape`` defaults to the mode's published input.

    Raises ``ValueError`` for an unknown mode or a size that gives no consistent decoder (up-sampled
    conv_bot not matching group2, a non-positive or odd crop).
    """
    if mode not in MODES:
        raise ValueError(f"MODEL.MODE must be one of {sorted(MODES)}, got {mode!r}")
    layers = MODES[mode]
    size_in = layers.input_shape if input_shape is None else int(input_shape)
    shrink = layers.decoder_ksize - 1
    if len(encoder_strides) != 4 or len(dense_units) != 2:
        raise ValueError("the geometry needs 4 encoder strides and 2 dense-unit counts")
    size = size_in - (CONV0_KSIZE - 1) if layers.conv0_padding == "valid" else size_in
    groups = []
    for stride in encoder_strides:
        size = _same(size, stride)
        groups.append(size)
    g0, g1, g2, g3 = groups
    if 2 * g3 != g2:
        raise ValueError(f"input {size_in}: group3 size {g3} does not up-sample onto group2 size {g2}")
    u3 = 2 * g3 - shrink * (1 + dense_units[0])
    u2_up = 2 * u3
    u2 = u2_up - shrink * (1 + dense_units[1])
    u1_up = 2 * u2
    crop1, crop0 = g1 - u2_up, g0 - u1_up
    if min(u3, u2) <= 0 or crop0 < 0 or crop1 < 0 or crop0 % 2 or crop1 % 2:
        raise ValueError(f"input {size_in} ({mode}) gives no valid decoder geometry (crops {crop0}, {crop1})")
    return Geometry(mode, size_in, layers.conv0_padding, layers.decoder_ksize, (g0, g1, g2, g3), crop0, crop1,
                    u1_up)
