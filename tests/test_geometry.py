"""src/geometry.py: the sizes of both modes walked by hand through the layer list, and the errors."""
import pytest

from src.geometry import CONV0_KSIZE, MODES, derive_geometry


def test_original_geometry_by_hand():
    g = derive_geometry("original")
    # conv0 7x7 valid: 270 - 6 = 264; group0 stride 1, groups 1..3 stride 2 ('same', ceil): 132, 66, 33
    assert g.group_sizes == (264, 132, 66, 33)
    # u3: up 2 * 33 = 66, conva 5x5 valid and 8 dense units 5x5 valid each remove 4: 66 - 4 * 9 = 30
    # u2: up 60 -> group1 crop 132 - 60 = 72; 60 - 4 * 5 = 40
    # u1: up 80 -> group0 crop 264 - 80 = 184; 'same' conva keeps 80
    assert (g.crop_group0, g.crop_group1, g.output_shape) == (184, 72, 80)
    assert (g.input_shape, g.margin, g.patch_size, g.patch_step) == (270, 95, 540, 80)
    assert (g.conv0_padding, g.decoder_ksize) == ("valid", 5)


def test_fast_geometry_by_hand():
    g = derive_geometry("fast")
    # conv0 7x7 same keeps 256; groups: 256, 128, 64, 32
    assert g.group_sizes == (256, 128, 64, 32)
    # u3: up 64, conva 3x3 valid and 8 dense units 3x3 valid each remove 2: 64 - 2 * 9 = 46
    # u2: up 92 -> group1 crop 128 - 92 = 36; 92 - 2 * 5 = 82
    # u1: up 164 -> group0 crop 256 - 164 = 92; 'same' conva keeps 164
    assert (g.crop_group0, g.crop_group1, g.output_shape) == (92, 36, 164)
    assert (g.input_shape, g.margin, g.patch_size, g.patch_step) == (256, 46, 512, 164)
    assert (g.conv0_padding, g.decoder_ksize) == ("same", 3)


def test_geometry_follows_the_layer_list():
    # fewer dense units (the 'small' preset's (4, 2)), fast: u3 64 - 2 * 5 = 54, up 108, crop1 128 - 108 = 20;
    # u2 108 - 2 * 3 = 102, up 204, crop0 256 - 204 = 52
    g = derive_geometry("fast", dense_units=(4, 2))
    assert (g.crop_group0, g.crop_group1, g.output_shape) == (52, 20, 204)
    # another input in the original mode: 334 - 6 = 328, groups 328, 164, 82, 41; u3 82 - 36 = 46; up 92,
    # crop1 164 - 92 = 72; u2 92 - 20 = 72; up 144, crop0 328 - 144 = 184
    g = derive_geometry("original", input_shape=334)
    assert (g.group_sizes, g.crop_group0, g.crop_group1, g.output_shape) == ((328, 164, 82, 41), 184, 72, 144)
    assert CONV0_KSIZE == 7 and set(MODES) == {"original", "fast"}


def test_bad_geometry_raises():
    with pytest.raises(ValueError, match="MODEL.MODE"):
        derive_geometry("padded")
    with pytest.raises(ValueError, match="up-sample"):  # 272 - 6 = 266 -> 266, 133, 67, 34; 2 * 34 != 67
        derive_geometry("original", input_shape=272)
    with pytest.raises(ValueError, match="no valid decoder"):  # 128, 64, 32, 16: u3 = 32 - 4 * 9 < 0
        derive_geometry("original", input_shape=134)
    with pytest.raises(ValueError, match="4 encoder strides"):
        derive_geometry("fast", encoder_strides=(1, 2, 2))
