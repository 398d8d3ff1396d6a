"""src/infer/tiles.py: tiles in, outputs out, with a fake predictor (no TensorFlow).

The fake predictor decodes maps that the synthetic images carry in their own pixels (R: type level,
G/B: the exact HV maps), taking the centre of each window as HoVer-Net does, so the stitched maps are
known and the whole path - windows, stitching, post-processing, writing, resume - is checked end to end.
"""
import csv
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

import misc.outputs
from metrics.compute_stats import main as compute_stats
from misc.io import InputError, load_label_mat, save_label_mat
from misc.outputs import default_type_info
from src.config import config_from_args
from src.infer.tiles import (
    RUN_INFO_NAME,
    SUMMARY_NAME,
    TileSettings,
    collect_inputs,
    mpp_scale,
    run_inference,
    split_channels,
)
from src.maps.postproc import PostprocParams
from src.maps.targets import gen_hv_map

N_TYPES = 5  # background + CoNSeP's four types
TYPE_LEVEL = 50  # R value per type id
_CFG = config_from_args()
SETTINGS = TileSettings.from_config(_CFG)  # 270/80, batch 16, the published post-processing
TYPES = default_type_info(_CFG.DATA.TYPE_NAMES)


def _disc_scene(height, width, seed, radii=(5, 9), gap=2, attempts=39):
    """Instance map with non-touching discs, their types, and the image encoding the exact maps."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((height, width), np.int32)
    type_of = np.zeros(attempts + 1, np.int32)
    for inst_id in range(1, attempts + 1):
        r = int(rng.integers(*radii))
        cy, cx = int(rng.integers(r, height - r)), int(rng.integers(r, width - r))
        y0, x0 = max(0, cy - r - gap), max(0, cx - r - gap)
        yy, xx = np.mgrid[y0:min(height, cy + r + gap + 1), x0:min(width, cx + r + gap + 1)]
        distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
        window = inst[y0:y0 + yy.shape[0], x0:x0 + yy.shape[1]]
        if window[distance2 <= (r + gap) ** 2].any():
            continue
        window[distance2 <= r * r] = inst_id
        type_of[inst_id] = int(rng.integers(1, N_TYPES))
    type_map = type_of[inst]
    hv = gen_hv_map(inst)
    image = np.stack([type_map * TYPE_LEVEL, np.round((hv[..., 0] + 1) * 127.5),
                      np.round((hv[..., 1] + 1) * 127.5)], axis=-1).astype(np.uint8)
    return image, inst, type_map


def fake_predict(batch, output_shape=SETTINGS.output_shape):
    """Decode the centre output_shape crop of each input window into [np, hv x, hv y, tp...] maps."""
    off = (batch.shape[1] - output_shape) // 2
    centre = batch[:, off:off + output_shape, off:off + output_shape].astype(np.float32)
    type_id = np.clip(np.rint(centre[..., 0] / TYPE_LEVEL).astype(int), 0, N_TYPES - 1)  # resampled: overshoot
    tp = np.eye(N_TYPES, dtype=np.float32)[type_id]
    fg = (type_id > 0).astype(np.float32)
    hv = (centre[..., 1:3] / 127.5 - 1.0) * fg[..., None]
    return np.concatenate([fg[..., None], hv, tp], axis=-1)


@pytest.fixture
def tiles(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    truths = {}
    for name, (h, w), seed in (("a", (200, 170), 0), ("b", (96, 250), 1)):
        image, inst, type_map = _disc_scene(h, w, seed)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        truths[name] = (inst, type_map)
    return folder, truths


def _save_truths(truths, folder):
    folder.mkdir()
    for name, (inst, type_map) in truths.items():
        ids = np.unique(inst)[1:]
        inst_type = [int(type_map[inst == i][0]) for i in ids]
        centroid = [[np.mean(np.nonzero(inst == i)[1]), np.mean(np.nonzero(inst == i)[0])] for i in ids]
        save_label_mat(folder / f"{name}.mat", inst, type_map, inst_type, centroid)


def test_split_channels_order():
    maps = np.arange(2 * 2 * 8, dtype=np.float32).reshape(2, 2, 8)
    np_prob, hv, tp = split_channels(maps)
    assert np_prob.shape == (2, 2) and hv.shape == (2, 2, 2) and tp.shape == (2, 2, 5)
    assert np_prob[0, 0] == 0 and hv[0, 0].tolist() == [1, 2] and tp[0, 0, 0] == 3
    assert split_channels(maps[..., :3])[2] is None
    with pytest.raises(ValueError):
        split_channels(maps[..., :2])


def test_collect_inputs(tiles, tmp_path):
    folder, _ = tiles
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in collect_inputs(str(folder))] == ["a.png", "b.png"]
    assert [p.name for p in collect_inputs(str(folder / "a.png"))] == ["a.png"]
    assert [p.name for p in collect_inputs(str(folder / "*.png"))] == ["a.png", "b.png"]
    with pytest.raises(InputError, match="no such file"):
        collect_inputs(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="matches no images"):
        collect_inputs(str(folder / "*.tif"))
    (folder / "a.jpg").write_bytes((folder / "a.png").read_bytes())
    with pytest.raises(InputError, match="same name"):
        collect_inputs(str(folder))


def test_end_to_end_outputs_match_the_truth(tiles, tmp_path):
    folder, truths = tiles
    out = tmp_path / "out"
    report = run_inference(collect_inputs(str(folder)), out, fake_predict, TYPES,
                           replace(SETTINGS, batch_size=3), progress=False)
    assert report.ok and sorted(report.done) == ["a", "b"]
    for name, (inst, _) in truths.items():
        pred = load_label_mat(out / f"{name}.mat", with_types=True)
        n_true = len(np.unique(inst)) - 1
        assert pred["inst_map"].shape == inst.shape
        assert pred["inst_map"].max() == n_true == len(pred["inst_type"])
        nuclei = json.loads((out / f"{name}.json").read_text())["nuclei"]
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        assert len(nuclei) == len(features) == n_true
        # Same nuclei in every format: ids, types and centroids agree.
        for record in nuclei:
            assert record["type"] == pred["inst_type"][record["id"] - 1]
            assert np.allclose(record["centroid"], pred["inst_centroid"][record["id"] - 1])
        overlay = cv2.imread(str(out / f"{name}.png"))
        assert overlay.shape == inst.shape + (3,)
    truth_dir = tmp_path / "truth"
    _save_truths(truths, truth_dir)
    scores = tmp_path / "scores.json"
    assert compute_stats(["--mode", "instance", "--true_dir", str(truth_dir), "--pred_dir", str(out),
                          "--json", str(scores)]) == 0
    mean = json.loads(scores.read_text())["mean"]
    assert mean["dq"] == 1.0 and mean["pq"] > 0.9
    assert compute_stats(["--mode", "type", "--true_dir", str(truth_dir), "--pred_dir", str(out),
                          "--json", str(scores)]) == 0
    typed = json.loads(scores.read_text())
    assert typed["f1_d"] == 1.0 and typed["acc"] == 1.0
    with open(out / SUMMARY_NAME, newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"a", "b"}
    assert int(rows["b"]["height"]) == 96 and int(rows["b"]["width"]) == 250
    assert "n_background" not in rows["a"]
    inst_a, type_a = truths["a"]
    for tid, (type_name, _) in TYPES.items():
        if tid:
            expected = sum(1 for i in np.unique(inst_a)[1:] if type_a[inst_a == i][0] == tid)
            assert int(rows["a"][f"n_{type_name}"]) == expected


def test_bad_images_are_reported_and_skipped(tiles, tmp_path):
    folder, _ = tiles
    cv2.imwrite(str(folder / "gray.png"), np.zeros((30, 30), np.uint8))
    cv2.imwrite(str(folder / "deep.png"), np.zeros((30, 30, 3), np.uint16))
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    (folder / "empty.png").write_bytes(b"")
    report = run_inference(collect_inputs(str(folder)), tmp_path / "out", fake_predict, TYPES, SETTINGS,
                           progress=False)
    assert not report.ok
    assert sorted(report.done) == ["a", "b"]
    reasons = {k.rsplit("/", 1)[-1]: v for k, v in report.failed.items()}
    assert set(reasons) == {"gray.png", "deep.png", "broken.png", "empty.png"}
    assert "grayscale" in reasons["gray.png"] and "uint16" in reasons["deep.png"]
    assert "not a readable image" in reasons["broken.png"] and "empty" in reasons["empty.png"]


def test_rerun_resumes_and_overwrite_redoes(tiles, tmp_path):
    folder, _ = tiles
    out = tmp_path / "out"
    files = collect_inputs(str(folder))
    calls = []

    def counting_predict(batch):
        calls.append(len(batch))
        return fake_predict(batch)

    run_inference(files, out, counting_predict, TYPES, SETTINGS, progress=False)
    first_calls = len(calls)
    (out / "b.geojson").unlink()  # as if the run had been killed while writing b
    mtime_a = (out / "a.mat").stat().st_mtime_ns
    report = run_inference(files, out, counting_predict, TYPES, SETTINGS, progress=False)
    assert report.already_complete == ["a"] and report.done == ["b"]
    assert (out / "b.geojson").is_file() and (out / "a.mat").stat().st_mtime_ns == mtime_a
    assert len(calls) < 2 * first_calls
    with open(out / SUMMARY_NAME, newline="") as handle:
        assert sorted(row["image"] for row in csv.DictReader(handle)) == ["a", "b"]
    # killed after writing a's outputs but before its summary row: the row is rebuilt from a.mat
    with open(out / SUMMARY_NAME, newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    del rows["a"]
    with open(out / SUMMARY_NAME, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows["b"]))
        writer.writeheader()
        writer.writerows(rows.values())
    (out / "b.json").unlink()
    run_inference(files, out, counting_predict, TYPES, SETTINGS, progress=False)
    with open(out / SUMMARY_NAME, newline="") as handle:
        rebuilt = {row["image"]: row for row in csv.DictReader(handle)}
    assert sorted(rebuilt) == ["a", "b"] and rebuilt["a"]["seconds"] == ""
    a_label = load_label_mat(out / "a.mat", with_types=True)
    assert int(rebuilt["a"]["nuclei"]) == int(a_label["inst_map"].max())
    assert int(rebuilt["a"]["height"]) == 200 and int(rebuilt["a"]["width"]) == 170
    report = run_inference(files, out, counting_predict, TYPES, SETTINGS, overwrite=True, progress=False)
    assert sorted(report.done) == ["a", "b"] and not report.already_complete
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_formats_subset(tiles, tmp_path):
    folder, _ = tiles
    out = tmp_path / "out"
    run_inference(collect_inputs(str(folder / "a.png")), out, fake_predict, TYPES, SETTINGS,
                  formats=("mat", "geojson"), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.geojson", "a.mat", SUMMARY_NAME]


def test_refuses_to_write_over_the_input_images(tiles):
    folder, _ = tiles
    before = (folder / "a.png").read_bytes()
    with pytest.raises(InputError, match="overwrite the input image"):
        run_inference(collect_inputs(str(folder)), folder, fake_predict, TYPES, SETTINGS, progress=False)
    assert (folder / "a.png").read_bytes() == before
    (folder.parent / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        run_inference(collect_inputs(str(folder)), folder.parent / "file", fake_predict, TYPES, SETTINGS,
                      progress=False)


def test_outputs_of_another_model_are_not_mixed_in(tiles, tmp_path):
    folder, _ = tiles
    out = tmp_path / "out"
    files = collect_inputs(str(folder / "a.png"))
    first = {"model": "/models/untrained.npz", "postproc": {"min_size": 10}}
    run_inference(files, out, fake_predict, TYPES, SETTINGS, run_info=first, progress=False)
    assert json.loads((out / RUN_INFO_NAME).read_text()) == first
    # the same settings resume; other ones are refused unless --overwrite
    assert run_inference(files, out, fake_predict, TYPES, SETTINGS, run_info=first,
                         progress=False).already_complete == ["a"]
    second = {"model": "/models/trained.npz", "postproc": {"min_size": 10}}
    with pytest.raises(InputError, match="model"):
        run_inference(files, out, fake_predict, TYPES, SETTINGS, run_info=second, progress=False)
    report = run_inference(files, out, fake_predict, TYPES, SETTINGS, run_info=second, overwrite=True,
                           progress=False)
    assert report.done == ["a"] and json.loads((out / RUN_INFO_NAME).read_text()) == second


def test_disk_full_stops_the_run_and_leaves_no_partial_file(tiles, tmp_path, monkeypatch):
    """Issue 13.5: ENOSPC from any writer stops the run with 'disk full writing PATH', not once per image."""
    import errno

    from misc.io import DiskFullError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # while the nuclei JSON is streamed into its file (misc.io.write_json_list_atomic)
    monkeypatch.setattr(misc.outputs, "nucleus_record", full)
    folder, _ = tiles
    out = tmp_path / "out"
    with pytest.raises(DiskFullError, match=r"disk full writing .*a\.(geo)?json"):
        run_inference(collect_inputs(str(folder)), out, fake_predict, TYPES, SETTINGS, progress=False)
    assert not list(out.glob(".*part*"))
    assert not (out / "b.mat").exists()  # stopped at the first image, not tried once per image


def test_overlay_written_by_python_so_disk_errors_carry_errno(tmp_path, monkeypatch):
    """OpenCV's imwrite only returns False on a full disk; the overlay is encoded, then written by Python."""
    import errno

    from misc.io import DiskFullError
    from misc.viz import save_overlay

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(DiskFullError, match="disk full writing"):
        save_overlay(tmp_path / "o.png", np.zeros((8, 8, 3), np.uint8), {}, TYPES)
    assert not list(tmp_path.iterdir())


