"""dataset/convert.py: every format on a tiny fixture written here from the format's public description."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.io

from dataset.convert import CRCHISTO_TYPES, crchisto_points, instance_record, main, pannuke_maps
from misc.io import load_label_mat


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def _image(h=16, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _labels(out, name, with_types=True):
    return load_label_mat(out / "Labels" / f"{name}.mat", with_types=with_types)


def test_instance_record_contiguous_ids_majority_types_and_centroids():
    inst = np.array([[0, 7, 7, 0],
                     [0, 7, 7, 0],
                     [3, 0, 0, 0]])
    types = np.array([[0, 2, 2, 0],
                      [0, 2, 4, 0],
                      [0, 0, 0, 0]])  # id 3 has only background type: 0
    ids, inst_type, centroid = instance_record(inst, types)
    np.testing.assert_array_equal(ids, [[0, 2, 2, 0], [0, 2, 2, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(inst_type, [0, 2])
    np.testing.assert_allclose(centroid, [[0.0, 2.0], [1.5, 0.5]])  # x, y
    ids, inst_type, centroid = instance_record(np.zeros((2, 2), int))
    assert ids.max() == 0 and inst_type.shape == (0,) and centroid.shape == (0, 2)


_XML = """<?xml version="1.0"?>
<Annotations><Annotation Id="1"><Regions>
{regions}
</Regions></Annotation></Annotations>"""


def _region(rid, xy):
    vertices = "".join(f'<Vertex X="{x}" Y="{y}" />' for x, y in xy)
    return f'<Region Id="{rid}"><Vertices>{vertices}</Vertices></Region>'


def test_kumar_xml_polygons_later_region_wins(tmp_path, capsys):
    src, out = tmp_path / "monuseg", tmp_path / "out"
    image = _image(16, 20)
    _png(src / "Tissue Images" / "TCGA-A.png", image)
    regions = [_region(1, [(1, 1), (5, 1), (5, 5), (1, 5)]),  # 5x5 square, partly covered by region 3
               _region(2, [(12.4, 2), (15.6, 2), (16, 6), (12, 6)]),  # rounded vertices
               _region(3, [(4, 4), (8, 4), (8, 8), (4, 8)]),  # overlaps region 1: wins
               _region(4, [(4, 4), (5, 4), (5, 5), (4, 5)])]  # inside region 3, later again: wins
    (src / "Annotations").mkdir(parents=True)
    (src / "Annotations" / "TCGA-A.xml").write_text(_XML.format(regions="\n".join(regions)))
    code, _, err = _run(capsys, "--format", "kumar", "--input", src, "--output", out)
    assert code == 0, err
    labels = _labels(out, "TCGA-A")
    inst = labels["inst_map"]
    assert inst.shape == (16, 20) and sorted(np.unique(inst)) == [0, 1, 2, 3, 4]  # contiguous
    assert inst[1, 1] == 1 and inst[5, 1] == 1 and inst[4, 4] == 4 and inst[8, 8] == 3 and inst[5, 5] == 4
    assert inst[3, 12] == 2 and inst[6, 16] == 2
    assert (inst == 1).sum() == 25 - 4  # rows/cols 4-5 taken by region 3 (then 4)
    np.testing.assert_array_equal(labels["inst_type"], [0, 0, 0, 0])  # untyped
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(out / "Images" / "TCGA-A.png")), cv2.COLOR_BGR2RGB),
                                  image)


@pytest.mark.parametrize("xml, message", [
    ("<Annotations><Annotation/></Annotations>", "no <Region>"),
    (_XML.format(regions='<Region Id="7"><Vertices></Vertices></Region>'), "Region> 7 has no <Vertex>"),
    (_XML.format(regions='<Region Id="2"><Vertices><Vertex X="1" /></Vertices></Region>'), "without numeric X"),
    ("<Annotations><Region>", "not a readable XML"),
])
def test_kumar_malformed_xml_names_the_file(tmp_path, capsys, xml, message):
    src = tmp_path / "k"
    _png(src / "a.png", _image())
    (src / "a.xml").write_text(xml)
    code, _, err = _run(capsys, "--format", "kumar", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "a.xml" in err and message in err and len(err.strip().splitlines()) == 1


def _kumar_layout(src, split=None):
    """Three 16x20 tiles in the shared folder's layout: A and B with uint16 instance maps, C with XML only."""
    maps = {}
    for k, name in enumerate("ABC"):
        _png(src / "Tissue_Images" / f"TCGA-{name}.tif", _image(seed=k))
    for name in "AB":
        inst = np.zeros((16, 20), np.uint16)
        inst[2:6, 3:9] = 300  # non-contiguous ids, one above 255
        inst[8:12, 10:15] = 7
        _png(src / "Instance_Maps" / f"TCGA-{name}.png", inst)
        maps[name] = inst
    (src / "Annotations").mkdir(parents=True, exist_ok=True)
    # 1-based MATLAB vertices: the square (2..5, 2..5) is pixels 1..4 in 0-based rows and columns
    (src / "Annotations" / "TCGA-C.xml").write_text(_XML.format(regions=_region(1, [(2, 2), (5, 2), (5, 5), (2, 5)])))
    if split is not None:
        (src / "split.json").write_text(json.dumps(split))
    return maps


