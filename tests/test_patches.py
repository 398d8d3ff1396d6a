"""dataset/patches.py: the published .npy and compact .npz patch formats, and the split by source tile."""
import numpy as np
import pytest

from dataset.patches import (
    check_patch,
    list_patches,
    load_patch,
    patch_shape,
    save_patch,
    source_name,
    split_by_source,
)
from misc.io import InputError


def _patch(size=64, max_id=300, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    inst = np.zeros((size, size), np.int64)
    inst[5:20, 5:20] = max_id
    inst[30:40, 30:50] = 2
    types = np.where(inst > 0, 3, 0)
    return image, inst, types


@pytest.mark.parametrize("max_id, inst_dtype", [(300, np.uint16), (70000, np.int32)])
def test_npz_and_npy_hold_the_same_patch(tmp_path, max_id, inst_dtype):
    image, inst, types = _patch(max_id=max_id)
    npy = save_patch(tmp_path / "a", image, inst, types, "npy")
    npz = save_patch(tmp_path / "a", image, inst, types, "npz")
    assert (npy.name, npz.name) == ("a.npy", "a.npz")
    for path in (npy, npz):
        got_image, got_labels = load_patch(path, 64)
        assert got_image.dtype == np.uint8 and got_labels.dtype == np.int32 and got_labels.shape == (64, 64, 2)
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_labels[..., 0], inst)
        np.testing.assert_array_equal(got_labels[..., 1], types)
        assert patch_shape(path) == (64, 64, 5)
    with np.load(npz) as store:
        assert store["inst"].dtype == inst_dtype and store["type"].dtype == np.uint8
    assert npz.stat().st_size < npy.stat().st_size / 4  # 20 bytes/px -> at most ~6 before compression


def test_untyped_patch_gets_type_zero(tmp_path):
    image, inst, _ = _patch()
    _, labels = load_patch(save_patch(tmp_path / "p", image, inst, None, "npz"), 1)
    assert not labels[..., 1].any()


def test_bad_patches_are_named(tmp_path):
    image, inst, types = _patch()
    with pytest.raises(ValueError, match="patch format"):
        save_patch(tmp_path / "p", image, inst, types, "tif")
    with pytest.raises(InputError, match="type ids must lie in 0..255"):
        save_patch(tmp_path / "p", image, inst, types * 100, "npz")
    np.savez(tmp_path / "missing.npz", image=image)
    with pytest.raises(InputError, match=r"missing.npz: compact patch lacks the arrays \['inst', 'type'\]"):
        load_patch(tmp_path / "missing.npz", 1)
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="corrupt.npz: not a readable patch"):
        load_patch(tmp_path / "corrupt.npz", 1)
    with pytest.raises(InputError, match="corrupt.npz: not a readable patch"):
        patch_shape(tmp_path / "corrupt.npz")
    small = save_patch(tmp_path / "small", image, inst, types, "npz")
    with pytest.raises(InputError, match=r"small.npz: patch has shape \(64, 64, 5\)"):
        check_patch(small, 65)
    with pytest.raises(InputError, match="no such folder"):
        list_patches(tmp_path / "nothing")


def test_list_patches_reads_both_formats_sorted(tmp_path):
    image, inst, types = _patch()
    save_patch(tmp_path / "b", image, inst, types, "npz")
    save_patch(tmp_path / "a", image, inst, types, "npy")
    (tmp_path / ".hidden.npz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.rsplit("/", 1)[1] for p in list_patches(tmp_path)] == ["a.npy", "b.npz"]


def test_source_name_strips_the_crop_index():
    assert source_name("train_10_003") == "train_10"
    assert source_name("image04") == "image04"
    assert source_name("tile_7") == "tile"


def test_split_by_source_keeps_each_tile_on_one_side():
    names = [f"train_{t}_{c:03d}" for t in range(1, 10) for c in range(4)]
    kept, held = split_by_source(names, 3)
    assert sorted({source_name(n) for n in held}) == ["train_2", "train_5", "train_8"]  # evenly spaced
    assert not {source_name(n) for n in kept} & {source_name(n) for n in held}
    assert sorted(kept + held) == sorted(names) and len(held) == 12
    assert split_by_source(names, 3) == (kept, held)  # deterministic
    for bad in (0, 9):
        with pytest.raises(InputError, match=f"cannot hold out {bad} of 9"):
            split_by_source(names, bad)
