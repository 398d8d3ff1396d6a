"""Large images in overlapping blocks: the grid of cores and margins, which block keeps a nucleus, and the merge.

Shared by the two paths that cut an image too large to post-process at once: whole slides (``src/infer/slides.py``, one
block per Dask task, read from the slide with its margin) and tiles larger than ``INFER.BLOCK_SIZE``
(``src/infer/tiles.py``). The image is cut into square *cores* (:func:`block_grid`), which partition it; each is
processed with a *margin* of context on every side (its *region*), and a nucleus is kept only by the block whose
core contains its centroid (:func:`owned_ids`), so no nucleus is lost or counted twice at a border. The margin
must hold the widest nucleus and the Sobel kernel beyond it (:func:`nucleus_margin`); a slide also needs room
for the windows that see reflected pixels at a region's edge (``src.infer.slides.tile_margin``), a tile in memory does
not: its windows are predicted once, over the cores, and read the tile's own pixels across their edges
(``src.infer.windows.predict_tile`` ``region``; ``src.infer.tiles.segment_in_blocks``).

:func:`merge_block` paints a block's kept nuclei into the label map of the whole image. Two kept nuclei of
neighbouring blocks can claim the same pixels where the blocks segmented a nucleus at the seam differently;
such a pixel stays with the nucleus painted first (the earlier block, row-major), and a nucleus that lost pixels
gets its box, centroid and contour recomputed from what it kept (one that lost all of them is dropped). The
nuclei of all blocks are kept in a :class:`NucleusTable`, a few arrays instead of a dict of small arrays each.

Pure numpy; no TensorFlow.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from src.maps.postproc import instance_info

__all__ = ["Block", "nucleus_margin", "block_core", "block_grid", "owned_ids", "merge_block", "NucleusTable"]


@dataclass(frozen=True)
class Block:
    """One block, in image px: ``core`` and ``region`` (the core with its margin, clipped to the image) as
    (y0, x0, y1, x1), end exclusive; ``row``, ``col`` its place in the grid."""

    row: int
    col: int
    core: tuple[int, int, int, int]
    region: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        return f"{self.row}_{self.col}"


def nucleus_margin(output_shape: int, max_nucleus_px: int, sobel_ksize: int) -> int:
    """Context (px) a core needs on every side for post-processing to see its nuclei whole: the widest nucleus
    plus half the Sobel kernel, rounded up to whole network outputs (160 px for 80-px outputs, 164 for 164, with
    80-px nuclei and the 21-px Sobel), so that blocks start on the window grid."""
    return math.ceil((max_nucleus_px + sobel_ksize // 2) / output_shape) * output_shape


def block_core(block_size: int, margin: int, output_shape: int) -> int:
    """Core side (px) of blocks whose region is at most ``block_size`` px: ``block_size - 2 * margin`` rounded
    down to whole outputs, at least one output (then the region exceeds ``block_size``)."""
    return max(output_shape, (block_size - 2 * margin) // output_shape * output_shape)


def block_grid(height: int, width: int, core: int, margin: int) -> list[Block]:
    """Every block of an ``height`` x ``width`` image, row-major: cores of ``core`` px (the last row and column
    clipped to the image) and regions ``margin`` px larger on every side, clipped to the image."""
    blocks = []
    for row in range(math.ceil(height / core)):
        for col in range(math.ceil(width / core)):
            y0, x0 = row * core, col * core
            y1, x1 = min(height, y0 + core), min(width, x0 + core)
            region = (max(0, y0 - margin), max(0, x0 - margin), min(height, y1 + margin), min(width, x1 + margin))
            blocks.append(Block(row, col, (y0, x0, y1, x1), region))
    return blocks


def owned_ids(inst_info: Mapping, block: Block) -> list[int]:
    """Ids of the nuclei of ``inst_info`` (found in ``block``'s region, region coordinates) whose centroid lies
    in the block's core: the ones this block keeps. The cores partition the image, so every nucleus is kept by
    exactly one block. Ids in ``inst_info``'s order."""
    ry0, rx0 = block.region[:2]
    cy0, cx0, cy1, cx1 = block.core
    kept = []
    for inst_id, info in inst_info.items():
        x, y = info["centroid"][0] + rx0, info["centroid"][1] + ry0
        if cy0 <= y < cy1 and cx0 <= x < cx1:
            kept.append(inst_id)
    return kept


def _shifted(info: Mapping, dy: int, dx: int) -> dict:
    """A nucleus of region coordinates moved by (dy, dx) px onto the image."""
    return {**info, "bbox": np.asarray(info["bbox"]) + np.array([dy, dx], dtype=np.int32),
            "centroid": np.asarray(info["centroid"], np.float64) + [dx, dy],
            "contour": np.asarray(info["contour"]) + np.array([dx, dy], dtype=np.int32)}


def merge_block(labels: np.ndarray, block_map: np.ndarray, inst_info: Mapping, block: Block,
                first_id: int) -> dict[int, dict]:
    """Paint the nuclei ``block`` keeps into ``labels`` and return them under their new ids, in image coordinates.

    Args:
        labels: the region's view of the whole image's HxW integer label map (written in place; 0 = free).
        block_map: the region's instance map from post-processing (ids 1..n, region coordinates).
        inst_info: id -> nucleus of ``block_map`` (:func:`src.maps.postproc.process`).
        block: where the region lies (its core decides ownership, :func:`owned_ids`).
        first_id: id of the first kept nucleus; the others follow in ``inst_info`` order.

    A pixel already labelled (by an earlier block's nucleus) keeps its label; a kept nucleus that could claim
    none of its pixels is dropped, one that lost some gets bbox, centroid and contour recomputed from the pixels
    it got (type and type_prob stay the block's vote). Returns new id -> nucleus dict (as ``inst_info``'s).
    """
    if labels.shape != block_map.shape:
        raise ValueError(f"labels {labels.shape} and block_map {block_map.shape} differ in shape")
    n = int(block_map.max(initial=0))
    owned = np.zeros(n + 1, dtype=bool)
    owned[owned_ids(inst_info, block)] = True
    claim = owned[block_map] & (labels == 0)
    wanted = np.bincount(block_map.ravel(), minlength=n + 1)
    got = np.bincount(block_map[claim], minlength=n + 1)
    new_id = np.zeros(n + 1, dtype=np.int64)
    kept = [i for i in inst_info if owned[i] and got[i] > 0]
    new_id[kept] = np.arange(first_id, first_id + len(kept))
    labels[claim] = new_id[block_map[claim]]
    dy, dx = block.region[:2]
    merged = {}
    for inst_id in kept:
        info = inst_info[inst_id]
        if got[inst_id] < wanted[inst_id]:  # lost pixels to an earlier block's nucleus: describe what it kept
            (r0, c0), (r1, c1) = np.asarray(info["bbox"])
            crop = (labels[r0:r1, c0:c1] == new_id[inst_id]).astype(np.int32)
            info = {**_shifted(instance_info(crop)[1], int(r0), int(c0)),
                    "type": info["type"], "type_prob": info["type_prob"]}
        merged[int(new_id[inst_id])] = _shifted(info, dy, dx)
    return merged


class NucleusTable(Mapping):
    """id -> nucleus dict (``bbox``, ``centroid``, ``contour``, ``type``, ``type_prob``, as
    :func:`src.maps.postproc.process` returns them) for the many nuclei of a large image, ids 1..N.

    A dict of small arrays costs about 840 bytes a nucleus in Python objects (90 MB for the 95,000 nuclei of a
    12000x12000 tile); here the nuclei are rows of a few arrays per :meth:`add` (about 50 bytes plus 8 a contour
    point) and each dict is made when it is read, which is all the output writers do.
    """

    def __init__(self):
        self._first: list[int] = []  # first id of each added group
        self._groups: list[tuple] = []  # (bbox n x 2 x 2, centroid n x 2, contour points, offsets, type, type_prob)
        self._count = 0

    def add(self, nuclei: Mapping[int, dict]) -> None:
        """Append ``nuclei``, whose ids must be ``len(self) + 1, len(self) + 2, ...`` in this order."""
        ids = list(nuclei)
        if ids != list(range(self._count + 1, self._count + 1 + len(ids))):
            raise ValueError(f"ids must continue from {self._count + 1} in order, got {ids[:3]}...")
        if not ids:
            return
        infos = [nuclei[i] for i in ids]
        contours = [np.asarray(info["contour"], np.int32).reshape(-1, 2) for info in infos]
        self._groups.append((
            np.array([np.asarray(info["bbox"]) for info in infos], np.int32).reshape(-1, 2, 2),
            np.array([np.asarray(info["centroid"], np.float64) for info in infos]).reshape(-1, 2),
            np.concatenate(contours), np.cumsum([0] + [len(c) for c in contours]),
            np.array([-1 if info["type"] is None else info["type"] for info in infos], np.int64),  # -1: None
            np.array([np.nan if info["type_prob"] is None else info["type_prob"] for info in infos], np.float64)))
        self._first.append(self._count + 1)
        self._count += len(ids)

    def __getitem__(self, inst_id) -> dict:
        if isinstance(inst_id, bool) or not isinstance(inst_id, int | np.integer) or not 1 <= inst_id <= self._count:
            raise KeyError(inst_id)
        group = bisect.bisect_right(self._first, inst_id) - 1
        bbox, centroid, points, offsets, types, probs = self._groups[group]
        k = int(inst_id) - self._first[group]
        return {"bbox": bbox[k], "centroid": centroid[k], "contour": points[offsets[k]:offsets[k + 1]],
                "type": None if types[k] < 0 else int(types[k]),
                "type_prob": None if np.isnan(probs[k]) else float(probs[k])}

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, self._count + 1))

    def __len__(self) -> int:
        return self._count