def test_kumar_shared_layout_instance_maps_xml_fallback_and_split(tmp_path, capsys):
    src, out = tmp_path / "kumar", tmp_path / "out"
    maps = _kumar_layout(src, {"train": ["TCGA-A"], "test_same_organ": ["TCGA-B"], "test_different_organ": ["TCGA-C"],
                               "source": "a note, not a set"})
    code, stdout, err = _run(capsys, "--format", "kumar", "--input", src, "--output", out)
    assert code == 0, err
    assert "3 image(s)" in stdout
    assert sorted(p.stem for p in (out / "train" / "Labels").iterdir()) == ["TCGA-A"]
    assert sorted(p.stem for p in (out / "test" / "Labels").iterdir()) == ["TCGA-B", "TCGA-C"]
    inst = _labels(out / "train", "TCGA-A")["inst_map"]
    np.testing.assert_array_equal(inst > 0, maps["A"] > 0)
    assert sorted(np.unique(inst)) == [0, 1, 2]  # contiguous ids
    xml_inst = _labels(out / "test_different_organ", "TCGA-C")["inst_map"]
    assert xml_inst[1:5, 1:5].all() and xml_inst.sum() == 16  # shifted to 0-based like the organisers' masks


def test_kumar_shared_layout_without_split_and_with_a_bad_one(tmp_path, capsys):
    src, out = tmp_path / "kumar", tmp_path / "out"
    _kumar_layout(src)
    code, _, err = _run(capsys, "--format", "kumar", "--input", src, "--output", out)
    assert code == 0, err
    assert sorted(p.stem for p in (out / "Labels").iterdir()) == ["TCGA-A", "TCGA-B", "TCGA-C"]
    (src / "split.json").write_text(json.dumps({"train": ["TCGA-Z"]}))
    code, _, err = _run(capsys, "--format", "kumar", "--input", src, "--output", tmp_path / "o2")
    assert code == 2 and "TCGA-Z" in err and len(err.strip().splitlines()) == 1
    (src / "Annotations" / "TCGA-C.xml").unlink()
    (src / "split.json").unlink()
    code, _, err = _run(capsys, "--format", "kumar", "--input", src, "--output", tmp_path / "o3")
    assert code == 2 and "TCGA-C" in err and "neither" in err


def test_cpm_label_png_and_mat(tmp_path, capsys):
    src, out = tmp_path / "cpm17", tmp_path / "out"
    inst = np.zeros((16, 20), np.uint16)
    inst[2:6, 2:6] = 300
    inst[8:12, 10:15] = 40
    _png(src / "Images" / "i1.png", _image())
    _png(src / "Labels" / "i1.png", inst)  # 16-bit single-channel ids (CPM-15 style)
    _png(src / "Images" / "i2.png", _image(seed=1))
    scipy.io.savemat(src / "Labels" / "i2.mat", {"inst_map": inst.astype(np.float64)})  # CPM-17 style
    code, _, err = _run(capsys, "--format", "cpm", "--input", src, "--output", out)
    assert code == 0, err
    for name in ("i1", "i2"):
        labels = _labels(out, name)
        assert labels["inst_map"][3, 3] == 2 and labels["inst_map"][9, 11] == 1  # ids 40 -> 1, 300 -> 2
        np.testing.assert_allclose(labels["inst_centroid"], [[12.0, 9.5], [3.5, 3.5]])
        assert "type_map" not in labels


