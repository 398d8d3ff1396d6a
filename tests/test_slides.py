"""src/infer/slides.py, src/infer/tissue.py, src/infer/cluster.py, misc/slide_io.py: whole-slide inference on
synthetic slides.

Slides are pyramidal tiled TIFFs written here with tifffile (resolution tags give OpenSlide's mpp). Their
pixels encode the exact network maps (R: type level, G/B: HV maps, as in tests/test_tiles.py) and a
fake predictor decodes the centre of each window, so the slide path can be compared nucleus by nucleus
with the tile path on the same pixels. Dask runs in-process (threads), which is quick to start and stop.
One test runs the real network (small preset, random weights) through infer.py.
"""
import csv
import ctypes
import gzip
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import infer
from misc.io import InputError
from misc.outputs import default_type_info
from misc.proc import die_with_parent
from misc.slide_io import SlideReader, is_slide
from src.config import config_from_args
from src.geometry import derive_geometry
from src.infer.cluster import dask_client, tissue_mask_files
from src.infer.slides import WsiSettings, plan_slide, run_wsi, split_inputs, tile_margin
from src.infer.tiles import TileSettings, run_inference
from src.infer.tissue import tissue_mask
from src.maps.targets import gen_hv_map

N_TYPES = 5
TYPE_LEVEL = 50
TYPES = default_type_info(config_from_args().DATA.TYPE_NAMES)
# Small large-tiles so a 600x520 slide has a 4x4 grid; room for the 17-px test discs.
TEST_CONFIG = ["WSI.TILE_SIZE=160", "WSI.MAX_NUCLEUS_PX=30"]


