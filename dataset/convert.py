"""Convert the paper's data sets to the project's CoNSeP-style layout (paper Sec. IV-A, Tables III-V).

Usage::

    python -m dataset.convert --format kumar --input MoNuSeg/ --output data/kumar
    python -m dataset.convert --format crchisto --input CRCHistoPhenotypes_2016_04_28/ --output data/crchisto

Every format writes ``<output>/Images/<name>.png`` (8-bit RGB) and ``<output>/Labels/<name>.mat`` with
``inst_map`` (HxW int32, 0 background, ids 1..N contiguous), ``type_map`` (HxW int32, typed sets only),
``inst_type`` (Nx1 int32: the type of id i+1; 0 = untyped) and ``inst_centroid`` (Nx2 float64, x then y):
what ``extract_patches.py``, ``infer.py`` and ``metrics/compute_stats.py`` read. Formats, each from its
public description:

``kumar``   Kumar / MoNuSeg. Either the layout of ``../shared/data/kumar`` (``Tissue_Images/<name>.tif``,
            ``Instance_Maps/<name>.png`` uint16 instance maps, ``Annotations/<name>.xml`` where kept,
            ``split.json``): the instance map is used where there is one (the organisers' own rasterisation),
            else the XML read with 1-based vertices as the organisers' MATLAB did; with ``split.json`` each set
            goes to ``<output>/<set>/`` (``train``, ``test_same_organ``, ``test_different_organ``) and every
            test image also to ``<output>/test/``. Or, as distributed, Aperio ImageScope XML (``<Region>``
            elements holding ``<Vertex X=.. Y=..>``, X the column, Y the row) beside or below the images
            (``.tif``/``.png``...) of the same name; each region is one nucleus, rasterised as a filled
            polygon; where polygons overlap the later region in the file wins; regions covered entirely by
            later ones, or with no area, vanish and the ids are made contiguous. Untyped.
``cpm``     CPM-15 / CPM-17: ``Images/`` and ``Labels/`` with label images (single-channel ids or
            colour-coded PNG/TIFF) or ``.mat``/``.npy`` instance maps, as ``extract_patches.py --kind
            instance`` reads them. Untyped.
``tnbc``    TNBC: ``Slide_<k>/<name>.png`` images with ``GT_<k>/<name>.png`` masks; a binary mask (one
            non-zero value) is split into 4-connected components, an instance mask keeps its ids.
            Untyped.
``crchisto`` CRCHistoPhenotypes (20x, pair with ``--radius 6``): ``Detection/imgN/imgN.bmp`` and
            ``imgN_detection.mat`` (key ``detection``, Nx2 x, y), types from ``imgN_<class>.mat`` (same key)
            in ``Classification/imgN/`` (or beside the detection file). Points only: labels hold
            ``inst_centroid`` and ``inst_type`` and no map; a detection no class file names gets type
            -1 (untyped; score with ``compute_stats.py --mode type --no-exhaustive``). Types as the
            paper's four (spec section 4 numbering): others 1 (miscellaneous), inflammatory 2,
            epithelial 3, fibroblast 4 (spindle). A class point matches the detection at the same
            coordinates (within 0.5 px); a class point with no detection is added as a typed point.
``pannuke`` PanNuke folds: ``images.npy`` (N, 256, 256, 3) and ``masks.npy`` (N, 256, 256, 6), channels
            0-4 the instance ids of each type, channel 5 background. PanNuke's five types are kept:
            1 neoplastic, 2 inflammatory, 3 connective/soft tissue, 4 dead, 5 epithelial (type id =
            channel + 1). Each (channel, id) is one nucleus; a later channel wins where two overlap.
            Names ``<fold folder>_<index>`` (5 digits).
``consep``  CoNSeP as released (``Images/``, ``Labels/*.mat`` with ``inst_map``/``type_map``), original 7
            types kept; ``--merge_types`` merges them into the paper's 4 (``DATA.TYPE_MERGE``).

``inst_type`` of a typed map is the majority type of the instance's pixels (background ignored where the
instance has typed pixels); centroids are pixel means. Anything malformed stops with a one-line error
naming the file (exit status 2). numpy/scipy/OpenCV only; no TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from scipy import ndimage as ndi

from dataset.readers import get_reader, merge_types
from misc.arrays import relabel_contiguous
from misc.io import (
    IMAGE_SUFFIXES,
    InputError,
    atomic_path,
    colour_instances_to_ids,
    read_image_rgb,
    save_label_mat,
)
from src.config import config_from_args

__all__ = ["FORMATS", "CRCHISTO_TYPES", "PANNUKE_TYPES", "instance_record", "rasterise_xml",
           "crchisto_points", "convert", "main"]

EXIT_BAD_INPUT = 2

# CRCHisto class file suffix -> type id (the paper's four, numbered as the project's merged CoNSeP types)
CRCHISTO_TYPES = {"others": 1, "inflammatory": 2, "epithelial": 3, "fibroblast": 4}
# PanNuke masks.npy channel -> type id (channel + 1); channel 5 is background
PANNUKE_TYPES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}
_CRCHISTO_MATCH_PX = 0.5


# --------------------------------------------------------------------------------------------------
# label records
# --------------------------------------------------------------------------------------------------
def instance_record(inst_map: np.ndarray, type_map: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous ids, per-instance types and centroids of an instance map.

    Args:
        inst_map: HxW non-negative integer ids (any values), 0 background.
        type_map: HxW integer types, or None (untyped: every type 0).

    Returns:
        ``(inst_map, inst_type, inst_centroid)``: HxW int32 ids 1..N in the order of the input ids;
        (N,) int32 majority type per instance (0 ignored when the instance has typed pixels); (N, 2)
        float64 pixel-mean centroids, x (column) then y (row).
    """
    contiguous, n = relabel_contiguous(inst_map, dtype=np.int32)
    if n:
        rows, cols = _means(contiguous, n)
        centroid = np.stack([cols, rows], axis=1)
    else:
        centroid = np.zeros((0, 2), np.float64)
    inst_type = np.zeros(n, np.int32)
    if type_map is not None and n:
        type_map = np.asarray(type_map).astype(np.int64)
        fg = contiguous > 0
        pairs = np.stack([contiguous[fg], type_map[fg]], axis=1)
        uniq, counts = np.unique(pairs, axis=0, return_counts=True)
        best = {}
        for (inst, typ), count in zip(uniq.tolist(), counts.tolist(), strict=True):
            key = (typ != 0, count, -typ)  # typed pixels first, then the most frequent, then the smallest id
            if inst not in best or key > best[inst][0]:
                best[inst] = (key, typ)
        for inst, (_, typ) in best.items():
            inst_type[inst - 1] = typ
    return contiguous, inst_type, centroid