def test_progress_advances_per_batch_of_windows_on_large_images(tiles, tmp_path, capsys):
    """Issue 13.17: an image of many windows shows a second bar moving per batch, not minutes of nothing."""
    folder, _ = tiles
    run_inference([folder / "a.png"], tmp_path / "out", fake_predict, TYPES,
                  replace(SETTINGS, batch_size=2), progress=True, formats=("mat",))
    err = capsys.readouterr().err
    assert "a.png windows" in err and "/9 [" in err  # 200x170 -> 3x3 windows of 80, 5 batches
    assert "1/1" in err  # the image bar


def _nuclei(out, name):
    doc = json.loads((out / f"{name}.json").read_text())
    return doc["image_shape"], sorted((n["centroid"], n["type"]) for n in doc["nuclei"])


def test_mpp_scale():
    assert mpp_scale(None, 0.25, 0.05) == 1.0
    assert mpp_scale(0.25, 0.25, 0.05) == 1.0 and mpp_scale(0.26, 0.25, 0.05) == 1.0  # within the tolerance
    assert mpp_scale(0.5, 0.25, 0.05) == 0.5 and mpp_scale(0.125, 0.25, 0.05) == 2.0
    for bad in (0.0, -0.5):
        with pytest.raises(ValueError, match="must be > 0"):
            mpp_scale(bad, 0.25, 0.05)


