"""misc/io.py: image and label reading with clear errors, atomic writes, colour-coded maps."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

import misc.arrays
import misc.io
from misc.io import (
    InputError,
    ScratchArray,
    atomic_path,
    colour_instances_to_ids,
    load_label_mat,
    move_aside,
    read_image_rgb,
    save_label_mat,
    write_json_list_atomic,
)


def _write_bgr(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def test_read_image_rgb_swaps_channels_and_drops_alpha(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    rgb = read_image_rgb(_write_bgr(tmp_path / "a.png", bgr))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == [200, 0, 10]).all()
    bgra = np.dstack([bgr, np.full((4, 5), 7, np.uint8)])
    rgb_from_rgba = read_image_rgb(_write_bgr(tmp_path / "b.png", bgra))
    assert rgb_from_rgba.shape == (4, 5, 3)
    assert (rgb_from_rgba == rgb).all()


@pytest.mark.parametrize("name, array, reason", [
    ("gray.png", np.zeros((4, 4), np.uint8), "grayscale"),
    ("deep.png", np.zeros((4, 4, 3), np.uint16), "uint16"),
])
def test_read_image_rgb_rejects_unsupported_images(tmp_path, name, array, reason):
    path = _write_bgr(tmp_path / name, array)
    with pytest.raises(InputError, match=reason):
        read_image_rgb(path)


def test_read_image_rgb_rejects_grey_with_alpha(tmp_path):
    """Issue 22.7: a grey + alpha (LA) PNG was read as RGB and segmented without a word."""
    from PIL import Image

    grey_alpha = np.dstack([np.arange(20, dtype=np.uint8).reshape(4, 5), np.full((4, 5), 255, np.uint8)])
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    with pytest.raises(InputError, match="grayscale image with alpha"):
        read_image_rgb(tmp_path / "la.png")


def test_read_image_rgb_rejects_missing_empty_and_garbage(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image_rgb(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image_rgb(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="not a readable image"):
        read_image_rgb(tmp_path / "junk.png")


def _tiff_cut_short(path, keep: int):
    """A TIFF of an RGB image with only its first ``keep`` bytes: ``keep`` past the header keeps it readable as far
    as its header, a smaller one makes it garbage."""
    import tifffile

    tifffile.imwrite(path, np.zeros((200, 200, 3), np.uint8), photometric="rgb")
    path.write_bytes(path.read_bytes()[:keep])
    return path


def test_check_image_header_reads_only_the_header(tmp_path):
    """Issue 22.11: infer.py finds a file that is not an image before the model loads; what only the pixels show is
    read_image_rgb's (a TIFF cut short after its header)."""
    from misc.io import check_image_header

    check_image_header(_write_bgr(tmp_path / "good.png", np.zeros((4, 5, 3), np.uint8)))
    check_image_header(_write_bgr(tmp_path / "grey.png", np.zeros((4, 5), np.uint8)))  # the header is fine
    cut = _tiff_cut_short(tmp_path / "cut.tif", 300)
    check_image_header(cut)
    with pytest.raises(InputError, match="cut.tif: not a readable image"):
        read_image_rgb(cut)
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in (("missing.png", "no such file"), ("empty.png", "empty file")):
        with pytest.raises(InputError, match=f"{name}: {reason}"):
            check_image_header(tmp_path / name)
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(InputError, match="garbage.tif: not a readable image"):
        check_image_header(tmp_path / "garbage.tif")


def test_bad_tiffs_are_one_error_and_no_console_noise(tmp_path, capfd):
    """Issue 22.11: OpenCV's libtiff printed 'TIFFReadDirectory: ...', 'TIFFFillStrip: Read error ...' and
    '[ WARN:0@0.3] global grfmt_tiff.cpp ...' lines beside the InputError of each bad file."""
    from misc.io import check_image_header

    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00 not really a tiff")
    for path in (garbage, _tiff_cut_short(tmp_path / "cut.tif", 300)):
        with pytest.raises(InputError, match="not a readable image"):
            read_image_rgb(path)
    with pytest.raises(InputError):
        check_image_header(garbage)
    assert capfd.readouterr().err == ""