def test_cpm_shape_mismatch_names_the_file(tmp_path, capsys):
    src = tmp_path / "cpm"
    _png(src / "Images" / "i1.png", _image(16, 20))
    _png(src / "Labels" / "i1.png", np.zeros((10, 10), np.uint8))
    code, _, err = _run(capsys, "--format", "cpm", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "i1.png" in err and "10x10" in err


def test_tnbc_binary_and_instance_masks(tmp_path, capsys):
    src, out = tmp_path / "TNBC", tmp_path / "out"
    binary = np.zeros((16, 20), np.uint8)
    binary[1:4, 1:4] = 255
    binary[1:4, 4:7] = 255  # touches the first: one component
    binary[10:14, 10:12] = 255
    _png(src / "Slide_01" / "01_1.png", _image())
    _png(src / "GT_01" / "01_1.png", binary)
    instance = np.zeros((16, 20), np.uint8)
    instance[1:4, 1:4] = 5
    instance[1:4, 4:7] = 9  # touching but distinct ids: kept apart
    _png(src / "Slide_02" / "02_1.png", _image(seed=2))
    _png(src / "GT_02" / "02_1.png", instance)
    code, _, err = _run(capsys, "--format", "tnbc", "--input", src, "--output", out)
    assert code == 0, err
    first = _labels(out, "01_1")["inst_map"]
    assert first.max() == 2 and first[2, 2] == first[2, 5] == 1 and first[11, 11] == 2
    second = _labels(out, "02_1")["inst_map"]
    assert second.max() == 2 and second[2, 2] == 1 and second[2, 5] == 2


def test_tnbc_missing_image_names_the_mask(tmp_path, capsys):
    src = tmp_path / "TNBC"
    _png(src / "GT_01" / "01_3.png", np.zeros((4, 4), np.uint8))
    (src / "Slide_01").mkdir()
    code, _, err = _run(capsys, "--format", "tnbc", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "01_3.png" in err


def _det(path, xy):
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"detection": np.array(xy, np.float64).reshape(-1, 2)})


def test_crchisto_points_only_with_untyped_detections(tmp_path, capsys):
    src, out = tmp_path / "CRCHistoPhenotypes_2016_04_28", tmp_path / "out"
    det_dir, cls_dir = src / "Detection" / "img1", src / "Classification" / "img1"
    _png(det_dir / "img1.png", _image(30, 30))
    _det(det_dir / "img1_detection.mat", [[10.2, 5.0], [20.0, 20.0], [3.0, 25.0]])
    _det(cls_dir / "img1_epithelial.mat", [[10.2, 5.0]])
    _det(cls_dir / "img1_fibroblast.mat", [[20.3, 20.0]])  # within 0.5 px of a detection
    _det(cls_dir / "img1_inflammatory.mat", np.zeros((0, 2)))
    _det(cls_dir / "img1_others.mat", [[28.0, 1.0]])  # no detection there: added as a typed point
    code, _, err = _run(capsys, "--format", "crchisto", "--input", src, "--output", out)
    assert code == 0, err
    mat = scipy.io.loadmat(out / "Labels" / "img1.mat")
    assert "inst_map" not in mat  # points only
    np.testing.assert_array_equal(mat["inst_type"].ravel(), [CRCHISTO_TYPES["epithelial"], CRCHISTO_TYPES["fibroblast"],
                                                             -1, CRCHISTO_TYPES["others"]])
    np.testing.assert_allclose(mat["inst_centroid"], [[10.2, 5.0], [20.0, 20.0], [3.0, 25.0], [28.0, 1.0]])
    assert (out / "Images" / "img1.png").is_file()
    assert CRCHISTO_TYPES == {"others": 1, "inflammatory": 2, "epithelial": 3, "fibroblast": 4}
    inst_type, centroid = crchisto_points(np.zeros((0, 2)), {2: np.array([[1.0, 2.0]])})
    assert inst_type.tolist() == [2] and centroid.tolist() == [[1.0, 2.0]]


