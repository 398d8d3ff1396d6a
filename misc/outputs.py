"""Per-image inference outputs: CoNSeP ``.mat``, nuclei JSON, QuPath GeoJSON and a contour overlay.

Inputs shared by the writers (as post-processing returns them, spec section 5):

* ``inst_map``: HxW int32, 0 background, nucleus ids 1..N.
* ``inst_info``: id -> {"bbox": [[rmin, cmin], [rmax, cmax]] (max exclusive), "centroid": [x, y],
  "contour": Kx2 int (x, y), "type": int or None, "type_prob": float or None}.
* ``type_info``: type id -> (name, (r, g, b)); colours RGB ints in [0, 255]; always given by the caller
  (:func:`default_type_info` of the config's ``DATA.TYPE_NAMES``, or :func:`load_type_info`), so nothing in
  ``misc/`` reads the config.

Every file is written through :func:`misc.io.atomic_path`, so a file present under its final name is
complete; :func:`outputs_complete` relies on that to skip finished images when a run is resumed.
Coordinates are pixels of the full image, origin at its top-left corner, x = column, y = row.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from misc.arrays import check_label_map, column_bands
from misc.io import InputError, json_list_writer, save_label_mat
from misc.viz import save_overlay, type_entry

__all__ = ["FORMATS", "default_type_info", "load_type_info", "save_mat", "save_nuclei_json", "save_geojson",
           "geojson_ring", "geojson_feature", "nucleus_record", "nuclei_stream", "all_or_none", "check_formats",
           "output_paths", "write_outputs", "outputs_complete"]

FORMATS = ("mat", "json", "png", "geojson")
_SUFFIX = {"mat": ".mat", "json": ".json", "png": ".png", "geojson": ".geojson"}

# Fixed colours for CoNSeP's merged types (DATA.TYPE_NAMES); further ids cycle through _EXTRA.
_TYPE_COLOURS = {0: (0, 0, 0), 1: (255, 255, 0), 2: (255, 0, 0), 3: (0, 255, 0), 4: (0, 0, 255)}
_EXTRA = ((255, 0, 255), (0, 255, 255), (255, 128, 0), (128, 0, 255), (0, 128, 128), (128, 64, 0))


def default_type_info(type_names: Mapping[int, str]) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Type id -> (name, (r, g, b)) for ``type_names`` (id -> name: the config's ``DATA.TYPE_NAMES``).

    Colours are fixed per id; for CoNSeP's names: 0 background black, 1 miscellaneous yellow,
    2 inflammatory red, 3 epithelial green, 4 spindle blue.
    """
    return {int(k): (str(name), _TYPE_COLOURS.get(int(k), _EXTRA[int(k) % len(_EXTRA)]))
            for k, name in sorted(type_names.items())}


def load_type_info(path: str | os.PathLike) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Read a TYPE_INFO.json ``{"<id>": ["name", [r, g, b]], ...}`` (the PyTorch HoVer-Net layout).

    Raises :class:`misc.io.InputError` naming the file and the offending entry when the file is
    missing, not JSON, or an entry is not a non-negative integer id mapped to a name and three
    integers in [0, 255].
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{path}: expected a non-empty object {{"<id>": ["name", [r, g, b]]}}')
    out = {}
    for key, value in raw.items():
        try:
            type_id = int(key)
        except ValueError:
            type_id = -1
        if type_id < 0 or str(type_id) != key.strip():
            raise InputError(f"{path}: type id {key!r} is not a non-negative integer")
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0]
                and isinstance(value[1], list) and len(value[1]) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value[1])):
            raise InputError(f'{path}: entry {key!r} must be ["name", [r, g, b]] with r, g, b integers in '
                             f"[0, 255], got {value!r}")
        out[type_id] = (value[0], tuple(value[1]))
    return dict(sorted(out.items()))


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _type_or_none(value) -> int | None:
    return None if value is None else int(value)


def _check_inst_map(inst_map, inst_info: Mapping):
    """``inst_map`` (an array, or a :class:`misc.io.ScratchArray`) after checking it band by band: an HxW map of
    non-negative integer ids that are exactly those of ``inst_info``."""
    if not hasattr(inst_map, "shape"):
        inst_map = np.asarray(inst_map)
    if len(inst_map.shape) != 2:
        raise ValueError(f"inst_map must be a 2-D (HxW) map, got shape {inst_map.shape}")
    ids = set()
    for band in column_bands(inst_map):
        ids.update(np.unique(check_label_map(band, "inst_map", allow_bool=False)).tolist())
    ids.discard(0)
    if ids != {int(k) for k in inst_info}:
        missing = sorted(ids ^ {int(k) for k in inst_info})[:10]
        raise ValueError(f"inst_map ids and inst_info ids differ (e.g. {missing})")
    return inst_map