def _means(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column means of the pixels of labels 1..n (each present at least once)."""
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    count = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    row_sum = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)[1:]
    col_sum = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)[1:]
    return row_sum / count, col_sum / count


def _write(output: Path, name: str, image: np.ndarray | None, inst_map: np.ndarray | None,
           type_map: np.ndarray | None = None, points: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write ``Images/<name>.png`` and ``Labels/<name>.mat`` (a map record, or points only)."""
    if image is not None:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"{name}: the image could not be encoded as PNG")
        with atomic_path(output / "Images" / f"{name}.png") as tmp:
            tmp.write_bytes(encoded.tobytes())
    label_path = output / "Labels" / f"{name}.mat"
    if points is not None:
        inst_type, centroid = points
        with atomic_path(label_path) as tmp:
            with open(tmp, "wb") as handle:
                scipy.io.savemat(handle, {"inst_type": np.asarray(inst_type, np.int32).reshape(-1, 1),
                                          "inst_centroid": np.asarray(centroid, np.float64).reshape(-1, 2)},
                                 do_compression=True)
        return
    inst, inst_type, centroid = instance_record(inst_map, type_map)
    save_label_mat(label_path, inst, type_map=None if type_map is None else np.where(inst > 0, type_map, 0),
                   inst_type=inst_type, inst_centroid=centroid)