def test_20x_tile_with_mpp_gives_the_40x_nuclei_in_its_own_pixels(tmp_path):
    """Issue 10: a 20x tile (0.5 um/px) run with --mpp 0.5 on a 0.25-um/px model is upsampled for the network
    and its nuclei mapped back: same nuclei as the 40x tile's, at half the coordinates, outputs of its own size."""
    image40, _, _ = _disc_scene(320, 288, 3, radii=(10, 15), gap=6)
    image20 = cv2.resize(image40, (144, 160), interpolation=cv2.INTER_AREA)
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name, image in (("x40", image40), ("x20", image20)):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    run_inference([folder / "x40.png"], tmp_path / "o40", fake_predict, TYPES, SETTINGS, progress=False)
    run_inference([folder / "x20.png"], tmp_path / "o20", fake_predict, TYPES,
                  replace(SETTINGS, scale=mpp_scale(0.5, 0.25, 0.05)), progress=False)
    shape40, nuclei40 = _nuclei(tmp_path / "o40", "x40")
    shape20, nuclei20 = _nuclei(tmp_path / "o20", "x20")
    assert shape40 == [320, 288] and shape20 == [160, 144]
    assert len(nuclei20) == len(nuclei40) >= 10
    expected = sorted((((x + 0.5) / 2 - 0.5, (y + 0.5) / 2 - 0.5), t) for (x, y), t in nuclei40)
    for (got, got_type), (want, want_type) in zip(nuclei20, expected, strict=True):
        assert np.abs(np.subtract(got, want)).max() <= 1.0 and got_type == want_type
    label = load_label_mat(tmp_path / "o20" / "x20.mat", with_types=True)
    assert label["inst_map"].shape == (160, 144)
    assert sorted(np.unique(label["inst_map"]).tolist()) == list(range(len(nuclei20) + 1))  # ids 1..N
    doc = json.loads((tmp_path / "o20" / "x20.json").read_text())
    for nucleus in doc["nuclei"]:  # contours and boxes are the resized map's
        mask = label["inst_map"] == nucleus["id"]
        (r0, c0), (r1, c1) = nucleus["bbox"]
        rows, cols = np.nonzero(mask)
        assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        x, y = np.asarray(nucleus["contour"]).T
        assert mask[y, x].all()
    overlay = cv2.imread(str(tmp_path / "o20" / "x20.png"))
    assert overlay.shape == (160, 144, 3)
    with open(tmp_path / "o20" / SUMMARY_NAME) as handle:
        row = next(csv.DictReader(handle))
    assert (row["height"], row["width"], row["nuclei"]) == ("160", "144", str(len(nuclei20)))