def disc_scene(height, width, seed, attempts=400):
    """Image whose pixels encode non-touching typed discs (R type, G/B exact HV maps); background (0, 128, 128)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((height, width), np.int32)
    types = {}
    yy, xx = np.mgrid[-8:9, -8:9]
    for inst_id in range(1, attempts):
        r = int(rng.integers(5, 9))
        cy, cx = int(rng.integers(10, height - 10)), int(rng.integers(10, width - 10))  # off the image edge
        if inst[cy - r - 2:cy + r + 3, cx - r - 2:cx + r + 3].any():
            continue
        window = inst[cy - 8:cy + 9, cx - 8:cx + 9]
        window[yy ** 2 + xx ** 2 <= r * r] = inst_id
        types[inst_id] = int(rng.integers(1, N_TYPES))
    type_map = np.zeros_like(inst)
    for inst_id, t in types.items():
        type_map[inst == inst_id] = t
    hv = gen_hv_map(inst)
    return np.stack([type_map * TYPE_LEVEL, np.round((hv[..., 0] + 1) * 127.5),
                     np.round((hv[..., 1] + 1) * 127.5)], axis=-1).astype(np.uint8)


_GEOMETRY = derive_geometry("original")  # the geometry the slide tests configure (the config's default)


def fake_predict(batch, output_shape=_GEOMETRY.output_shape):
    """Decode the centre output_shape crop of each window into [np, hv x, hv y, tp...] maps."""
    off = (batch.shape[1] - output_shape) // 2
    centre = batch[:, off:off + output_shape, off:off + output_shape].astype(np.float32)
    type_id = np.clip(np.rint(centre[..., 0] / TYPE_LEVEL).astype(int), 0, N_TYPES - 1)
    tp = np.eye(N_TYPES, dtype=np.float32)[type_id]
    fg = (type_id > 0).astype(np.float32)
    hv = (centre[..., 1:3] / 127.5 - 1.0) * fg[..., None]
    return np.concatenate([fg[..., None], hv, tp], axis=-1)


CALLS = {}  # factory token -> windows predicted
_LOCK = threading.Lock()


@dataclass(frozen=True)
class FakeFactory:
    """Picklable predictor recipe; counts windows per token, raises after ``fail_after`` batches, takes ``delay``
    seconds a batch."""

    token: str
    fail_after: int | None = None
    delay: float = 0.0

    def __call__(self):
        batches = itertools.count()

        def predict(batch):
            if self.fail_after is not None and next(batches) >= self.fail_after:
                raise RuntimeError("simulated crash")
            time.sleep(self.delay)
            with _LOCK:
                CALLS[self.token] = CALLS.get(self.token, 0) + len(batch)
            return fake_predict(batch)
        return predict


def write_slide(path, image, mpp=0.25, levels=3, tile=128):
    """A pyramidal tiled TIFF (OpenSlide 'generic-tiff'); ``mpp`` None writes no resolution."""
    with tifffile.TiffWriter(path) as tiff:
        for level in range(levels):
            array = np.ascontiguousarray(image[::2 ** level, ::2 ** level])
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * 2 ** level)
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tiff.write(array, tile=(tile, tile), photometric="rgb", compression="zlib",
                       subfiletype=1 if level else 0, **extra)
    return path


@pytest.fixture(scope="module")
def client():
    with dask_client(1, processes=False) as c:
        yield c


@pytest.fixture(scope="module")
def scene():
    return disc_scene(600, 520, seed=3)


@pytest.fixture(scope="module")
def small_scene():
    return disc_scene(360, 330, seed=4)  # a 3x3 grid of 160-px tiles


@pytest.fixture
def settings():
    return WsiSettings.from_config(config_from_args(TEST_CONFIG), batch_size=64)


def _nuclei(path):
    return json.loads(path.read_text())["nuclei"]


def _key(record):
    return (round(record["centroid"][0], 6), round(record["centroid"][1], 6), record["type"])


def _tile_reference(tmp_path, image):
    folder = tmp_path / "tile_in"
    folder.mkdir()
    cv2.imwrite(str(folder / "s.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    run_inference([folder / "s.png"], tmp_path / "tile_out", fake_predict, TYPES,
                  TileSettings.from_config(config_from_args(TEST_CONFIG), batch_size=64), formats=("json",),
                  progress=False)
    return _nuclei(tmp_path / "tile_out" / "s.json")


def test_tile_margin_is_whole_outputs():
    assert tile_margin(270, 80, 80, 21) == 160 + 160
    assert tile_margin(256, 164, 80, 21) == 164 + 164
    cfg = config_from_args(TEST_CONFIG)
    s = WsiSettings.from_config(cfg)
    assert s.tile_size % s.tile.output_shape == 0 and s.margin % s.tile.output_shape == 0
    assert (s.tile.input_shape, s.tile.output_shape) == (cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE)
    # the tile path's settings, one object (issue 21.3): the same post-processing and batch as a tile run
    assert s.tile == replace(TileSettings.from_config(cfg), block_size=None)


def test_slide_reader_and_detection(tmp_path, scene):
    slide = write_slide(tmp_path / "s.tif", scene, mpp=0.5)
    png = tmp_path / "t.png"
    cv2.imwrite(str(png), scene)
    strip = tmp_path / "strip.tif"
    tifffile.imwrite(strip, scene, photometric="rgb")  # not tiled: a tile, not a slide
    assert is_slide(slide) and not is_slide(png) and not is_slide(strip)
    assert split_inputs([slide, png, strip], "auto") == ([slide], [png, strip])
    with SlideReader(slide) as reader:
        assert (reader.width, reader.height, reader.mpp) == (520, 600, 0.5)
        np.testing.assert_array_equal(reader.read(10, 20, 30, 40), scene[20:60, 10:40])
        outside = reader.read(500, 590, 40, 20)  # past the slide: white
        assert np.all(outside[10:, :] == 255) and np.all(outside[:, 20:] == 255)
        assert reader.read_downsampled(4).shape == (150, 130, 3)
    assert SlideReader(slide, mpp=0.3).mpp == 0.3


def test_tissue_mask_white_and_stained():
    white = np.full((40, 60, 3), 245, np.uint8)
    assert not tissue_mask(white).any()
    stained = white.copy()
    stained[10:30, 20:50] = (180, 80, 160)  # H&E pink/purple
    stained[2, 2] = (180, 80, 160)  # a speck: removed
    mask = tissue_mask(stained)
    assert mask[12:28, 22:48].all() and not mask[:, :15].any() and mask.sum() <= 20 * 30


def test_slide_result_equals_tile_result(tmp_path, scene, settings, client):
    """Same pixels, same nuclei: the large-tile grid, centroid ownership and level-0 coordinates are exact."""
    reference = _tile_reference(tmp_path, scene)
    slide = write_slide(tmp_path / "s.tif", scene)
    out = tmp_path / "wsi"
    report = run_wsi([slide], out, FakeFactory("equal"), TYPES, settings, client=client, progress=False)
    assert report.ok and report.done == ["s"] and report.tiles_run["s"] == 16
    nuclei = _nuclei(out / "s.json")
    assert len(reference) > 150
    assert sorted(map(_key, nuclei)) == sorted(map(_key, reference))
    by_key = {_key(r): r for r in reference}
    for record in nuclei:  # contours and boxes too
        assert record["contour"] == by_key[_key(record)]["contour"]
        assert record["bbox"] == by_key[_key(record)]["bbox"]
    assert [r["id"] for r in nuclei] == list(range(1, len(nuclei) + 1))
    doc = json.loads((out / "s.json").read_text())
    assert doc["image_shape"] == [600, 520] and doc["mpp"] == 0.25
    features = json.loads((out / "s.geojson").read_text())["features"]
    assert [f["properties"]["nucleus_id"] for f in features] == [r["id"] for r in nuclei]
    thumb = cv2.imread(str(out / "s.png"))
    assert thumb.shape == (600, 520, 3)
    with open(out / "summary.csv") as handle:
        row = next(csv.DictReader(handle))
    assert int(row["nuclei"]) == len(nuclei)
    assert float(row["tissue_mm2"]) == pytest.approx(600 * 520 * 0.25 ** 2 / 1e6, rel=0.05)
    assert not (out / "s.parts").exists()
    # complete slides are skipped on a re-run
    again = run_wsi([slide], out, FakeFactory("equal"), TYPES, settings, client=client, progress=False)
    assert again.already_complete == ["s"] and not again.done


def test_white_background_is_never_predicted(tmp_path, scene, settings, client):
    white = np.full((600, 520, 3), 250, np.uint8)
    half = white.copy()
    half[:, 320:] = scene[:, 320:]
    paths = [write_slide(tmp_path / "white.tif", white), write_slide(tmp_path / "half.tif", half)]
    plan = plan_slide(paths[1], settings)
    assert all(t.core[1] >= 160 for t in plan.tiles) and len(plan.tiles) < 16
    report = run_wsi(paths, tmp_path / "out", FakeFactory("white"), TYPES, settings, client=client,
                     progress=False, )
    assert report.ok and sorted(report.done) == ["half", "white"] and report.tiles_run["white"] == 0
    assert _nuclei(tmp_path / "out" / "white.json") == []
    assert len(_nuclei(tmp_path / "out" / "half.json")) > 0
    assert CALLS["white"] == sum(_windows(t.region, settings) for t in plan.tiles)


def _windows(region, settings):
    y0, x0, y1, x1 = region
    out = settings.tile.output_shape
    return -(-(y1 - y0) // out) * -(-(x1 - x0) // out)


def test_kill_and_resume(tmp_path, small_scene, settings, client):
    slide = write_slide(tmp_path / "s.tif", small_scene)
    out = tmp_path / "out"
    first = run_wsi([slide], out, FakeFactory("crash", fail_after=5), TYPES, settings, client=client,
                    progress=False)
    assert not first.ok and "simulated crash" in first.failed[str(slide.resolve())]
    parts = sorted(p.name for p in (out / "s.parts").glob("*_*.json"))
    assert 0 < len(parts) < 9 and not (out / "s.json").exists()
    (out / "s.parts" / ".2_2.abc.part.json").write_text("{half a fi")  # a write cut by the kill: ignored
    second = run_wsi([slide], out, FakeFactory("resume"), TYPES, settings, client=client, progress=False)
    assert second.ok and second.tiles_run["s"] == 9 - len(parts)
    resumed = _nuclei(out / "s.json")
    assert len({_key(r) for r in resumed}) == len(resumed)  # no duplicates
    assert sorted(map(_key, resumed)) == sorted(map(_key, _tile_reference(tmp_path, small_scene)))
    # --overwrite starts over
    third = run_wsi([slide], out, FakeFactory("over"), TYPES, settings, client=client, overwrite=True,
                    progress=False)
    assert third.ok and third.tiles_run["s"] == 9


def test_one_and_two_workers_agree(tmp_path, small_scene, settings, client):
    slide = write_slide(tmp_path / "s.tif", small_scene)
    run_wsi([slide], tmp_path / "one", FakeFactory("one"), TYPES, settings, client=client, progress=False)
    with dask_client(2, processes=False) as two:
        assert len(two.scheduler_info()["workers"]) == 2
        run_wsi([slide], tmp_path / "two", FakeFactory("two"), TYPES, settings, client=two, progress=False)
    assert (tmp_path / "one" / "s.json").read_text() == (tmp_path / "two" / "s.json").read_text()


def test_missing_mpp_refused_corrupt_skipped(tmp_path, small_scene, settings, client):
    no_mpp = write_slide(tmp_path / "nompp.tif", small_scene, mpp=None)
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    good = write_slide(tmp_path / "good.tif", small_scene[:200, :200])
    report = run_wsi([no_mpp, corrupt, good], tmp_path / "out", FakeFactory("bad"), TYPES, settings,
                     client=client, progress=False)
    assert report.done == ["good"]
    assert "no microns per pixel" in report.failed[str(no_mpp)] and "--mpp" in report.failed[str(no_mpp)]
    assert str(corrupt) in report.failed[str(corrupt)]
    # --mpp makes the first usable; a gzipped GeoJSON on request
    gz = WsiSettings.from_config(config_from_args(TEST_CONFIG), batch_size=64, gzip_geojson=True)
    report = run_wsi([no_mpp], tmp_path / "out", FakeFactory("bad"), TYPES, gz, client=client, mpp=0.25,
                     progress=False)
    assert report.done == ["nompp"]
    with gzip.open(tmp_path / "out" / "nompp.geojson.gz", "rt") as handle:
        assert len(json.load(handle)["features"]) == len(_nuclei(tmp_path / "out" / "nompp.json")) > 0


def test_resampled_slide_in_level0_coordinates(tmp_path, client):
    """A 20x slide (0.5 um/px) runs upsampled for the 40x model; nuclei come back in the slide's own pixels."""
    image = disc_scene(200, 180, seed=5)
    reference = _tile_reference(tmp_path, image)
    # Model at 0.25 um/px: the slide is read at 2x. Discs upsampled twice stay decodable by the fake.
    settings = WsiSettings.from_config(config_from_args(TEST_CONFIG + ["WSI.MAX_NUCLEUS_PX=40"]), batch_size=64)
    slide = write_slide(tmp_path / "s.tif", image, mpp=0.5)
    plan = plan_slide(slide, settings)
    assert plan.scale == 0.5 and (plan.work_width, plan.work_height) == (360, 400)
    run_wsi([slide], tmp_path / "out", FakeFactory("mpp"), TYPES, settings, client=client, progress=False)
    nuclei = _nuclei(tmp_path / "out" / "s.json")
    assert abs(len(nuclei) - len(reference)) <= 1
    ref = np.array([r["centroid"] for r in reference])
    for record in nuclei:
        assert np.min(np.hypot(*(ref - record["centroid"]).T)) < 1.0


