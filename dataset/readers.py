"""Dataset readers: pairs of an image and its labels under a data set root.

Readers pair ``Images/<name>.<png|jpg|jpeg|tif|tiff>`` with ``Labels/<name>.<ext>`` under a dataset root
and yield :class:`Sample` tuples ``(name, image, inst_map, type_map)``:

- ``image``: HxWx3 uint8 RGB (read with :func:`misc.io.read_image_rgb`);
- ``inst_map``: HxW int32, 0 background, instance ids > 0 (any non-negative integers);
- ``type_map``: HxW int32 type id per pixel, 0 background, or ``None`` for instance-only data sets.

Two kinds, picked by name through :func:`get_reader` (the one way to choose a reader):

``'consep'``
    CoNSeP layout (spec section 4): ``Labels/<name>.mat`` holding ``inst_map`` and ``type_map``, as stored
    (``extract_patches.py --merge_types`` merges the original 7 types into the paper's 4 with
    :func:`merge_types`).
``'instance'``
    Instance-only sets (Kumar, CPM-15/17, TNBC style). Supported label files, tried in this order:
    ``.mat`` (key ``inst_map``), ``.npy`` (HxW ids, or HxWxC with the ids in channel 0),
    ``.png``/``.tif``/``.tiff`` (single-channel 8/16/32-bit ids, or a colour-coded RGB map where each
    non-black colour is one instance). ``type_map`` is always ``None``.

numpy/scipy/OpenCV only; no TensorFlow. The patch grid over a tile is :mod:`dataset.extraction`'s.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import scipy.io

from misc.io import (
    IMAGE_SUFFIXES,
    InputError,
    check_integer_map,
    colour_instances_to_ids,
    load_label_mat,
    read_image_rgb,
)

__all__ = [
    "Sample", "DatasetReader", "ConsepReader", "InstanceReader", "READERS", "get_reader", "merge_types",
    "INSTANCE_LABEL_SUFFIXES",
]

# Label files an instance-only reader accepts, in the order they are looked for.
INSTANCE_LABEL_SUFFIXES = (".mat", ".npy", ".png", ".tif", ".tiff")


class Sample(NamedTuple):
    """One annotated image: ``image`` HxWx3 uint8 RGB; ``inst_map`` HxW int32 (0 background);
    ``type_map`` HxW int32 (0 background) or ``None`` when the data set has no types."""

    name: str
    image: np.ndarray
    inst_map: np.ndarray
    type_map: np.ndarray | None


def merge_types(type_map: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Relabel a type map through ``mapping`` (e.g. ``cfg.DATA.TYPE_MERGE``: CoNSeP 1..7 -> 1..4).

    Args:
        type_map: HxW integer map, 0 background.
        mapping: old type id -> new type id for every non-zero id present; 0 always stays 0.

    Returns:
        HxW int32 map. Raises :class:`InputError` naming any non-zero id that ``mapping`` does not cover,
        because silently keeping it would train a class the model has no channel for.
    """
    type_map = np.asarray(type_map)
    present = np.unique(type_map)
    present = present[present != 0]
    unmapped = sorted(int(v) for v in present if int(v) not in mapping)
    if unmapped:
        raise InputError(f"type ids {unmapped} have no entry in the merge mapping {dict(mapping)}")
    if present.size == 0:
        return type_map.astype(np.int32)
    lut = np.zeros(int(present.max()) + 1, np.int32)
    for old, new in mapping.items():
        if 0 < int(old) < lut.size:
            lut[int(old)] = int(new)
    return lut[type_map]