def test_mpp_equal_to_the_models_changes_nothing(tiles, tmp_path):
    folder, _ = tiles
    files = collect_inputs(str(folder))
    run_inference(files, tmp_path / "plain", fake_predict, TYPES, SETTINGS, progress=False)
    run_inference(files, tmp_path / "same", fake_predict, TYPES,
                  replace(SETTINGS, scale=mpp_scale(0.25, 0.25, 0.05)), progress=False)
    for name in ("a", "b"):
        for suffix in (".json", ".png", ".geojson"):
            assert (tmp_path / "plain" / f"{name}{suffix}").read_bytes() == \
                (tmp_path / "same" / f"{name}{suffix}").read_bytes()
        plain, same = (load_label_mat(tmp_path / d / f"{name}.mat", with_types=True) for d in ("plain", "same"))
        for key in plain:  # the .mat header holds its creation time
            np.testing.assert_array_equal(plain[key], same[key])


def test_settings_from_config():
    cfg = config_from_args(["POSTPROC.MIN_SIZE=7", "INFER.BATCH_SIZE=4"])
    settings = TileSettings.from_config(cfg, input_mpp=0.5)
    assert (settings.input_shape, settings.output_shape, settings.batch_size, settings.scale) == (270, 80, 4, 0.5)
    assert TileSettings.from_config(cfg, batch_size=2).batch_size == 2
    assert settings.postproc == PostprocParams.from_config(cfg)
    assert settings.postproc.record() == {"np_threshold": 0.5, "marker_threshold": 0.4, "sobel_ksize": 21,
                                          "min_size": 7, "energy_blur": 3, "marker_opening": 5}