def test_label_mat_round_trip(tmp_path):
    inst = np.array([[0, 3, 3], [0, 0, 9]], np.int32)
    path = tmp_path / "x.mat"
    save_label_mat(path, inst, type_map=(inst > 0) * 2, inst_type=[2, 1], inst_centroid=[[1.5, 0.0], [2.0, 1.0]])
    label = load_label_mat(path, with_types=True)
    assert label["inst_map"].dtype == np.int32 and (label["inst_map"] == inst).all()
    assert label["inst_type"].tolist() == [2, 1]
    assert label["inst_centroid"].shape == (2, 2) and label["inst_centroid"][0, 0] == 1.5
    assert (label["type_map"] == (inst > 0) * 2).all()
    raw = scipy.io.loadmat(path)
    assert raw["inst_type"].shape == (2, 1)  # CoNSeP stores Nx1


def _savemat_bytes(path, inst_map, type_map=None, inst_type=None, inst_centroid=None):
    """What save_label_mat wrote until it streamed the maps: scipy.io.savemat of the whole arrays."""
    data = {"inst_map": np.asarray(inst_map, np.int32)}
    if type_map is not None:
        data["type_map"] = np.asarray(type_map, np.int32)
    if inst_type is not None:
        data["inst_type"] = np.asarray(inst_type, np.int32).reshape(-1, 1)
    if inst_centroid is not None:
        data["inst_centroid"] = np.asarray(inst_centroid, np.float64).reshape(-1, 2)
    with open(path, "wb") as handle:
        scipy.io.savemat(handle, data, do_compression=True)
    return Path(path).read_bytes()


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 5), (7, 1), (61, 37), (300, 257)])
def test_label_mat_streamed_in_bands_has_savemats_bytes(tmp_path, monkeypatch, shape):
    """Issue 22.3: the maps are compressed a band of columns at a time; the file is byte for byte savemat's (after
    the 128-byte header, which holds the time), with one band and with many."""
    rng = np.random.default_rng(sum(shape))
    inst = np.where(rng.random(shape) < 0.5, 0, rng.integers(1, 70_000, shape)).astype(np.int64)
    types = (inst % 5).astype(np.uint8)
    for band_bytes in (misc.arrays.BAND_BYTES, 4 * shape[0] * 3, 1):
        monkeypatch.setattr(misc.arrays, "BAND_BYTES", band_bytes)
        for args in [(inst,), (inst, types, [1, 2], [[1.5, 2.0], [3.0, 4.0]]), (inst, None, [1], None)]:
            save_label_mat(tmp_path / "a.mat", *args)
            assert (tmp_path / "a.mat").read_bytes()[128:] == _savemat_bytes(tmp_path / "b.mat", *args)[128:]
    # a map kept in a file is written the same
    with ScratchArray.scratch(tmp_path, "x.labels", shape, np.int32, order="F") as labels:
        labels[:, :] = inst
        save_label_mat(tmp_path / "c.mat", labels, types)
    assert (tmp_path / "c.mat").read_bytes()[128:] == _savemat_bytes(tmp_path / "b.mat", inst, types)[128:]
    assert load_label_mat(tmp_path / "c.mat")["inst_map"].tolist() == inst.tolist()


@pytest.mark.parametrize("order, inner", [("F", ()), ("C", ()), ("C", (2,))])
def test_scratch_array_reads_and_writes_rectangles_and_leaves_nothing(tmp_path, order, inner):
    shape = (50, 40) + inner
    with ScratchArray.scratch(tmp_path, "tile.maps", shape, np.float32, order) as array:
        (scratch,) = tmp_path.iterdir()
        match = misc.io._TEMPORARY.match(scratch.name)  # a killed run's file is removed by the next run
        assert match and int(match.group(1)) == os.getpid() and scratch.stat().st_size == 4 * int(np.prod(shape))
        assert array.shape == shape and not array[:, :].any()
        expected = np.zeros(shape, np.float32)
        for rows, cols, value in ((slice(5, 8), slice(12, 14), 7), (slice(0, 50), slice(39, 40), 2),
                                  (slice(49, 50), slice(0, 40), 3)):
            array[rows, cols] = value
            expected[rows, cols] = value
        view = array.view((slice(20, 30), slice(10, 30)))  # writes through while mapped
        view[1] = 5
        expected[21, 10:30] = 5
        del view
        np.testing.assert_array_equal(array[:, :], expected)
        np.testing.assert_array_equal(array[3:25, 11:39], expected[3:25, 11:39])
        np.testing.assert_array_equal(np.asarray(array), expected)
        assert array[:, 40:].shape == (50, 0) + inner
        with pytest.raises(TypeError):
            array[3, 4]
    assert list(tmp_path.iterdir()) == []