class DatasetReader:
    """Base reader: pairs images with labels under ``root`` and checks the pairing up front.

    Args:
        root: data set folder holding ``Images/`` and ``Labels/``.

    Iterating yields :class:`Sample` in sorted name order; files are read lazily, one image at a time.
    Construction raises :class:`InputError` for a missing folder, a folder without images, or images
    without a label (all missing names listed), so a bad layout fails before any work is done.
    """

    kind = ""
    label_suffixes: tuple[str, ...] = (".mat",)

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.image_dir = self.root / "Images"
        self.label_dir = self.root / "Labels"
        for folder in (self.root, self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise InputError(f"{folder}: no such folder (expected <root>/Images and <root>/Labels)")
        images = sorted(p for p in self.image_dir.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not images:
            raise InputError(f"{self.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        stems = [p.stem for p in images]
        duplicates = sorted({s for s in stems if stems.count(s) > 1})
        if duplicates:
            raise InputError(f"{self.image_dir}: several images share the names {duplicates}")
        self._pairs: list[tuple[str, Path, Path]] = []
        missing = []
        for image_path in images:
            label_path = self._find_label(image_path.stem)
            if label_path is None:
                missing.append(image_path.name)
            else:
                self._pairs.append((image_path.stem, image_path, label_path))
        if missing:
            raise InputError(f"{self.label_dir}: no label ({'|'.join(self.label_suffixes)}) for "
                             f"{len(missing)} image(s): {', '.join(missing)}")

    def _find_label(self, stem: str) -> Path | None:
        for suffix in self.label_suffixes:
            candidate = self.label_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    @property
    def names(self) -> list[str]:
        """Image names (file stems) in iteration order."""
        return [name for name, _, _ in self._pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[Sample]:
        return self.samples()

    def samples(self, names: set[str] | None = None) -> Iterator[Sample]:
        """Read the samples in iteration order, only those named in ``names`` when given."""
        for name, image_path, label_path in self._pairs:
            if names is None or name in names:
                yield self.read(name, image_path, label_path)

    def read(self, name: str, image_path: Path, label_path: Path) -> Sample:
        image = read_image_rgb(image_path)
        inst_map, type_map = self._read_label(label_path)
        for key, array in (("inst_map", inst_map), ("type_map", type_map)):
            if array is not None and array.shape != image.shape[:2]:
                raise InputError(f"{label_path}: '{key}' is {array.shape[0]}x{array.shape[1]} but the image "
                                 f"{image_path.name} is {image.shape[0]}x{image.shape[1]}")
        return Sample(name, image, inst_map, type_map)

    def _read_label(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


class ConsepReader(DatasetReader):
    """CoNSeP layout: ``Labels/<name>.mat`` with ``inst_map`` and ``type_map`` (both HxW integer), returned
    as stored; type merging is ``extract_patches.py``'s (:func:`merge_types`)."""

    kind = "consep"

    def _read_label(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        # One loadmat for both maps (misc.io.load_label_mat(with_types=True) would also insist on
        # inst_type/inst_centroid, which training labels need not have); same checks and messages as misc.io.
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            mat = scipy.io.loadmat(str(path), variable_names=["inst_map", "type_map"])
        except Exception as exc:  # scipy raises several unrelated types for corrupt files
            raise InputError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
        maps = []
        for key, hint in (("inst_map", ""), ("type_map", " (use --kind instance for instance-only labels)")):
            if key not in mat:
                raise InputError(f"{path}: missing key '{key}'{hint}")
            maps.append(check_integer_map(mat[key], path, f"'{key}'"))
        return maps[0], maps[1]


class InstanceReader(DatasetReader):
    """Instance-only sets: labels as ``.mat`` (``inst_map``), ``.npy``, or ``.png``/``.tif``/``.tiff`` maps.

    See the module docstring for the accepted encodings. ``type_map`` is always ``None``.
    """

    kind = "instance"
    label_suffixes = INSTANCE_LABEL_SUFFIXES

    def _read_label(self, path: Path) -> tuple[np.ndarray, None]:
        suffix = path.suffix.lower()
        if suffix == ".mat":
            return load_label_mat(path)["inst_map"], None
        if suffix == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: not a readable .npy file ({exc})") from exc
            if array.ndim == 3:
                array = array[..., 0]  # the published layout stacks (instance, type) on the last axis
        else:
            array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if array is None:
                raise InputError(f"{path}: not a readable label image")
            if array.ndim == 3:
                # a colour-coded map: every distinct non-black colour is one instance
                array = colour_instances_to_ids(cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB))
        return check_integer_map(array, path), None


# Dataset kind -> reader class; get_reader() is the one way to pick one.
READERS: dict[str, type[DatasetReader]] = {"consep": ConsepReader, "instance": InstanceReader}


def get_reader(kind: str, root: str | os.PathLike) -> DatasetReader:
    """The reader registered for ``kind`` ('consep' or 'instance') over the data set at ``root``."""
    if kind not in READERS:
        raise InputError(f"unknown dataset kind {kind!r}; choose one of {sorted(READERS)}")
    return READERS[kind](root)