# Blocks of at most 400 px: 240-px cores and 80 px of context (the 17-px discs and the 21-px Sobel in one output).
BLOCKED = TileSettings.from_config(config_from_args(["INFER.BLOCK_SIZE=400", "WSI.MAX_NUCLEUS_PX=30"]))


class CountingPredict:
    """fake_predict that counts the windows it is asked for and its calls."""

    def __init__(self):
        self.windows = self.calls = 0

    def __call__(self, batch):
        self.windows += len(batch)
        self.calls += 1
        return fake_predict(batch)


def _write_scene(folder, name, shape, seed, attempts):
    folder.mkdir(exist_ok=True)
    image, inst, _ = _disc_scene(*shape, seed, attempts=attempts)
    cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder / f"{name}.png", inst


def _key(record):
    return round(record["centroid"][0], 6), round(record["centroid"][1], 6), record["type"]


def test_large_tile_in_blocks_gives_the_whole_tiles_nuclei(tmp_path):
    """Issue 22.3: a tile larger than INFER.BLOCK_SIZE is done in blocks, merged by centroid ownership: the same
    nuclei as the whole tile (exact maps and whole discs: no block sees a cut nucleus), none lost or doubled at the
    seams, and the same .mat, overlay and summary."""
    path, inst = _write_scene(tmp_path / "in", "big", (700, 650), seed=7, attempts=2000)
    assert BLOCKED.in_blocks((700, 650)) and not SETTINGS.in_blocks((700, 650))
    whole, blocked = CountingPredict(), CountingPredict()
    for out, predict, settings in ((tmp_path / "whole", whole, SETTINGS), (tmp_path / "blocked", blocked, BLOCKED)):
        report = run_inference([path], out, predict, TYPES, replace(settings, batch_size=32), progress=False)
        assert report.ok and report.done == ["big"]
    assert whole.windows == blocked.windows == 9 * 9  # every window once, in 3 x 3 blocks of 3 x 3 windows
    assert (whole.calls, blocked.calls) == (3, 3 * 3)
    reference = json.loads((tmp_path / "whole" / "big.json").read_text())["nuclei"]
    nuclei = json.loads((tmp_path / "blocked" / "big.json").read_text())["nuclei"]
    assert len(reference) == len(np.unique(inst)) - 1 > 600  # every disc, many on the seams of 240-px cores
    assert sorted(map(_key, nuclei)) == sorted(map(_key, reference))
    by_key = {_key(r): r for r in reference}
    for record in nuclei:
        assert record["contour"] == by_key[_key(record)]["contour"] and record["bbox"] == by_key[_key(record)]["bbox"]
    assert [r["id"] for r in nuclei] == list(range(1, len(nuclei) + 1))
    mats = [load_label_mat(tmp_path / d / "big.mat", with_types=True) for d in ("whole", "blocked")]
    pairs = np.unique(np.stack([mats[0]["inst_map"].ravel(), mats[1]["inst_map"].ravel()]), axis=1)
    assert pairs.shape[1] == len(nuclei) + 1 and len(set(pairs[1])) == pairs.shape[1]  # one id for one id
    np.testing.assert_array_equal(mats[0]["type_map"], mats[1]["type_map"])
    for record in nuclei:  # the .mat rows follow the blocked ids
        assert np.allclose(mats[1]["inst_centroid"][record["id"] - 1], record["centroid"])
    np.testing.assert_array_equal(*(cv2.imread(str(tmp_path / d / "big.png")) for d in ("whole", "blocked")))
    with open(tmp_path / "blocked" / SUMMARY_NAME, newline="") as handle:
        assert int(next(csv.DictReader(handle))["nuclei"]) == len(nuclei)
    assert sorted(p.name for p in (tmp_path / "blocked").iterdir()) == sorted(
        p.name for p in (tmp_path / "whole").iterdir())  # the scratch label file is gone