def test_write_json_list_atomic_writes_json_dumps_bytes_one_item_at_a_time(tmp_path):
    items = [{"id": 1, "c": [[1, 2], [3, 4]], "p": 0.25}, {"id": 2, "c": [], "p": None}]
    for head, listed in (({"a": [1, 2], "b": {"x": "y"}}, items), ({"type": "FeatureCollection"}, [])):
        write_json_list_atomic(tmp_path / "x.json", head, "nuclei", iter(listed), allow_nan=False)
        assert (tmp_path / "x.json").read_text() == json.dumps({**head, "nuclei": listed})
    with pytest.raises(ValueError):  # NaN is not JSON: nothing is left behind
        write_json_list_atomic(tmp_path / "y.json", {"a": 1}, "n", [{"p": 1.0}, {"p": float("nan")}], allow_nan=False)
    with pytest.raises(ValueError, match="head"):
        write_json_list_atomic(tmp_path / "y.json", {}, "n", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_label_mat_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_label_mat(tmp_path / "none.mat")
    (tmp_path / "corrupt.mat").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(InputError, match="not a readable .mat"):
        load_label_mat(tmp_path / "corrupt.mat")
    scipy.io.savemat(tmp_path / "nokey.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(InputError, match="missing key 'inst_map'"):
        load_label_mat(tmp_path / "nokey.mat")
    scipy.io.savemat(tmp_path / "neg.mat", {"inst_map": np.array([[0, -1]])})
    with pytest.raises(InputError, match="negative"):
        load_label_mat(tmp_path / "neg.mat")
    scipy.io.savemat(tmp_path / "frac.mat", {"inst_map": np.array([[0, 1.5]])})
    with pytest.raises(InputError, match="non-integer"):
        load_label_mat(tmp_path / "frac.mat")
    scipy.io.savemat(tmp_path / "3d.mat", {"inst_map": np.zeros((2, 2, 2))})
    with pytest.raises(InputError, match="2-D"):
        load_label_mat(tmp_path / "3d.mat")
    scipy.io.savemat(tmp_path / "notypes.mat", {"inst_map": np.zeros((2, 2))})
    with pytest.raises(InputError, match="inst_type"):
        load_label_mat(tmp_path / "notypes.mat", with_types=True)


def test_atomic_path_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "out" / "result.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".txt"
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() would create it, not 0600
    assert [p.name for p in target.parent.iterdir()] == ["result.txt"]


def test_colour_instances_to_ids():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = [255, 0, 0]
    rgb[1, 2] = [0, 0, 9]
    rgb[1, 1] = [255, 0, 0]
    ids = colour_instances_to_ids(rgb)
    # packed colours sort as 0 (background) < 0x000009 < 0xff0000
    assert ids.tolist() == [[0, 2, 0], [0, 2, 1]]
    no_background = np.full((1, 2, 3), 5, np.uint8)
    assert colour_instances_to_ids(no_background).tolist() == [[1, 1]]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_move_aside_keeps_every_earlier_backup(tmp_path):
    first = tmp_path / "run"
    first.mkdir()
    (first / "a").write_text("1")
    backup1 = move_aside(first)
    assert not first.exists() and (backup1 / "a").read_text() == "1"
    assert backup1.name.startswith("run.old-")
    first.mkdir()
    (first / "a").write_text("2")
    backup2 = move_aside(first)  # same second: a numbered name, never into the earlier backup
    assert backup2 != backup1 and (backup2 / "a").read_text() == "2" and (backup1 / "a").read_text() == "1"


UNWRITABLE = Path("/sys/hovernet_tf_test/out")  # root may not create files in sysfs either


def _unwritable():
    try:
        UNWRITABLE.parent.mkdir()
    except OSError:
        return UNWRITABLE
    UNWRITABLE.parent.rmdir()
    pytest.skip("needs sysfs, a folder nobody may write into")


def test_check_writable_names_the_path(tmp_path):
    """Issue 13.6: one line naming the path instead of a PermissionError traceback later."""
    from misc.io import check_writable

    check_writable(tmp_path / "new" / "deeper", "--output")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--output .*file.* is not a folder"):
        check_writable(tmp_path / "file" / "out", "--output")
    with pytest.raises(InputError, match=f"--output {UNWRITABLE}: cannot write"):
        check_writable(_unwritable(), "--output")


@pytest.mark.parametrize("cli", ["infer", "train", "extract_patches", "compute_stats"])
def test_every_cli_refuses_an_unwritable_output_with_exit_2(cli, tmp_path, capsys):
    import extract_patches
    import infer
    import train
    from metrics import compute_stats

    out = _unwritable()
    argv = {
        "infer": (infer.main, ["--input", str(tmp_path), "--output", str(out), "--model", "m.npz"]),
        "train": (train.main, ["--data_dir", str(tmp_path), "--out_dir", str(out)]),
        "extract_patches": (extract_patches.main, ["--input_dir", str(tmp_path), "--output_dir", str(out)]),
        "compute_stats": (compute_stats.main, ["--mode", "instance", "--true_dir", str(tmp_path), "--pred_dir",
                                               str(tmp_path), "--json", str(out / "s.json")]),
    }[cli]
    assert argv[0](argv[1]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "cannot write" in err and len(err.strip().splitlines()) == 1


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    """Issue 13.4: temporary files carry their writer's pid; those of dead processes are removed."""
    import subprocess
    import sys

    from misc.io import atomic_path, remove_stale_temporaries

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with atomic_path(tmp_path / "a.png") as tmp:
        assert f".{os.getpid()}-" in tmp.name
        mine = tmp
        mine.write_bytes(b"in progress")
        stale = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{child.pid}-")
        stale.write_bytes(b"left by a killed run")
        assert remove_stale_temporaries(tmp_path) == [stale]
        assert mine.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_stopping_process_removes_its_own_temporaries_too(tmp_path):
    """Issue 22.5: a Ctrl-C or SIGTERM can land between a temporary's creation and the block that removes it;
    infer.py, stopping, removes its own (own_too), which a running writer keeps."""
    from misc.io import remove_stale_temporaries

    mine = tmp_path / f".a.{os.getpid()}-0a1b2c3d.part.json"  # atomic_path's name for a.json, in this process
    mine.write_text("{")
    assert remove_stale_temporaries(tmp_path) == [] and mine.exists()
    assert remove_stale_temporaries(tmp_path, own_too=True) == [mine] and not mine.exists()


def test_importing_misc_io_leaves_the_umask_alone():
    """Issue 12.10: reading the umask means setting it (a race with other threads), so misc.io never does."""
    import subprocess
    import sys

    probe = ("import os\n"
             "calls = []\n"
             "real = os.umask\n"
             "os.umask = lambda mask: calls.append(mask) or real(mask)\n"
             "import misc.io\n"
             "from misc.io import atomic_path\n"
             "import tempfile, pathlib\n"
             "with tempfile.TemporaryDirectory() as folder:\n"
             "    with atomic_path(pathlib.Path(folder) / 'x.txt') as tmp:\n"
             "        tmp.write_text('x')\n"
             "print(calls)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout == "[]\n"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_path_gives_the_mode_a_plain_open_gives(tmp_path, mask):
    import misc.io

    previous = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with atomic_path(tmp_path / "atomic.txt") as tmp:
            match = misc.io._TEMPORARY.match(tmp.name)  # a later run can tell whether it is stale
            assert match and int(match.group(1)) == os.getpid()
            tmp.write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_json_atomic_keeps_each_call_sites_format(tmp_path):
    from misc.io import write_json_atomic

    obj = {"b": 1, "a": [1.5, None]}
    assert write_json_atomic(tmp_path / "x.json", obj) == tmp_path / "x.json"
    assert (tmp_path / "x.json").read_text() == '{"b": 1, "a": [1.5, null]}'
    write_json_atomic(tmp_path / "y.json", obj, indent=1, sort_keys=True, newline=True)
    assert (tmp_path / "y.json").read_text() == '{\n "a": [\n  1.5,\n  null\n ],\n "b": 1\n}\n'
    with pytest.raises(ValueError):  # NaN is not JSON: nothing is left behind
        write_json_atomic(tmp_path / "z.json", {"p": float("nan")}, allow_nan=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "y.json"]


def test_folder_lock_refuses_a_second_run_and_dies_with_its_holder(tmp_path):
    """Issue 22.2/22.8: two runs into one folder mixed their checkpoints/outputs; a killed run's lock must not stay."""
    import signal
    import subprocess
    import sys

    from misc.io import LOCK_NAME, folder_lock

    folder = tmp_path / "run"
    with folder_lock(folder, "training run"):
        assert (folder / LOCK_NAME).is_file()
        with pytest.raises(InputError, match=r"in use by another training run \(pid \d+ on .* since "):
            with folder_lock(folder, "training run"):
                pass
    with folder_lock(folder, "training run"):  # released on exit
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom misc.io import folder_lock\n"
                               f"with folder_lock({str(folder)!r}, 'run'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"pid {holder.pid}"):
            with folder_lock(folder, "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(folder, "run"):  # the killed holder's lock went with it
        pass
