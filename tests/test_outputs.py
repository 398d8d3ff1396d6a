"""Per-image outputs (.mat, JSON, GeoJSON, overlay PNG) on a hand-built map of three nuclei."""
from __future__ import annotations

import json
import numbers

import cv2
import numpy as np
import pytest
import scipy.io

import misc.outputs
from misc.io import InputError, load_label_mat, read_image_rgb, save_label_mat
from misc.outputs import (
    FORMATS,
    default_type_info,
    geojson_ring,
    load_type_info,
    outputs_complete,
    save_geojson,
    save_mat,
    save_nuclei_json,
    write_outputs,
)
from misc.viz import (
    UNTYPED_COLOUR,
    UNTYPED_NAME,
    instance_contour,
    instance_contours,
    type_entry,
    type_name,
    visualize_instances,
)
from src.config import make_config

H, W = 64, 80
TYPES = default_type_info(make_config().DATA.TYPE_NAMES)  # CoNSeP's four types
# id -> (centre x, centre y, radius, type); id 3 sits near the corner to exercise clipping
DISCS = {1: (15, 20, 8, 2), 2: (50, 30, 10, 3), 3: (70, 55, 6, 4)}
BACKGROUND = 200  # grey: no type colour, so drawn contours stand out


def make_inst_map(discs=DISCS, shape=(H, W)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    inst_map = np.zeros(shape, np.int32)
    for inst_id, (cx, cy, r, _) in discs.items():
        inst_map[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = inst_id
    return inst_map


def make_inst_info(inst_map, types, probs=None):
    """What post-processing reports (spec section 5), computed independently of src/maps/postproc.py."""
    info = {}
    for inst_id in np.unique(inst_map[inst_map > 0]).tolist():
        rows, cols = np.nonzero(inst_map == inst_id)
        mask = (inst_map == inst_id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        info[inst_id] = {
            "bbox": [[int(rows.min()), int(cols.min())], [int(rows.max()) + 1, int(cols.max()) + 1]],
            "centroid": [float(cols.mean()), float(rows.mean())],
            "contour": max(contours, key=len).reshape(-1, 2).astype(np.int32),
            "type": types.get(inst_id),
            "type_prob": None if probs is None else probs.get(inst_id),
        }
    return info


def make_image(shape=(H, W)):
    return np.full(shape + (3,), BACKGROUND, np.uint8)


def validate_geojson(obj):
    """RFC 7946 structure of a FeatureCollection of Polygon Features; raises AssertionError if broken."""
    assert isinstance(obj, dict) and obj.get("type") == "FeatureCollection"
    assert isinstance(obj.get("features"), list)
    for feature in obj["features"]:
        assert isinstance(feature, dict) and feature.get("type") == "Feature"  # section 3.2
        assert "properties" in feature and (feature["properties"] is None or isinstance(feature["properties"], dict))
        if "id" in feature:
            assert isinstance(feature["id"], str | int | float)
        geometry = feature.get("geometry")
        assert isinstance(geometry, dict) and geometry.get("type") == "Polygon"  # section 3.1.6
        rings = geometry.get("coordinates")
        assert isinstance(rings, list) and rings
        for ring in rings:
            assert isinstance(ring, list) and len(ring) >= 4, "a linear ring needs >= 4 positions"
            for position in ring:
                assert isinstance(position, list) and len(position) >= 2
                assert all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in position)
            assert ring[0] == ring[-1], "a linear ring must be closed"
            assert len({tuple(p) for p in ring}) >= 3, "a linear ring must enclose an area"


@pytest.fixture
def scene():
    inst_map = make_inst_map()
    types = {i: d[3] for i, d in DISCS.items()}
    info = make_inst_info(inst_map, types, probs={1: 0.9, 2: np.float32(0.75), 3: 1.0})
    return make_image(), inst_map, info, TYPES


def test_default_type_info_has_consep_types():
    type_info = TYPES
    assert [type_info[i][0] for i in range(5)] == ["background", "miscellaneous", "inflammatory", "epithelial",
                                                   "spindle"]
    assert type_info[2][1] == (255, 0, 0) and type_info[3][1] == (0, 255, 0) and type_info[4][1] == (0, 0, 255)
    assert len({colour for _, colour in type_info.values()}) == 5


def test_all_outputs_agree(tmp_path, scene):
    image, inst_map, info, type_info = scene
    paths = write_outputs(tmp_path, "tile", image, inst_map, info, type_info)
    assert set(paths) == set(FORMATS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tile.geojson", "tile.json", "tile.mat", "tile.png"]

    raw = scipy.io.loadmat(str(paths["mat"]))
    assert raw["inst_map"].shape == (H, W) and raw["inst_map"].dtype == np.int32
    assert raw["type_map"].shape == (H, W) and raw["type_map"].dtype == np.int32
    assert raw["inst_type"].shape == (3, 1) and raw["inst_type"].dtype == np.int32
    assert raw["inst_centroid"].shape == (3, 2) and raw["inst_centroid"].dtype == np.float64
    np.testing.assert_array_equal(raw["inst_map"], inst_map)
    np.testing.assert_array_equal(raw["inst_type"][:, 0], [2, 3, 4])
    for inst_id, (cx, cy, _, t) in DISCS.items():
        np.testing.assert_allclose(raw["inst_centroid"][inst_id - 1], [cx, cy], atol=0.5)  # x before y
        assert np.all(raw["type_map"][inst_map == inst_id] == t)
    assert np.all(raw["type_map"][inst_map == 0] == 0)
    loaded = load_label_mat(paths["mat"], with_types=True)  # the reader metrics use
    np.testing.assert_array_equal(loaded["inst_type"], [2, 3, 4])

    doc = json.loads(paths["json"].read_text())
    assert doc["image_shape"] == [H, W]
    assert doc["type_info"]["2"] == ["inflammatory", [255, 0, 0]]
    nuclei = doc["nuclei"]
    assert [n["id"] for n in nuclei] == [1, 2, 3]
    assert [n["type"] for n in nuclei] == [2, 3, 4]
    assert [n["type_name"] for n in nuclei] == ["inflammatory", "epithelial", "spindle"]
    assert [n["type_prob"] for n in nuclei] == [0.9, 0.75, 1.0]
    for record in nuclei:
        np.testing.assert_allclose(record["centroid"], raw["inst_centroid"][record["id"] - 1])
        assert record["bbox"] == info[record["id"]]["bbox"]
        assert record["contour"] == info[record["id"]]["contour"].tolist()

    geo = json.loads(paths["geojson"].read_text())
    validate_geojson(geo)
    features = geo["features"]
    assert [f["properties"]["nucleus_id"] for f in features] == [1, 2, 3]
    assert [f["properties"]["measurements"]["nucleus_id"] for f in features] == [1, 2, 3]
    for feature, (cx, cy, r, t) in zip(features, DISCS.values(), strict=True):
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": type_info[t][0], "color": list(type_info[t][1])}
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert np.allclose(ring[:-1].mean(axis=0), [cx, cy], atol=1.0)  # [x, y] order
        assert np.abs(ring[:-1] - [cx, cy]).max() <= r
    assert [f["properties"]["measurements"]["type_prob"] for f in features] == [0.9, 0.75, 1.0]

    overlay = read_image_rgb(paths["png"])
    assert overlay.shape == image.shape
    for inst_id, (_, _, _, t) in DISCS.items():
        x, y = info[inst_id]["contour"].T
        assert np.all(overlay[y, x] == type_info[t][1]), f"contour of nucleus {inst_id} not in its type colour"
    assert np.all(overlay[0, 40] == BACKGROUND)  # far from every contour


def test_untyped_nuclei_and_missing_probabilities(tmp_path):
    inst_map = make_inst_map()
    info = make_inst_info(inst_map, types={})
    paths = write_outputs(tmp_path, "untyped", make_image(), inst_map, info, TYPES)
    raw = scipy.io.loadmat(str(paths["mat"]))
    np.testing.assert_array_equal(raw["inst_type"][:, 0], [0, 0, 0])
    assert not raw["type_map"].any()
    nuclei = json.loads(paths["json"].read_text())["nuclei"]
    assert all(n["type"] is None and n["type_prob"] is None and n["type_name"] == "unclassified" for n in nuclei)
    geo = json.loads(paths["geojson"].read_text())
    validate_geojson(geo)
    assert all("classification" not in f["properties"] for f in geo["features"])
    assert all("type_prob" not in f["properties"]["measurements"] for f in geo["features"])
    overlay = read_image_rgb(paths["png"])
    x, y = info[2]["contour"].T
    assert np.all(overlay[y, x] == UNTYPED_COLOUR)


def test_empty_prediction(tmp_path):
    inst_map = np.zeros((20, 30), np.int32)
    paths = write_outputs(tmp_path, "empty", make_image((20, 30)), inst_map, {}, TYPES)
    raw = load_label_mat(paths["mat"], with_types=True)
    assert raw["inst_type"].shape == (0,) and raw["inst_centroid"].shape == (0, 2)
    assert json.loads(paths["json"].read_text())["nuclei"] == []
    geo = json.loads(paths["geojson"].read_text())
    validate_geojson(geo)
    assert geo["features"] == []
    assert outputs_complete(tmp_path, "empty")


@pytest.mark.parametrize("pixels", [[(5, 7)], [(5, 7), (5, 8)], [(5, 7), (5, 8), (5, 9)], [(5, 7), (6, 8)]])
def test_tiny_nuclei_give_valid_polygons(tmp_path, pixels):
    inst_map = np.zeros((12, 12), np.int32)
    for row, col in pixels:
        inst_map[row, col] = 1
    info = make_inst_info(inst_map, {1: 2})
    save_geojson(tmp_path / "tiny.geojson", info, TYPES)
    geo = json.loads((tmp_path / "tiny.geojson").read_text())
    validate_geojson(geo)
    ring = np.array(geo["features"][0]["geometry"]["coordinates"][0])
    rows, cols = np.array(pixels).T
    # the pixel-edge box around the nucleus's pixels
    assert ring[:, 0].min() == cols.min() and ring[:, 0].max() == cols.max() + 1
    assert ring[:, 1].min() == rows.min() and ring[:, 1].max() == rows.max() + 1


def test_geojson_ring_winding_and_closure():
    clockwise_in_xy = [[0, 0], [0, 4], [4, 4], [4, 0]]
    ring = geojson_ring(clockwise_in_xy)
    assert ring[0] == ring[-1] and len(ring) == 5
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True)) / 2
    assert area == 16  # counterclockwise in the (x, y) frame
    assert geojson_ring(ring) == ring  # an already closed ring is not closed twice
    assert geojson_ring(np.zeros((0, 2)), bbox=[[2, 3], [5, 7]]) == [[3, 2], [7, 2], [7, 5], [3, 5], [3, 2]]


def test_interrupted_writes_leave_no_file(tmp_path, scene, monkeypatch):
    image, inst_map, info, type_info = scene

    def interrupted(*args, **kwargs):  # a nucleus of the streamed file: its head is written, the rest is not
        raise KeyboardInterrupt

    monkeypatch.setattr(misc.outputs, "nucleus_record", interrupted)
    monkeypatch.setattr(misc.outputs, "geojson_feature", interrupted)
    for writer, path in ((lambda p: save_geojson(p, info, type_info), tmp_path / "a.geojson"),
                         (lambda p: save_nuclei_json(p, info, type_info), tmp_path / "a.json")):
        with pytest.raises(KeyboardInterrupt):
            writer(path)
        assert not path.exists()
    monkeypatch.undo()

    def half_written_mat(handle, data, **kwargs):
        handle.write(b"MATLAB 5.0")
        raise RuntimeError("disk full")

    monkeypatch.setattr(scipy.io, "savemat", half_written_mat)
    with pytest.raises(RuntimeError):
        save_mat(tmp_path / "a.mat", inst_map, info)
    assert not (tmp_path / "a.mat").exists()
    monkeypatch.undo()

    monkeypatch.setattr(cv2, "imencode", lambda ext, img: (False, None))  # the overlay is encoded, then written
    with pytest.raises(ValueError):
        write_outputs(tmp_path, "b", image, inst_map, info, type_info, formats=("png",))
    assert not (tmp_path / "b.png").exists()
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary files left behind either


def test_an_image_whose_last_output_fails_leaves_none(tmp_path, scene, monkeypatch):
    """Issue 22.4: a full disk at the overlay (the last file written) removes the image's .mat, .json and .geojson
    already written: none of an unfinished image stays under a final name, and the rerun redoes it."""
    import errno
    import pathlib

    from misc.io import DiskFullError

    image, inst_map, info, type_info = scene

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(DiskFullError, match=r"disk full writing .*c\.png"):
        write_outputs(tmp_path, "c", image, inst_map, info, type_info)
    assert [p.name for p in tmp_path.iterdir()] == []
    monkeypatch.undo()
    write_outputs(tmp_path, "c", image, inst_map, info, type_info)
    assert outputs_complete(tmp_path, "c")


def test_outputs_complete(tmp_path, scene):
    image, inst_map, info, type_info = scene
    assert not outputs_complete(tmp_path, "tile")
    write_outputs(tmp_path, "tile", image, inst_map, info, type_info, formats=("mat", "json"))
    assert outputs_complete(tmp_path, "tile", ("mat", "json"))
    assert not outputs_complete(tmp_path, "tile")
    write_outputs(tmp_path, "tile", image, inst_map, info, type_info)
    assert outputs_complete(tmp_path, "tile")
    with pytest.raises(ValueError, match="formats"):
        outputs_complete(tmp_path, "tile", ("tiff",))
    with pytest.raises(ValueError, match="stem"):
        outputs_complete(tmp_path, "sub/tile")


def test_inconsistent_inputs_raise(tmp_path, scene):
    image, inst_map, info, type_info = scene
    with pytest.raises(ValueError, match="ids"):
        save_mat(tmp_path / "x.mat", inst_map, {k: v for k, v in info.items() if k != 2})
    with pytest.raises(ValueError, match="type 4"):
        save_geojson(tmp_path / "x.geojson", info, {k: v for k, v in type_info.items() if k != 4})
    with pytest.raises(ValueError, match="shape"):
        write_outputs(tmp_path, "x", image[:10], inst_map, info, type_info)
    assert not any(tmp_path.iterdir())


def test_load_type_info(tmp_path):
    good = tmp_path / "type_info.json"
    good.write_text(json.dumps({"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 0, 0]]}))
    assert load_type_info(good) == {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0))}
    bad = {
        "missing": None,
        "notjson": "{",
        "list": "[1, 2]",
        "empty": "{}",
        "badkey": json.dumps({"one": ["a", [0, 0, 0]]}),
        "negkey": json.dumps({"-1": ["a", [0, 0, 0]]}),
        "shortcolour": json.dumps({"1": ["a", [0, 0]]}),
        "range": json.dumps({"1": ["a", [0, 0, 256]]}),
        "floatcolour": json.dumps({"1": ["a", [0, 0.5, 0]]}),
        "noname": json.dumps({"1": [[0, 0, 0]]}),
    }
    for stem, text in bad.items():
        path = tmp_path / f"{stem}.json"
        if text is not None:
            path.write_text(text)
        with pytest.raises(InputError, match=stem):
            load_type_info(path)


def test_visualize_instances_from_map_and_info(scene):
    image, inst_map, info, type_info = scene
    from_map = visualize_instances(image, inst_map, line_thickness=1)
    assert from_map.shape == image.shape and from_map.dtype == np.uint8
    assert np.all(image == BACKGROUND)  # the input is not drawn on
    contours = instance_contours(inst_map)
    assert sorted(contours) == [1, 2, 3]
    np.testing.assert_array_equal(contours[1], instance_contour((inst_map == 1).astype(np.uint8)))
    colours = {tuple(from_map[y, x]) for x, y in (contours[i][0] for i in contours)}
    assert len(colours) == 3 and (BACKGROUND,) * 3 not in colours  # one distinct colour per instance
    from_info = visualize_instances(image, info, type_info, line_thickness=1)
    x, y = info[3]["contour"].T
    assert np.all(from_info[y, x] == type_info[4][1])


@pytest.mark.parametrize("band_rows", [1, 5, 64, 1000])
def test_overlay_in_bands_has_the_whole_overlays_pixels(tmp_path, band_rows):
    """Issue 22.3: a large tile's overlay is drawn and written a band of rows at a time; OpenCV draws a contour cut
    at a band's edge otherwise than the whole one, so bands are drawn with room for the tallest contour."""
    rng = np.random.default_rng(band_rows)
    inst_map = np.zeros((300, 257), np.int32)
    for inst_id in range(1, 150):  # ellipses of every size and angle, overlapping, some cut by the image edge
        x, y, a, b, angle = (int(v) for v in rng.integers([0, 0, 1, 1, 0], [257, 300, 25, 25, 180]))
        cv2.ellipse(inst_map, (x, y), (a, b), angle, 0, 360, inst_id, -1)
    info = make_inst_info(inst_map, {i: i % 5 for i in range(150)})
    image = rng.integers(0, 256, (300, 257, 3), dtype=np.uint8)
    paths = write_outputs(tmp_path, "banded", image, inst_map, info, TYPES, formats=("png",), overlay_rows=band_rows)
    np.testing.assert_array_equal(read_image_rgb(paths["png"]), visualize_instances(image, info, TYPES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["banded.png"]


def _truth_and_prediction(tmp_path):
    true_dir, pred_dir = tmp_path / "true", tmp_path / "pred"
    true_dir.mkdir()
    for name, shift in (("img_a", 0), ("img_b", 5)):
        discs = {i: (cx + shift, cy, r, t) for i, (cx, cy, r, t) in DISCS.items()}
        inst_map = make_inst_map(discs)
        types = {i: d[3] for i, d in discs.items()}
        info = make_inst_info(inst_map, types)
        ids = sorted(info)
        save_label_mat(true_dir / f"{name}.mat", inst_map,
                       type_map=np.select([inst_map == i for i in ids], [types[i] for i in ids], 0),
                       inst_type=np.array([types[i] for i in ids]),
                       inst_centroid=np.array([info[i]["centroid"] for i in ids]))
        write_outputs(pred_dir, name, make_image(), inst_map, info, TYPES, formats=("mat",))
    return true_dir, pred_dir


def test_round_trip_through_compute_stats(tmp_path):
    compute_stats = pytest.importorskip("metrics.compute_stats")
    true_dir, pred_dir = _truth_and_prediction(tmp_path)

    report = tmp_path / "instance.json"
    assert compute_stats.main(["--mode", "instance", "--true_dir", str(true_dir), "--pred_dir", str(pred_dir),
                               "--json", str(report)]) == 0
    stats = json.loads(report.read_text())
    assert sorted(stats["per_image"]) == ["img_a", "img_b"]
    for values in [*stats["per_image"].values(), stats["mean"]]:
        assert values["pq"] == pytest.approx(1.0)
        assert values["dice"] == pytest.approx(1.0) and values["aji"] == pytest.approx(1.0)

    report = tmp_path / "type.json"
    assert compute_stats.main(["--mode", "type", "--true_dir", str(true_dir), "--pred_dir", str(pred_dir),
                               "--json", str(report)]) == 0
    stats = json.loads(report.read_text())
    assert stats["f1_d"] == pytest.approx(1.0)
    assert stats["acc"] == pytest.approx(1.0)


def test_training_curves_plot_from_stats_records(tmp_path):
    from misc.viz import plot_training_curves

    records = [{"epoch_num": e, "global_step": 10 * e, "loss_np_ce": 1.0 / e, "loss_hv_mse": 0.5 / e,
                "overall_cost": 2.0 / e, **({"validation_np_dice": 0.5 + 0.1 * e} if e > 1 else {})}
               for e in range(1, 4)]
    path = tmp_path / "curves.png"
    plot_training_curves(records, path)
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (360, 990, 3)  # 11 x 4 inches at 90 dpi
    assert not list(tmp_path.glob(".*"))  # written atomically, no temporary file left


def _shapes():
    """Masks whose OpenCV contours double back or touch themselves (issue 13.14)."""
    edge_strip = np.zeros((20, 60), np.uint8)  # a nucleus at the image edge with a 1-pixel strip along it
    edge_strip[0:8, 30:40] = 1
    edge_strip[0, 40:55] = 1
    bridge = np.zeros((20, 20), np.uint8)  # two squares joined by one diagonal step: a figure-8 contour
    bridge[2:8, 2:8] = 1
    bridge[8:14, 8:14] = 1
    hairs = np.zeros((30, 30), np.uint8)  # 1-pixel spurs in several directions, one ending at a corner
    hairs[10:20, 10:20] = 1
    hairs[15, 0:10] = 1
    hairs[0:10, 15] = 1
    hairs[20:30, 12] = 1
    diagonal = np.eye(12, dtype=np.uint8)  # a 1-pixel-wide diagonal line
    diagonal[5:8, 5:8] = 1
    rng = np.random.default_rng(0)
    blobs = [(cv2.GaussianBlur(rng.random((40, 40)), (0, 0), 2) > 0.52).astype(np.uint8) for _ in range(6)]
    return [edge_strip, bridge, hairs, diagonal, *blobs]


@pytest.mark.parametrize("index", range(10))
def test_geojson_polygons_are_valid_simple_features(index):
    """OGC validity (shapely): closed, no self-intersection or self-touching, counter-clockwise outer ring."""
    from shapely.geometry import LinearRing, Polygon

    mask = _shapes()[index]
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    for label in range(1, count):
        contour = instance_contour((labels == label).astype(np.uint8))
        ring = geojson_ring(contour)
        polygon = Polygon(ring)
        assert ring[0] == ring[-1]
        assert polygon.is_valid, (ring, shapely_reason(polygon))
        assert LinearRing(ring).is_ccw
        assert polygon.area > 0


def shapely_reason(polygon):
    from shapely.validation import explain_validity

    return explain_validity(polygon)


def test_overlay_of_a_map_draws_the_contours_post_processing_writes():
    """Issue 12.6: one contour extraction: instance_contours (overlays of a bare map) gives exactly the contours
    that src.maps.postproc.process puts in inst_info, i.e. in the JSON and (as rings) the GeoJSON."""
    from src.maps.postproc import instance_info

    inst_map = make_inst_map()
    inst_map[30:34, 5:9] = 7  # a square: CHAIN_APPROX_SIMPLE keeps its 4 corners only
    inst_map[5, 70] = 8  # one pixel
    info = instance_info(inst_map)
    contours = instance_contours(inst_map)
    assert sorted(contours) == sorted(info)
    for inst_id, contour in contours.items():
        np.testing.assert_array_equal(contour, info[inst_id]["contour"])
    np.testing.assert_array_equal(contours[7], [[5, 30], [5, 33], [8, 33], [8, 30]])
    np.testing.assert_array_equal(contours[8], [[70, 5]])


def test_type_name():
    type_info = {1: ("tumour", (255, 0, 0))}
    assert type_name(type_info, 1) == "tumour"
    assert type_name(type_info, 9) == "type9"  # a summary column of an id the file does not list
    assert type_name(type_info, None) == "unclassified"
    # a nucleus of type 0 (background won its vote) in a file that names only the classes: untyped, not an error
    assert type_entry(type_info, 0) == (UNTYPED_NAME, UNTYPED_COLOUR)
    assert type_entry({0: ("nolabe", (0, 0, 0)), **type_info}, 0) == ("nolabe", (0, 0, 0))
    with pytest.raises(ValueError, match="type 2 has no name"):
        type_entry(type_info, 2)