def test_tile_within_the_block_size_is_processed_whole(tiles, tmp_path):
    """A tile no larger than INFER.BLOCK_SIZE takes the usual path: the same windows and the same bytes as without
    blocks; one pixel more and it is done in blocks."""
    folder, _ = tiles
    path = folder / "a.png"  # 200 x 170
    outputs = {}
    for name, block_size in (("none", None), ("equal", 200), ("smaller", 199)):
        predict = CountingPredict()
        settings = replace(BLOCKED, block_size=block_size)
        run_inference([path], tmp_path / name, predict, TYPES, settings, progress=False)
        outputs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).glob("a.*")}
        outputs[name]["a.mat"] = outputs[name]["a.mat"][128:]  # the header holds the time
        outputs[name]["calls"] = predict.calls
    assert outputs["equal"] == outputs["none"] and outputs["none"]["calls"] == 1  # 3 x 3 windows, one batch
    assert outputs["smaller"]["calls"] == 3 * 3  # in blocks: one call per 80-px core


def rough_predict(batch, output_shape=SETTINGS.output_shape):
    """fake_predict's maps as a network might give them: the hv maps of type-1 nuclei reach only 0.35, and all
    carry a small error, so the hv extremes and those of their Sobel responses differ from block to block."""
    maps = fake_predict(batch, output_shape)
    off = (batch.shape[1] - output_shape) // 2
    centre = batch[:, off:off + output_shape, off:off + output_shape].astype(np.float32)
    reach = np.where(np.rint(centre[..., :1] / TYPE_LEVEL) == 1, 0.35, 1.0)
    maps[..., 1:3] = maps[..., 1:3] * reach + np.sin(centre[..., 1:3] / 9.0) * 0.05 * maps[..., :1]
    return maps