class _TypeMap:
    """``lookup[inst_map]`` computed for the columns asked for: the ``.mat``'s type map, one band at a time
    (:func:`misc.io.save_label_mat`) instead of a second full-size map."""

    def __init__(self, inst_map, lookup: np.ndarray):
        self.inst_map, self.lookup, self.shape = inst_map, lookup, inst_map.shape

    def __getitem__(self, key) -> np.ndarray:
        return self.lookup[self.inst_map[key]]


def save_mat(path: str | os.PathLike, inst_map, inst_info: Mapping) -> Path:
    """Write a CoNSeP-format ``.mat`` so predictions and ground truth are read by the same code.

    Keys: ``inst_map`` (HxW int32), ``type_map`` (HxW int32, each nucleus's pixels = its type, 0 for
    background and untyped nuclei), ``inst_type`` (Nx1 int32) and ``inst_centroid`` (Nx2 float64,
    x then y), rows in ascending id order (row i is id i + 1 when ids are 1..N). ``inst_info`` must
    describe exactly the ids present in ``inst_map`` (``ValueError`` otherwise). ``inst_map``: an array or a
    :class:`misc.io.ScratchArray`; both are read a band of columns at a time, so no full-size temporary is made.
    """
    inst_map = _check_inst_map(inst_map, inst_info)
    ids = sorted(int(k) for k in inst_info)
    types = np.array([_type_or_none(inst_info[i].get("type")) or 0 for i in ids], dtype=np.int32)
    centroids = np.array([[float(v) for v in inst_info[i]["centroid"]] for i in ids], dtype=np.float64)
    lookup = np.zeros(max(ids, default=0) + 1, dtype=np.int32)
    lookup[ids] = types
    path = Path(path)
    save_label_mat(path, inst_map, type_map=_TypeMap(inst_map, lookup), inst_type=types,
                   inst_centroid=centroids.reshape(-1, 2))
    return path


def nucleus_record(inst_id: int, info: Mapping, type_info: Mapping) -> dict:
    """One nucleus as the JSON record :func:`save_nuclei_json` writes (shared with whole-slide outputs)."""
    type_id = _type_or_none(info.get("type"))
    name, _ = type_entry(type_info, type_id)
    (rmin, cmin), (rmax, cmax) = info["bbox"]
    return {
        "id": int(inst_id),
        "bbox": [[int(rmin), int(cmin)], [int(rmax), int(cmax)]],
        "centroid": [float(v) for v in info["centroid"]],
        "contour": np.asarray(info["contour"], dtype=np.int64).reshape(-1, 2).tolist(),
        "type": type_id,
        "type_name": name,
        "type_prob": _finite_or_none(info.get("type_prob")),
    }


def _json_head(type_info: Mapping, image_shape: tuple[int, int] | None, mpp: float | None) -> dict:
    head = {}
    if image_shape is not None:
        head["image_shape"] = [int(image_shape[0]), int(image_shape[1])]
    if mpp is not None:
        head["mpp"] = float(mpp)
    head["type_info"] = {str(k): [str(name), [int(v) for v in colour]] for k, (name, colour) in type_info.items()}
    return head


@contextlib.contextmanager
def nuclei_stream(paths: Mapping[str, str | os.PathLike], type_info: Mapping,
                  image_shape: tuple[int, int] | None = None, *, mpp: float | None = None, compress_geojson=False):
    """The nuclei JSON (``paths["json"]``) and GeoJSON (``paths["geojson"]``) of one image, fed one nucleus at a
    time: yields ``add(inst_id, info)``; both files appear under their names when the block ends without an error.

    Formats as :func:`save_nuclei_json` and :func:`save_geojson` document (a whole slide's JSON also records
    its ``mpp``, um per px); one nucleus is held as text at a time, so a slide's millions of nuclei stream
    through. Other formats in ``paths`` are ignored; ``compress_geojson``: gzip the GeoJSON.
    """
    with contextlib.ExitStack() as stack:
        adders = []
        if "json" in paths:
            # NaN/Infinity are not JSON: strict readers (QuPath) fail
            add_json = stack.enter_context(json_list_writer(paths["json"], _json_head(type_info, image_shape, mpp),
                                                            "nuclei", allow_nan=False))
            adders.append(lambda inst_id, info: add_json(nucleus_record(inst_id, info, type_info)))
        if "geojson" in paths:
            add_feature = stack.enter_context(json_list_writer(paths["geojson"], {"type": "FeatureCollection"},
                                                               "features", compress=compress_geojson,
                                                               allow_nan=False))
            adders.append(lambda inst_id, info: add_feature(geojson_feature(inst_id, info, type_info)))

        def add(inst_id: int, info: Mapping) -> None:
            for adder in adders:
                adder(int(inst_id), info)

        yield add


