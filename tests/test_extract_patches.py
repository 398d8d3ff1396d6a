"""extract_patches.py, the command line: main([...]) end to end (the grid and the library: tests/test_extraction.py)."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from extraction_fixtures import OFFSET, STEP, WINDOW, labelled_tile

import extract_patches
from dataset.patches import load_patch
from misc.io import save_label_mat

SHARED_CONSEP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "consep256" / "train"


def _write(root, tiles):
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    for name, (image, inst, types) in tiles.items():
        assert cv2.imwrite(str(root / "Images" / f"{name}.png"), image[..., ::-1])
        save_label_mat(root / "Labels" / f"{name}.mat", inst, types)
    return root


def test_cli_writes_npy_patches_that_tile_the_image(tmp_path, capsys):
    tile = labelled_tile()
    root = _write(tmp_path / "data", {"img": tile})
    out = tmp_path / "out"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(out), "--kind", "consep"]) == 0
    files = sorted(out.glob("*.npy"))
    assert len(files) == 12 and files[0].name == "img_0000_0000.npy"
    assert "1 images -> 12 patches" in capsys.readouterr().out
    image, inst, types = tile
    stacked = np.dstack([image, inst, types]).astype(np.int32)
    for path in files:
        patch = np.load(path)
        assert patch.shape == (WINDOW, WINDOW, 5) and patch.dtype == np.int32
        row, col = (int(v) for v in path.stem.split("_")[1:])
        np.testing.assert_array_equal(patch[OFFSET:OFFSET + STEP, OFFSET:OFFSET + STEP],
                                      stacked[row:row + STEP, col:col + STEP])
    # mirror padding: the first window's rows above the image reflect the image's first rows
    first = np.load(out / "img_0000_0000.npy")
    np.testing.assert_array_equal(first[OFFSET - 5:OFFSET, OFFSET:OFFSET + STEP],
                                  stacked[5:0:-1, 0:STEP])
    assert 300 in first[..., 3]


def test_cli_merge_types_and_instance_kind(tmp_path):
    root = _write(tmp_path / "data", {"img": labelled_tile()})
    merged = tmp_path / "merged"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(merged), "--merge_types"]) == 0
    patch = np.load(merged / "img_0000_0000.npy")
    assert set(np.unique(patch[..., 4])) <= {0, 2, 4}  # 2 -> 2, 6 -> 4, 7 -> 4
    inst_only = tmp_path / "inst"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(inst_only), "--kind", "instance"]) == 0
    patch = np.load(inst_only / "img_0080_0080.npy")
    assert not patch[..., 4].any() and patch[..., 3].any()
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(tmp_path / "x"), "--kind",
                                 "instance", "--merge_types"]) == 2


def test_cli_refuses_non_empty_output_and_reports_missing_input(tmp_path, capsys):
    root = _write(tmp_path / "data", {"img": labelled_tile()})
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.npy").write_bytes(b"old")
    args = ["--input_dir", str(root), "--output_dir", str(out)]
    assert extract_patches.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert extract_patches.main(args + ["--overwrite"]) == 0
    assert not (out / "stale.npy").exists() and len(list(out.glob("*.npy"))) == 12
    assert not list(out.glob(".*"))  # no temporary files left behind
    old = list(tmp_path.glob("out.old-*"))  # the previous set is kept aside, not deleted
    assert len(old) == 1 and [p.name for p in old[0].iterdir()] == ["stale.npy"]
    assert "moved to" in capsys.readouterr().out
    assert not list(tmp_path.glob("out.partial-*"))
    assert extract_patches.main(["--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cli_failure_leaves_the_existing_output_untouched(tmp_path, capsys):
    root = _write(tmp_path / "data", {"a": labelled_tile(), "b": labelled_tile(seed=1)})
    image, inst, types = labelled_tile(seed=1)
    save_label_mat(root / "Labels" / "b.mat", inst[:-1], types[:-1])  # the 2nd image's label has the wrong shape
    out = tmp_path / "out"
    out.mkdir()
    (out / "old_0000_0000.npy").write_bytes(b"old")
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(out), "--overwrite"]) == 2
    assert "299x200 but the image b.png is 300x200" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["old_0000_0000.npy"]  # no patch of image 'a' mixed in
    assert (out / "old_0000_0000.npy").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]  # no partial or .old folder left
    fresh = tmp_path / "fresh"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(fresh)]) == 2
    assert not fresh.exists()  # an interrupted first run leaves no complete-looking patches


@pytest.mark.skipif(not SHARED_CONSEP.is_dir(), reason="../shared/data/consep256 not present")
def test_cli_on_two_real_consep256_crops(tmp_path):
    root = tmp_path / "consep"
    (root / "Images").mkdir(parents=True)
    (root / "Labels").mkdir()
    names = sorted(p.stem for p in (SHARED_CONSEP / "Images").glob("*.jpg"))[:2]
    for name in names:
        shutil.copy(SHARED_CONSEP / "Images" / f"{name}.jpg", root / "Images")
        shutil.copy(SHARED_CONSEP / "Labels" / f"{name}.mat", root / "Labels")
    out = tmp_path / "out"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(out)]) == 0
    files = sorted(out.glob("*.npy"))
    assert len(files) == 2 * 16  # 256 px: origins 0, 80, 160, 176 per axis
    patch = np.load(files[0])
    assert patch.shape == (540, 540, 5) and patch.dtype == np.int32
    assert patch[..., :3].max() <= 255 and set(np.unique(patch[..., 4])) <= {0, 1, 2, 3, 4}


def test_cli_compact_patches_with_holdout_and_fast_geometry(tmp_path, capsys):
    tiles = {f"t{k}_{c:03d}": labelled_tile(120, 100, seed=k * 10 + c) for k in range(3) for c in range(2)}
    root = _write(tmp_path / "data", tiles)
    train, valid = tmp_path / "train", tmp_path / "valid"
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(train), "--format", "npz",
                                 "--holdout", "1", "--holdout_dir", str(valid), "--config", "MODEL.MODE=fast"]) == 0
    out = capsys.readouterr().out
    assert "4 images -> 4 patches of 512x512 (npz" in out and "2 images -> 2 patches" in out  # step 164 > 120
    assert sorted(p.name for p in valid.glob("*.npz")) == ["t1_000_0000_0000.npz", "t1_001_0000_0000.npz"]
    split = json.loads((train / "split.json").read_text())
    assert split["holdout"] == ["t1_000", "t1_001"] and json.loads((valid / "split.json").read_text()) == split
    image, labels = load_patch(valid / "t1_000_0000_0000.npz", 256)
    original = tiles["t1_000"]
    offset = (512 - 164) // 2
    np.testing.assert_array_equal(image[offset:offset + 120, offset:offset + 100], original[0])
    np.testing.assert_array_equal(labels[offset:offset + 120, offset:offset + 100, 0], original[1])
    args = ["--input_dir", str(root), "--output_dir", str(tmp_path / "x"), "--holdout", "1"]
    with pytest.raises(SystemExit):
        extract_patches.main(args)  # --holdout without --holdout_dir
    assert extract_patches.main(args[:4] + ["--holdout", "3", "--holdout_dir", str(tmp_path / "y")]) == 2
    assert "cannot hold out 3 of 3 source tiles" in capsys.readouterr().err


def _dead_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partial_folder_of_a_killed_run_is_removed_and_reported(tmp_path, capsys):
    """Issue 13.4: a SIGKILLed run left <out>.partial-<pid>; the next run removes it and says so."""
    root = _write(tmp_path / "data", {"img": labelled_tile(100, 100)})
    out = tmp_path / "out"
    stale = tmp_path / f"out.partial-{_dead_pid()}"
    stale.mkdir()
    (stale / "img_0000_0000.npy").write_bytes(b"half")
    alive = tmp_path / "out.partial-1"  # pid 1 is alive: another run's folder is never touched
    alive.mkdir()
    assert extract_patches.main(["--input_dir", str(root), "--output_dir", str(out)]) == 0
    assert not stale.exists() and alive.exists()
    assert f"removed {stale}" in capsys.readouterr().err