def test_blocks_post_process_with_the_whole_tiles_scaling(tmp_path):
    """Issue 22.3: post-processing min-max scales the hv maps and their Sobel responses. Scaled by its own
    extremes, a block of only weak (type-1) nuclei finds other markers than the whole tile: here 572 nuclei
    instead of 776. The blocks use the whole tile's ranges: the same nuclei."""
    image, _, _ = _disc_scene(700, 650, seed=9, attempts=2000)
    image[:, :230, 0] = np.where(image[:, :230, 0] > 0, TYPE_LEVEL, 0)  # type 1 only in the left blocks
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    nuclei = {}
    for name, settings in (("whole", SETTINGS), ("blocked", BLOCKED)):
        run_inference([tmp_path / "in" / "big.png"], tmp_path / name, rough_predict, TYPES,
                      replace(settings, batch_size=32), formats=("json",), progress=False)
        nuclei[name] = json.loads((tmp_path / name / "big.json").read_text())["nuclei"]
    assert len(nuclei["whole"]) > 700
    assert sorted(map(_key, nuclei["blocked"])) == sorted(map(_key, nuclei["whole"]))


def test_large_tile_memory_follows_the_block_not_the_tile(tmp_path):
    """Issue 22.3: the whole-tile path holds HxWxC float32 maps and the post-processing buffers of the whole tile
    (about 100 bytes per pixel); in blocks, memory is one block's plus a few bytes per pixel of the tile (the
    image; the label map stays in a file). Measured with tracemalloc, which sees numpy's and OpenCV's arrays."""
    import tracemalloc

    path, _ = _write_scene(tmp_path / "in", "big", (1000, 900), seed=8, attempts=2500)
    tracemalloc.start()
    try:
        report = run_inference([path], tmp_path / "out", fake_predict, TYPES, replace(BLOCKED, batch_size=8),
                               progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.done == ["big"]
    assert len(json.loads((tmp_path / "out" / "big.json").read_text())["nuclei"]) > 1000
    assert peak < 30 * 1000 * 900, f"{peak / 1e6:.1f} MB"