def test_tissue_mask_files(tmp_path):
    a, b = tmp_path / "a.svs", tmp_path / "b.svs"
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"x")
    assert tissue_mask_files(str(masks), [a, b]) == {"a": masks / "a.png"}
    assert tissue_mask_files(str(masks / "a.png"), [a]) == {"a": masks / "a.png"}
    with pytest.raises(InputError, match="one slide"):
        tissue_mask_files(str(masks / "a.png"), [a, b])


def test_user_tissue_mask_limits_tiles(tmp_path, scene, settings):
    slide = write_slide(tmp_path / "s.tif", scene)
    mask = np.zeros((60, 52), np.uint8)
    mask[:15, :13] = 255  # the top-left quarter (one 160-px tile at 600x520 -> rows/cols 0..1)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    plan = plan_slide(slide, settings, mask_path=tmp_path / "mask.png")
    assert {t.key for t in plan.tiles} <= {"0_0", "0_1", "1_0", "1_1"} and plan.tiles


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")
def test_die_with_parent_sets_the_signal():
    pid = os.fork()
    if pid == 0:  # child: request the signal, read it back (PR_GET_PDEATHSIG = 2), report by exit status
        ok = die_with_parent(os.getppid(), signal.SIGKILL)
        value = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)
        os._exit(0 if ok and value.value == signal.SIGKILL else 1)
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.slow
def test_infer_cli_slide_with_the_real_network(tmp_path, scene, micro_weights_npz, monkeypatch, capfd):
    """infer.py --mode auto on a slide: one embedded worker process builds the network of the session's
    stand-in weights (conftest.py: the MICRO network, 270 -> 216) and runs one tile of 2 x 2 windows. The worker
    logs as infer.py does (issue 22.11): its console shows no layer shapes nor restored variables (it printed
    93 shapes and an 11.8 KB line), infer.log gets them."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_slide(folder / "slide.tif", scene[:400, :400])
    out = tmp_path / "out"
    argv = ["--input", str(folder), "--output", str(out), "--model", str(micro_weights_npz), "--quiet",
            "--batch_size", "4", "--config", "WSI.TILE_SIZE=432"]
    assert infer.main(argv) == 0
    console = capfd.readouterr()
    shown = console.out + console.err
    assert "'conv0': [?" not in shown and "Variables to restore" not in shown
    log = (out / "infer.log").read_text()
    assert "'conv0': [?" in log and "Variables to restore" in log  # the worker's, in the file only
    for name in ("slide.json", "slide.geojson", "slide.png", "summary.csv", "run_info.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "slide.json").read_text())
    assert doc["image_shape"] == [400, 400]
    with open(out / "summary.csv") as handle:
        rows = {r["image"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"slide"} and float(rows["slide"]["tissue_mm2"]) > 0
    import src.infer.cluster

    monkeypatch.setattr(src.infer.cluster, "dask_client", None)  # a rerun with nothing to do starts no cluster
    assert infer.main(argv) == 0  # resume: everything complete
    assert "0 slide(s) written, 1 already complete" in capfd.readouterr().out


def test_slide_reader_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        SlideReader(tmp_path / "missing.svs")
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    with pytest.raises(InputError, match="bad.svs"):
        SlideReader(bad)


def _enospc_on(monkeypatch, method: str, when) -> None:
    """Make ``Path.<method>`` fail with ENOSPC (a full disk) for the temporaries that ``when(path)`` picks."""
    import errno
    import pathlib

    original = getattr(pathlib.Path, method)

    def full(self, *args, **kwargs):
        if when(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, method, full)


def test_disk_full_while_assembling_leaves_no_slide_output_and_the_rerun_finishes(tmp_path, small_scene, settings,
                                                                                  client, monkeypatch):
    """Issue 22.4: the overlay cannot be written: the run stops with 'disk full writing PATH' (raised, not a skipped
    slide), the slide's JSON and GeoJSON already written are gone too, its tiles' parts stay for the rerun."""
    from misc.io import DiskFullError

    slide = write_slide(tmp_path / "s.tif", small_scene)
    out = tmp_path / "out"
    _enospc_on(monkeypatch, "write_bytes", lambda path: path.suffix == ".png")
    with pytest.raises(DiskFullError, match=r"disk full writing .*s\.png"):
        run_wsi([slide], out, FakeFactory("full"), TYPES, settings, client=client, progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("s.parts")) == []
    assert len(list((out / "s.parts").glob("*_*.json"))) == 9
    monkeypatch.undo()
    report = run_wsi([slide], out, FakeFactory("after"), TYPES, settings, client=client, progress=False)
    assert report.ok and report.tiles_run["s"] == 0  # every tile was kept: only the assembly is redone
    assert {p.name for p in out.iterdir()} >= {"s.json", "s.geojson", "s.png", "summary.csv"}
    assert sorted(map(_key, _nuclei(out / "s.json"))) == sorted(map(_key, _tile_reference(tmp_path, small_scene)))


def test_disk_full_in_a_tile_stops_the_run(tmp_path, small_scene, settings, client, monkeypatch):
    """Issue 22.4: a tile task that cannot write its part stops the run with DiskFullError (the worker's error, not
    a 'tile failed' skip of the slide); the tiles finished before are kept and the rerun runs only the others."""
    from misc.io import DiskFullError

    slide = write_slide(tmp_path / "s.tif", small_scene)
    out = tmp_path / "out"
    written = []

    def fourth_part(path):
        if re.match(r"\.\d+_\d+\..*\.part", path.name):  # a tile's part (plan.json is written first)
            written.append(path)
            return len(written) > 3
        return False

    _enospc_on(monkeypatch, "write_text", fourth_part)
    with pytest.raises(DiskFullError, match="disk full writing"):
        run_wsi([slide], out, FakeFactory("tile_full"), TYPES, settings, client=client, progress=False)
    kept = len(list((out / "s.parts").glob("*_*.json")))
    assert 3 <= kept < 9 and not (out / "s.json").exists()
    assert not [p for p in (out / "s.parts").iterdir() if ".part" in p.name]
    monkeypatch.undo()
    report = run_wsi([slide], out, FakeFactory("tile_after"), TYPES, settings, client=client, progress=False)
    assert report.ok and report.tiles_run["s"] == 9 - kept


def test_infer_cli_disk_full_on_a_slide_is_one_line_exit_2(tmp_path, small_scene, micro_weights_npz, monkeypatch,
                                                           capfd):
    """Issue 22.4 at the command line: one line 'disk full writing PATH', exit 2, no traceback."""
    slide = write_slide(tmp_path / "s.tif", small_scene)
    # the overlay is written by infer.py's own process (the assembly), not by its worker
    _enospc_on(monkeypatch, "write_bytes", lambda path: path.suffix == ".png")
    code = infer.main(["--input", str(slide), "--output", str(tmp_path / "out"), "--model", str(micro_weights_npz),
                       "--mode", "wsi", "--quiet", "--batch_size", "4", "--config", "WSI.TILE_SIZE=432"])
    err = capfd.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if "disk full" in line] == [
        f"infer.py: error: disk full writing {tmp_path / 'out' / 's.png'}"]
    assert "Traceback" not in err


# infer.py in a process of its own (its console is the subject), whose embedded workers get a FakeFactory instead of
# the network (`import test_slides` in the workers: tests/ is on the path they inherit)
_INFER_WITH = """
import sys
import infer, src.infer.cluster
from test_slides import FakeFactory
src.infer.cluster.ModelFactory = lambda *recipe: {factory!r}
sys.exit(infer.main(sys.argv[1:]))
"""


def _infer_process(folder, out, factory: FakeFactory, *options: str) -> subprocess.Popen:
    tests = Path(__file__).parent
    path = os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")])
    argv = ["--input", str(folder), "--output", str(out), "--model", str(folder.parent / "m.npz"), "--mode", "wsi",
            "--quiet", "--config", *TEST_CONFIG, *options]
    np.savez(folder.parent / "m.npz", w=np.zeros(3, np.float32))  # --model must exist; the fake never reads it
    return subprocess.Popen([sys.executable, "-c", _INFER_WITH.format(factory=factory), *argv], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})


def _console(err: str) -> list[str]:
    """The lines of ``err`` without TensorFlow's C++ start-up lines, which TensorFlow 2.21 prints when it loads
    whatever TF_CPP_MIN_LOG_LEVEL says (not these tests' subject)."""
    tensorflow = re.compile(r"WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d|To enable the following")
    return [line for line in err.splitlines() if line.strip() and not tensorflow.match(line)]


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (infer.py's, set once its modules are imported)."""
    caught = re.search(r"^SigCgt:\s*([0-9a-f]+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes in /proc")
@pytest.mark.parametrize("moment", ["loading", "tiles"])
def test_sigterm_stops_a_slide_run_in_one_line(tmp_path, scene, moment):
    """Issue 22.5: SIGTERM (timeout, kill, a batch scheduler) while infer.py loads (TensorFlow, seconds: a traceback)
    or while two embedded workers run tiles: one line, exit status 143, no temporary file, no Dask traceback nor
    leaked-semaphore warning, no worker process left."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_slide(folder / "s.tif", scene)
    out = tmp_path / "out"
    run = _infer_process(folder, out, FakeFactory("sigterm", delay=0.5), "--workers", "2")
    try:
        deadline = time.time() + 240
        while not (_handles_sigterm(run.pid) if moment == "loading" else list((out / "s.parts").glob("*_*.json"))):
            assert run.poll() is None and time.time() < deadline, run.communicate()
            time.sleep(0.01)
        children = _children(run.pid)  # the workers and multiprocessing's resource tracker, once they run
        run.send_signal(signal.SIGTERM)
        err = run.communicate(timeout=120)[1]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, err
    lines = _console(err)
    kept = ", the slides' finished tiles kept" if moment == "tiles" else ""
    assert lines[-1] == f"infer.py: terminated; 0 image(s) done{kept}, rerun the same command to resume", err
    assert all(line.startswith("INFO src.infer.slides: s: ") for line in lines[:-1]), err  # the slide's plan
    assert "Traceback" not in err and "leaked" not in err
    assert not [p for p in out.rglob("*") if re.search(r"\.part(\.|$)", p.name)]  # atomic_path's temporaries
    assert len(children) >= (2 if moment == "tiles" else 0)
    deadline = time.time() + 10
    while [pid for pid in children if _running(pid)] and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _running(pid)]


def test_a_skipped_slide_is_one_line_on_the_console_and_logged_in_full(tmp_path, small_scene):
    """Issue 22.11: a bad slide was printed twice (run_wsi's ERROR line, then infer.py's), a failed tile also as the
    worker's 'Compute Failed' and traceback; now one line each, naming the path once, and the details in infer.log."""
    folder = tmp_path / "in"
    folder.mkdir()
    corrupt = folder / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    crashing = write_slide(folder / "s.tif", small_scene)
    out = tmp_path / "out"
    run = _infer_process(folder, out, FakeFactory("crash", fail_after=0), "--workers", "1")
    err = run.communicate(timeout=300)[1]
    assert run.returncode == 1, err
    lines = [line for line in _console(err) if not line.startswith("INFO src.infer.slides: s: ")]
    assert len(lines) == 2 and lines[0].startswith(f"infer.py: skipped {corrupt}: not a slide OpenSlide can open")
    assert lines[1] == f"infer.py: skipped {crashing.resolve()}: RuntimeError: simulated crash"
    assert err.count(str(corrupt)) == 1 and err.count("simulated crash") == 1
    log = (out / "infer.log").read_text()
    assert f"ERROR src.infer.slides: skipped: {corrupt}" in log and "ERROR src.infer.slides: s: a tile failed" in log
    assert "Compute Failed" in log  # the worker's own message, with its traceback, in the file only


def test_an_embedded_cluster_takes_no_fixed_port(recwarn):
    """Beside another Dask cluster (another run, a test process) the scheduler's HTTP server printed 'Port 8787 is
    already in use. Perhaps you already have a cluster running?' on the console of a slide run."""
    import contextlib
    import socket

    with socket.socket() as other:
        with contextlib.suppress(OSError):  # taken already: the same case
            other.bind(("", 8787))
            other.listen()
        with dask_client(1, processes=False):
            pass
    assert not [w for w in recwarn if "already in use" in str(w.message)]