def test_crchisto_bad_detection_shape(tmp_path, capsys):
    src = tmp_path / "crc"
    _png(src / "Detection" / "img2" / "img2.png", _image())
    scipy.io.savemat(src / "Detection" / "img2" / "img2_detection.mat", {"detection": np.zeros((3, 3))})
    code, _, err = _run(capsys, "--format", "crchisto", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "img2_detection.mat" in err and "Nx2" in err
    scipy.io.savemat(src / "Detection" / "img2" / "img2_detection.mat", {"points": np.zeros((3, 2))})
    code, _, err = _run(capsys, "--format", "crchisto", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "missing key 'detection'" in err


def test_pannuke_fold(tmp_path, capsys):
    src, out = tmp_path / "fold1", tmp_path / "out"
    src.mkdir()
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3))
    masks = np.zeros((2, 8, 8, 6))
    masks[0, 1:3, 1:3, 0] = 17  # neoplastic
    masks[0, 4:7, 4:7, 4] = 3  # epithelial
    masks[0, 2:5, 2:4, 1] = 17  # inflammatory, same id value, overlaps the first: later channel wins
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)  # background channel
    np.save(src / "images.npy", images)
    np.save(src / "masks.npy", masks)
    code, _, err = _run(capsys, "--format", "pannuke", "--input", src, "--output", out)
    assert code == 0, err
    labels = _labels(out, "fold1_00000")
    inst, types = labels["inst_map"], labels["type_map"]
    assert inst.max() == 3 and types[1, 1] == 1 and types[5, 5] == 5 and types[2, 2] == 2 and types[4, 3] == 2
    np.testing.assert_array_equal(labels["inst_type"], [1, 2, 5])
    assert _labels(out, "fold1_00001")["inst_map"].max() == 0
    image = cv2.cvtColor(cv2.imread(str(out / "Images" / "fold1_00000.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(image, np.rint(images[0]).astype(np.uint8))
    inst_map, type_map = pannuke_maps(masks[0])
    np.testing.assert_array_equal(inst_map, inst)


def test_pannuke_shape_mismatch(tmp_path, capsys):
    src = tmp_path / "fold2"
    src.mkdir()
    np.save(src / "images.npy", np.zeros((2, 8, 8, 3)))
    np.save(src / "masks.npy", np.zeros((3, 8, 8, 6)))
    code, _, err = _run(capsys, "--format", "pannuke", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "masks.npy" in err and "does not match" in err
    np.save(src / "masks.npy", np.zeros((2, 8, 8, 5)))
    code, _, err = _run(capsys, "--format", "pannuke", "--input", src, "--output", tmp_path / "o")
    assert code == 2 and "masks.npy" in err and "(N, H, W, 6)" in err


def test_consep_kept_or_merged(tmp_path, capsys):
    src = tmp_path / "CoNSeP"
    inst = np.zeros((16, 20), np.int32)
    inst[2:6, 2:6] = 1
    inst[8:12, 10:15] = 2
    types = np.where(inst == 1, 4, np.where(inst == 2, 7, 0))
    _png(src / "Images" / "test_1.png", _image())
    (src / "Labels").mkdir()
    scipy.io.savemat(src / "Labels" / "test_1.mat", {"inst_map": inst, "type_map": types})
    assert _run(capsys, "--format", "consep", "--input", src, "--output", tmp_path / "kept")[0] == 0
    np.testing.assert_array_equal(_labels(tmp_path / "kept", "test_1")["inst_type"], [4, 7])
    assert _run(capsys, "--format", "consep", "--input", src, "--output", tmp_path / "m", "--merge_types")[0] == 0
    np.testing.assert_array_equal(_labels(tmp_path / "m", "test_1")["inst_type"], [3, 4])
    code, _, err = _run(capsys, "--format", "cpm", "--input", src, "--output", tmp_path / "x", "--merge_types")
    assert code == 2 and "--merge_types" in err


def test_help_lists_the_formats():
    proc = subprocess.run([sys.executable, "-m", "dataset.convert", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for fmt in ("kumar", "cpm", "tnbc", "crchisto", "pannuke", "consep"):
        assert fmt in proc.stdout