def save_nuclei_json(path: str | os.PathLike, inst_info: Mapping, type_info: Mapping,
                     image_shape: tuple[int, int] | None = None) -> Path:
    """Write every nucleus as JSON: ``{"image_shape": [H, W], "type_info": {"<id>": [name, [r, g, b]]},
    "nuclei": [{"id", "bbox", "centroid", "contour", "type", "type_name", "type_prob"}, ...]}``.

    Nuclei in ascending id order; ``bbox`` [[rmin, cmin], [rmax, cmax]] (max exclusive), ``centroid``
    [x, y], ``contour`` [[x, y], ...]; ``type``/``type_prob`` null for untyped nuclei.
    ``image_shape`` is left out when not given.
    """
    _stream_all({"json": path}, inst_info, type_info, image_shape)
    return Path(path)


def _stream_all(paths: Mapping, inst_info: Mapping, type_info: Mapping, image_shape=None) -> None:
    with nuclei_stream(paths, type_info, image_shape) as add:
        for inst_id in sorted(inst_info, key=int):
            add(inst_id, inst_info[inst_id])


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _drop_spikes(points: np.ndarray) -> np.ndarray:
    """Remove repeated points and vertices where the ring turns straight back (OpenCV traces a 1-pixel-wide
    part out and back along the same pixels, e.g. ``[19, 33], [19, 54], [19, 46]`` along an image edge)."""
    points = list(map(tuple, points))
    changed = True
    while changed and len(points) >= 3:
        changed = False
        for i in range(len(points)):
            a, b, c = points[i - 1], points[i], points[(i + 1) % len(points)]
            cross = (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])
            dot = (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1])
            if a == b or (cross == 0 and dot <= 0):  # a duplicate, or a spike (collinear reversal)
                del points[i]
                changed = True
                break
    return np.array(points, dtype=np.int64).reshape(-1, 2)


def _largest_loop(points: np.ndarray) -> np.ndarray:
    """Split a ring that passes a vertex twice (parts joined by one diagonal pixel step: a figure-8, invalid
    as a simple feature) into its loops and keep the one of largest area."""
    while True:
        seen = {}
        for j, point in enumerate(map(tuple, points)):
            if point in seen:
                i = seen[point]
                loops = [points[i:j], np.concatenate([points[j:], points[:i]])]
                points = max(loops, key=lambda loop: abs(_signed_area(loop)) if len(loop) >= 3 else -1.0)
                points = _drop_spikes(points)
                break
            seen[point] = j
        else:
            return points


def geojson_ring(contour, bbox=None) -> list[list[int]]:
    """A closed GeoJSON linear ring (RFC 7946 section 3.1.6) from a Kx2 (x, y) contour.

    The first position is repeated at the end. The ring is a valid OGC simple feature: spikes where OpenCV
    traces a 1-pixel-wide part out and back are removed, and of a contour touching itself at a vertex
    (parts joined by a diagonal pixel step) the loop of largest area is kept. A contour that encloses no area
    (1-3 points, or all on a line, as OpenCV gives for 1-pixel or 1-pixel-wide nuclei) becomes the rectangle of pixel
    edges around its points (or around ``bbox`` [[rmin, cmin], [rmax, cmax]] if it is empty), so every
    ring has >= 4 positions and a non-zero area. Rings wind counterclockwise in the (x, y) frame, as
    RFC 7946 recommends for exterior rings (clockwise on screen, where y points down).
    """
    points = np.asarray(contour, dtype=np.int64).reshape(-1, 2)
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    original = points
    points = _largest_loop(_drop_spikes(points))  # OGC simple features: no spikes, no self-touching
    if len(points) < 3 or _signed_area(points) == 0:
        points = original  # nothing with an area is left: the pixel-edge box below
        if len(points):
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0) + 1
        elif bbox is not None:
            (y0, x0), (y1, x1) = bbox
        else:
            raise ValueError("a nucleus has neither contour points nor a bbox")
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.int64)
    if _signed_area(points) < 0:
        points = points[::-1]
    ring = points.tolist()
    return ring + [ring[0]]