def _image_for(folder: Path, stem: str, source: Path) -> Path:
    for suffix in (*IMAGE_SUFFIXES, ".bmp"):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise InputError(f"{source}: no image named {stem}.<png|tif|jpg|bmp> beside it in {folder}")


def _read_rgb(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".bmp":
        array = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if array is None:
            raise InputError(f"{path}: not a readable image")
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return read_image_rgb(path)


# --------------------------------------------------------------------------------------------------
# Kumar / MoNuSeg XML
# --------------------------------------------------------------------------------------------------
def rasterise_xml(path: str | Path, shape: tuple[int, int], origin: float = 0.0) -> np.ndarray:
    """Rasterise an Aperio ImageScope XML (``<Region>``/``<Vertex X= Y=>``) into an HxW int32 map.

    Region k (document order, from 1) is filled with id k; a later region overwrites an earlier one.
    Vertices minus ``origin`` are rounded to the nearest pixel (X column, Y row): ``origin=1`` reads them as the
    1-based coordinates of the MoNuSeg organisers' MATLAB conversion (``poly2mask``), whose masks sit one pixel
    up-left of a 0-based rasterisation. Ids are not made contiguous here.
    Raises :class:`InputError` naming ``path`` for unreadable XML, no ``<Region>``, a region without
    ``<Vertex>`` or a vertex without numeric X/Y.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{path}: not a readable XML file ({exc})") from exc
    regions = list(root.iter("Region"))
    if not regions:
        raise InputError(f"{path}: no <Region> element (expected Aperio ImageScope annotations)")
    inst_map = np.zeros(shape, np.int32)
    for k, region in enumerate(regions, start=1):
        vertices = list(region.iter("Vertex"))
        if not vertices:
            raise InputError(f"{path}: <Region> {region.get('Id', k)} has no <Vertex> (empty polygon)")
        try:
            xy = np.array([[float(v.attrib["X"]), float(v.attrib["Y"])] for v in vertices])
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path}: <Region> {region.get('Id', k)} has a <Vertex> without numeric X and Y "
                             f"({exc})") from None
        polygon = np.round(xy - origin).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(inst_map, [polygon], int(k))
    return inst_map


# The MoNuSeg 2018 training set as ../shared/data/kumar holds it (see its README).
KUMAR_IMAGES, KUMAR_MAPS, KUMAR_XML, KUMAR_SPLIT = "Tissue_Images", "Instance_Maps", "Annotations", "split.json"
# Written besides the split's own sets: every test image (Table II's "all" rows).
KUMAR_ALL_TESTS = "test"


def _read_instance_png(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 2 or array.dtype.kind not in "ui":
        raise InputError(f"{path}: not a single-channel integer instance map (expected a uint16 PNG)")
    return array.astype(np.int32)


def _kumar_split(src: Path) -> dict[str, list[str]] | None:
    """``{set name: [image names]}`` from ``split.json`` (every list-valued entry), or None without one."""
    path = src / KUMAR_SPLIT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON split ({exc})") from None
    sets = {k: v for k, v in record.items() if isinstance(v, list)} if isinstance(record, dict) else {}
    if not sets or not all(isinstance(n, str) for names in sets.values() for n in names):
        raise InputError(f"{path}: expected {{set name: [image names], ...}}")
    return sets


def _convert_kumar_layout(src: Path, output: Path) -> Iterator[str]:
    """``Tissue_Images/`` + ``Instance_Maps/`` (+ ``Annotations/`` XML where there is no map) + ``split.json``."""
    images = sorted(p for p in (src / KUMAR_IMAGES).iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise InputError(f"{src / KUMAR_IMAGES}: no images")
    split = _kumar_split(src)
    if split is not None:
        unknown = sorted({n for names in split.values() for n in names} - {p.stem for p in images})
        if unknown:
            raise InputError(f"{src / KUMAR_SPLIT} names images that {src / KUMAR_IMAGES} lacks: {unknown}")
    for image_path in images:
        name = image_path.stem
        image = _read_rgb(image_path)
        map_path, xml_path = src / KUMAR_MAPS / f"{name}.png", src / KUMAR_XML / f"{name}.xml"
        if map_path.is_file():
            inst_map = _read_instance_png(map_path)
            if inst_map.shape != image.shape[:2]:
                raise InputError(f"{map_path}: {inst_map.shape} does not match the image {image.shape[:2]}")
        elif xml_path.is_file():
            inst_map = rasterise_xml(xml_path, image.shape[:2], origin=1.0)
        else:
            raise InputError(f"{name}: neither {map_path} nor {xml_path}")
        if split is None:
            _write(output, name, image, inst_map)
        else:
            sets = [s for s, names in split.items() if name in names]
            sets += [KUMAR_ALL_TESTS] if any(s.startswith("test_") for s in sets) else []
            for set_name in sets or ["unsplit"]:
                _write(output / set_name, name, image, inst_map)
        yield name


def _convert_kumar(src: Path, output: Path, args) -> Iterator[str]:
    if (src / KUMAR_IMAGES).is_dir():
        yield from _convert_kumar_layout(src, output)
        return
    xmls = sorted(src.rglob("*.xml"))
    if not xmls:
        raise InputError(f"{src}: no .xml annotation files")
    images = {p.stem: p for p in src.rglob("*") if p.suffix.lower() in (*IMAGE_SUFFIXES, ".bmp") and p.is_file()}
    for xml_path in xmls:
        if xml_path.stem not in images:
            raise InputError(f"{xml_path}: no image named {xml_path.stem}.<tif|png|...> under {src}")
        image = _read_rgb(images[xml_path.stem])
        inst_map = rasterise_xml(xml_path, image.shape[:2])
        _write(output, xml_path.stem, image, inst_map)
        yield xml_path.stem


# --------------------------------------------------------------------------------------------------
# CPM-15/17, CoNSeP (Images/ + Labels/ through dataset.readers)
# --------------------------------------------------------------------------------------------------
def _convert_reader(kind: str, src: Path, output: Path, args) -> Iterator[str]:
    merge = getattr(args, "type_merge", None)
    for sample in get_reader(kind, src):
        type_map = sample.type_map
        if type_map is not None and merge is not None:
            type_map = merge_types(type_map, merge)
        _write(output, sample.name, sample.image, sample.inst_map, type_map)
        yield sample.name


# --------------------------------------------------------------------------------------------------
# TNBC
# --------------------------------------------------------------------------------------------------
def _tnbc_mask(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise InputError(f"{path}: not a readable mask image")
    if array.ndim == 3:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            array = array[..., 0]  # grey stored as RGB
        else:
            return colour_instances_to_ids(cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB))
    values = np.unique(array)
    if values.size <= 2:  # binary: 0 and one foreground value -> connected components
        labels, _ = ndi.label(array > 0)
        return labels.astype(np.int32)
    return array.astype(np.int32)


def _convert_tnbc(src: Path, output: Path, args) -> Iterator[str]:
    gt_dirs = sorted(p for p in src.iterdir() if p.is_dir() and p.name.startswith("GT_"))
    if not gt_dirs:
        raise InputError(f"{src}: no GT_<k> mask folders (expected TNBC's Slide_<k>/ and GT_<k>/)")
    for gt_dir in gt_dirs:
        slide_dir = src / ("Slide_" + gt_dir.name[len("GT_"):])
        if not slide_dir.is_dir():
            raise InputError(f"{gt_dir}: no matching image folder {slide_dir.name}")
        for mask_path in sorted(gt_dir.glob("*.png")):
            image = _read_rgb(_image_for(slide_dir, mask_path.stem, mask_path))
            inst_map = _tnbc_mask(mask_path)
            if inst_map.shape != image.shape[:2]:
                raise InputError(f"{mask_path}: mask is {inst_map.shape[0]}x{inst_map.shape[1]} but the image is "
                                 f"{image.shape[0]}x{image.shape[1]}")
            _write(output, mask_path.stem, image, inst_map)
            yield mask_path.stem


# --------------------------------------------------------------------------------------------------
# CRCHisto
# --------------------------------------------------------------------------------------------------
def _points(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for corrupt files
        raise InputError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
    if "detection" not in mat:
        raise InputError(f"{path}: missing key 'detection'")
    points = np.asarray(mat["detection"], np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"{path}: 'detection' must be Nx2 (x, y), got shape {points.shape}")
    return points


def crchisto_points(detection: np.ndarray, classes: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Types of the detections from the per-class point lists.

    Args:
        detection: (N, 2) x, y of every nucleus; classes: type id -> (M, 2) x, y of that class.

    Returns:
        ``(inst_type, inst_centroid)``: (K,) int32 and (K, 2) float64, the N detections in order (type -1
        where no class point lies within 0.5 px) followed by the class points that match no detection.
    """
    centroid = [np.asarray(detection, np.float64).reshape(-1, 2)]
    inst_type = [np.full(len(centroid[0]), -1, np.int32)]
    for type_id in sorted(classes):
        extra = []
        for x, y in np.asarray(classes[type_id], np.float64).reshape(-1, 2):
            if len(centroid[0]):
                dist = np.hypot(centroid[0][:, 0] - x, centroid[0][:, 1] - y)
                nearest = int(np.argmin(dist))
                if dist[nearest] <= _CRCHISTO_MATCH_PX:
                    inst_type[0][nearest] = type_id
                    continue
            extra.append((x, y))
        if extra:
            centroid.append(np.array(extra, np.float64))
            inst_type.append(np.full(len(extra), type_id, np.int32))
    return np.concatenate(inst_type), np.concatenate(centroid)


def _convert_crchisto(src: Path, output: Path, args) -> Iterator[str]:
    detections = sorted(src.rglob("*_detection.mat"))
    if not detections:
        raise InputError(f"{src}: no img<N>_detection.mat files (expected CRCHisto's Detection/img<N>/)")
    for det_path in detections:
        name = det_path.name[:-len("_detection.mat")]
        classes = {}
        for folder in (src / "Classification" / name, det_path.parent):
            for cls, type_id in CRCHISTO_TYPES.items():
                cls_path = folder / f"{name}_{cls}.mat"
                if type_id not in classes and cls_path.is_file():
                    classes[type_id] = _points(cls_path)
        inst_type, centroid = crchisto_points(_points(det_path), classes)
        image = _read_rgb(_image_for(det_path.parent, name, det_path))
        _write(output, name, image, None, points=(inst_type, centroid))
        yield name


# --------------------------------------------------------------------------------------------------
# PanNuke
# --------------------------------------------------------------------------------------------------
def pannuke_maps(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One PanNuke mask (H, W, 6) -> (inst_map, type_map): each (channel, id) in channels 0-4 one nucleus
    of type channel + 1, later channels winning on overlap; ids are 1..N in (channel, id) order."""
    inst_map = np.zeros(masks.shape[:2], np.int32)
    type_map = np.zeros(masks.shape[:2], np.int32)
    next_id = 1
    for channel in range(5):
        layer = np.asarray(masks[..., channel])
        for value in np.unique(layer[layer > 0]):
            region = layer == value
            inst_map[region] = next_id
            type_map[region] = channel + 1
            next_id += 1
    return inst_map, type_map


def _convert_pannuke(src: Path, output: Path, args) -> Iterator[str]:
    image_path, mask_path = src / "images.npy", src / "masks.npy"
    for path in (image_path, mask_path):
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected a PanNuke fold folder with images.npy and masks.npy)")
    try:
        images = np.load(image_path, mmap_mode="r", allow_pickle=False)
        masks = np.load(mask_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{src}: not a readable PanNuke .npy pair ({exc})") from exc
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{image_path}: expected (N, H, W, 3), got shape {images.shape}")
    if masks.ndim != 4 or masks.shape[-1] != 6:
        raise InputError(f"{mask_path}: expected (N, H, W, 6), got shape {masks.shape}")
    if masks.shape[:3] != images.shape[:3]:
        raise InputError(f"{mask_path}: shape {masks.shape} does not match images.npy {images.shape}")
    prefix = src.resolve().name
    for index in range(images.shape[0]):
        image = np.clip(np.rint(np.asarray(images[index], np.float64)), 0, 255).astype(np.uint8)
        inst_map, type_map = pannuke_maps(masks[index])
        name = f"{prefix}_{index:05d}"
        _write(output, name, image, inst_map, type_map)
        yield name


FORMATS = {
    "kumar": _convert_kumar,
    "cpm": lambda src, output, args: _convert_reader("instance", src, output, args),
    "tnbc": _convert_tnbc,
    "crchisto": _convert_crchisto,
    "pannuke": _convert_pannuke,
    "consep": lambda src, output, args: _convert_reader("consep", src, output, args),
}


def convert(fmt: str, src: str | Path, output: str | Path, type_merge: Mapping[int, int] | None = None) -> list[str]:
    """Convert the data set at ``src`` in format ``fmt`` into ``output``; returns the names written.

    ``type_merge`` (old -> new type id, ``cfg.DATA.TYPE_MERGE``; 'consep' only) relabels the types with
    :func:`dataset.readers.merge_types`; None keeps them as stored.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    src, output = Path(src), Path(output)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder (--input)")
    if type_merge is not None and fmt != "consep":
        raise InputError("--merge_types applies to --format consep only")
    names = list(FORMATS[fmt](src, output, argparse.Namespace(type_merge=type_merge)))
    if not names:
        raise InputError(f"{src}: nothing to convert for format {fmt!r}")
    return names


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.convert",
        description="Convert a published nuclei data set into Images/<name>.png + Labels/<name>.mat "
                    "(inst_map, type_map where typed, inst_type, inst_centroid x,y).",
        epilog="formats:\n" + "\n".join(f"  {line}" for line in (
            "kumar     Kumar/MoNuSeg: Tissue_Images/ + Instance_Maps/ (+ split.json: one folder per set), "
            "or Aperio XML polygons + images (later region wins on overlap)",
            "cpm       CPM-15/CPM-17 Images/ + Labels/ (label images or .mat/.npy instance maps)",
            "tnbc      TNBC Slide_<k>/ images + GT_<k>/ binary or instance PNG masks",
            "crchisto  CRCHisto imgN_detection.mat + imgN_<class>.mat points (20x; untyped = -1)",
            "pannuke   PanNuke fold images.npy + masks.npy; types 1 neoplastic, 2 inflammatory, "
            "3 connective, 4 dead, 5 epithelial",
            "consep    CoNSeP Images/ + Labels/ (7 types; --merge_types for the paper's 4)")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="input data set format")
    parser.add_argument("--input", required=True, type=Path, help="the data set's folder as distributed")
    parser.add_argument("--output", required=True, type=Path, help="output folder (Images/, Labels/)")
    parser.add_argument("--merge_types", action="store_true",
                        help="consep only: merge the original types 1..7 into the paper's 4 (DATA.TYPE_MERGE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert, print a summary; 0 on success, 2 on bad input (one-line message)."""
    args = _build_parser().parse_args(argv)
    try:
        cfg = config_from_args()
        type_merge = dict(cfg.DATA.TYPE_MERGE) if args.merge_types else None
        names = convert(args.format, args.input, args.output, type_merge=type_merge)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{len(names)} image(s) written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