def geojson_feature(inst_id: int, info: Mapping, type_info: Mapping) -> dict:
    """One nucleus as the GeoJSON Feature :func:`save_geojson` writes (``info``: contour, bbox, type, type_prob)."""
    type_id = _type_or_none(info.get("type"))
    properties = {"objectType": "detection"}
    if type_id is not None:
        name, colour = type_entry(type_info, type_id)
        properties["classification"] = {"name": name, "color": list(colour)}
    measurements = {"nucleus_id": int(inst_id)}
    type_prob = _finite_or_none(info.get("type_prob"))
    if type_prob is not None:
        measurements["type_prob"] = type_prob
    properties["measurements"] = measurements
    properties["nucleus_id"] = int(inst_id)
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [geojson_ring(info["contour"], info.get("bbox"))]},
        "properties": properties,
    }


def save_geojson(path: str | os.PathLike, inst_info: Mapping, type_info: Mapping) -> Path:
    """Write nuclei as a GeoJSON FeatureCollection that QuPath (>= 0.4) imports as classified detections.

    One Feature per nucleus, ascending id: ``geometry`` a Polygon (see :func:`geojson_ring`) in pixel
    coordinates; ``properties``: ``objectType`` "detection" (QuPath's lightweight object for many
    small cells; without it QuPath creates annotations), ``classification`` {"name", "color": [r, g, b]}
    (left out for untyped nuclei, which QuPath shows as unclassified), ``measurements``
    {"nucleus_id", "type_prob"} (a flat name -> number map; ``type_prob`` left out when unknown), and
    ``nucleus_id`` (the id in the ``.mat``/JSON, for other readers). Conventions follow QuPath's own
    GeoJSON export (qupath-core ``PathObjectTypeAdapters``; the v0.4 format of qupath/qupath#1099).
    """
    _stream_all({"geojson": path}, inst_info, type_info)
    return Path(path)


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """``formats`` as a tuple; ValueError naming the unknown ones (or for none at all)."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in _SUFFIX]
    if unknown or not formats:
        raise ValueError(f"unknown output formats {unknown}; choose from {list(FORMATS)}")
    return formats


def output_paths(out_dir: str | os.PathLike, name: str, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Format -> ``out_dir/<name>.<suffix>`` (``.mat``, ``.json``, ``.png``, ``.geojson``)."""
    if not name or Path(name).name != name:
        raise ValueError(f"output name must be a plain file stem, got {name!r}")
    return {f: Path(out_dir) / f"{name}{_SUFFIX[f]}" for f in check_formats(formats)}


@contextlib.contextmanager
def all_or_none(paths: Iterable[str | os.PathLike]):
    """One image's outputs appear together or not at all: when the block raises (a full disk, Ctrl-C, SIGTERM)
    every file of ``paths`` is removed, so that none of an unfinished image is left under a final name and the
    rerun redoes it (each file alone is already atomic: :func:`misc.io.atomic_path`)."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise


def write_outputs(out_dir: str | os.PathLike, name: str, image: np.ndarray, inst_map,
                  inst_info: Mapping, type_info: Mapping, formats: Iterable[str] = FORMATS,
                  overlay_rows: int | None = None) -> dict[str, Path]:
    """Write the requested outputs of one image and return format -> path.

    ``image``: HxWx3 uint8 RGB (used by the ``png`` overlay); ``inst_map`` HxW int32 (or a
    :class:`misc.io.ScratchArray`); ``inst_info`` and ``type_info`` as in the module docstring. ``overlay_rows``: draw
    and write the overlay that many rows at a time (``misc.viz.save_overlay``'s ``band_rows``; None: whole).
    Every file or none (:func:`all_or_none`); none of them makes a full-size copy of the map.
    """
    paths = output_paths(out_dir, name, formats)
    image = np.asarray(image)
    if image.shape[:2] != np.shape(inst_map):
        raise ValueError(f"image shape {image.shape} and inst_map shape {np.shape(inst_map)} differ")
    with all_or_none(paths.values()):
        if "mat" in paths:
            save_mat(paths["mat"], inst_map, inst_info)
        _stream_all(paths, inst_info, type_info, image.shape[:2])
        if "png" in paths:
            save_overlay(paths["png"], image, inst_info, type_info, band_rows=overlay_rows)
    return paths


def outputs_complete(out_dir: str | os.PathLike, name: str, formats: Iterable[str] = FORMATS) -> bool:
    """True if every requested output of ``name`` exists (atomic writes make present mean complete)."""
    return all(path.is_file() for path in output_paths(out_dir, name, formats).values())
