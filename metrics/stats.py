"""Instance segmentation and classification metrics of HoVer-Net (paper Sec. IV; spec section 7).

Instance metrics (per image): DICE1 (binary Dice), DICE2 (ensemble Dice), AJI, AJI+ and PQ = DQ x SQ.
Classification metrics (pooled over images): detection F1 (``f1_d``), classification accuracy of the
paired set (``acc``) and the per-type F1 ``Fc_t`` with weights (2, 2, 1, 1).

The values equal those of the published evaluation (vqdang/hover_net ``metrics/stats_utils.py`` and
``compute_stats.py``), re-derived rather than copied, with two differences that are documented where
they apply: cases where the published code divides by zero or crashes return a defined value, and
SQ is the exact mean IoU (the published code divides by ``TP + 1e-6``, a difference below 1e-6).

Speed: every instance metric is derived from one sparse contingency table (the pixel overlap of each
(true, pred) pair that overlaps at all), built in a single pass over the pixels with ``np.bincount``;
no per-instance mask is ever built. One-to-one optimal pairings (AJI+, PQ below IoU 0.5) run the
Hungarian algorithm separately on each connected component of the overlap graph, which gives the same
optimum as one assignment over the full matrix because pairs without overlap add nothing.

Instance maps are HxW arrays of non-negative integers (any integer or bool dtype), 0 background; ids
may be non-contiguous and in any order: they are relabelled 1..N in increasing id order first (as the
published ``remap_label`` does), so the results depend only on the partition of the pixels, up to
exact ties between equally good pairings, which are broken towards the lower id like the published
code. numpy/scipy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from misc.arrays import check_label_map, relabel_contiguous

__all__ = [
    "relabel_contiguous", "InstanceOverlap", "instance_overlap",
    "dice1", "dice2", "aji", "aji_plus", "pq", "PQResult", "instance_metrics", "INSTANCE_KEYS",
    "pair_coordinates", "TypePairing", "pair_types", "concat_pairings", "f1_type", "type_metrics",
    "UNTYPED_TRUTH",
]

#: Keys of :func:`instance_metrics`, in the order the CLI prints them.
INSTANCE_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")

# The published AJI/AJI+ rank candidate pairs by inter / (union + 1e-6); kept so that the choice between
# pairs with equal IoU but different sizes is the published one (the larger pair wins).
_AJI_IOU_EPS = 1.0e-6

# Above this many (n_true + 1) * (n_pred + 1) cells the dense bincount table would cost more memory than
# sorting the overlapping pixels; below it the dense table is the fastest single pass.
_DENSE_TABLE_MAX_CELLS = 1 << 23


# ----------------------------------------------------------------------------------------------------
# Relabelling and the shared contingency table
# ----------------------------------------------------------------------------------------------------
# relabel_contiguous (misc.arrays, re-exported here): HxW ids -> (HxW int64 ids 1..N in increasing order of
# the original ids, N); check_label_map: the project's one check of an HxW non-negative integer map.


@dataclass(frozen=True)
class InstanceOverlap:
    """Sparse contingency table of two relabelled instance maps (every pair with >= 1 shared pixel).

    Attributes:
        n_true, n_pred: instance counts N_t, N_p.
        true_area: (N_t,) int64 pixel count of true instance i + 1.
        pred_area: (N_p,) int64 pixel count of pred instance j + 1.
        pair_true, pair_pred: (E,) int64 0-based instance indices of the overlapping pairs, sorted by
            (true, pred).
        pair_inter: (E,) int64 shared pixel count of each pair (> 0).
    """

    n_true: int
    n_pred: int
    true_area: np.ndarray
    pred_area: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def pair_union(self) -> np.ndarray:
        """(E,) int64 union pixel count of each overlapping pair."""
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """(E,) float64 IoU in (0, 1] of each overlapping pair."""
        return self.pair_inter / self.pair_union


def instance_overlap(true: np.ndarray, pred: np.ndarray) -> InstanceOverlap:
    """Build the :class:`InstanceOverlap` of two HxW instance maps in one pass over the pixels.

    Both maps are relabelled with :func:`relabel_contiguous` first. Raises ``ValueError`` for maps of
    different shapes, non-2-D maps, non-integer dtypes or negative ids.
    """
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred shapes differ: {true.shape} vs {pred.shape}")
    true, n_true = relabel_contiguous(true)
    pred, n_pred = relabel_contiguous(pred)
    t_flat = true.ravel()
    p_flat = pred.ravel()
    true_area = np.bincount(t_flat, minlength=n_true + 1)[1:].astype(np.int64)
    pred_area = np.bincount(p_flat, minlength=n_pred + 1)[1:].astype(np.int64)
    n_cols = n_pred + 1
    if (n_true + 1) * n_cols <= _DENSE_TABLE_MAX_CELLS:
        table = np.bincount(t_flat * n_cols + p_flat, minlength=(n_true + 1) * n_cols)
        inter = table.reshape(n_true + 1, n_cols)[1:, 1:]
        pair_true, pair_pred = np.nonzero(inter)
        pair_inter = inter[pair_true, pair_pred]
    else:
        both = (t_flat > 0) & (p_flat > 0)
        keys, pair_inter = np.unique(t_flat[both] * n_cols + p_flat[both], return_counts=True)
        pair_true, pair_pred = keys // n_cols - 1, keys % n_cols - 1
    return InstanceOverlap(
        n_true=n_true, n_pred=n_pred, true_area=true_area, pred_area=pred_area,
        pair_true=pair_true.astype(np.int64), pair_pred=pair_pred.astype(np.int64),
        pair_inter=pair_inter.astype(np.int64))


def _max_weight_matching(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Edges of a maximum-weight one-to-one matching of a sparse bipartite graph (weights > 0).

    Equivalent to ``linear_sum_assignment`` on the dense matrix (zeros where no edge) followed by
    dropping zero-weight pairs, but solved per connected component, so 1,000+ instances cost
    milliseconds. Returns a boolean (E,) mask of the selected edges.
    """
    selected = np.zeros(len(rows), bool)
    if len(rows) == 0:
        return selected
    # Nodes: rows 0..R-1, then columns R..R+C-1, only those present in an edge.
    row_ids, row_node = np.unique(rows, return_inverse=True)
    col_ids, col_node = np.unique(cols, return_inverse=True)
    n_nodes = len(row_ids) + len(col_ids)
    graph = coo_matrix((np.ones(len(rows)), (row_node, col_node + len(row_ids))), shape=(n_nodes, n_nodes))
    _, node_comp = connected_components(graph, directed=False)
    edge_comp = node_comp[row_node]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    starts = np.concatenate([[0], bounds])
    sizes = np.diff(np.concatenate([starts, [len(order)]]))
    # A component with a single edge is its own matching: the common case, done without a loop.
    selected[order[starts[sizes == 1]]] = True
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        edges = order[start:start + size]
        local_r, r_idx = np.unique(rows[edges], return_inverse=True)
        local_c, c_idx = np.unique(cols[edges], return_inverse=True)
        block = np.zeros((len(local_r), len(local_c)))
        block[r_idx, c_idx] = weights[edges]
        sel_r, sel_c = linear_sum_assignment(block, maximize=True)
        lookup = np.full(block.shape, -1, np.int64)
        lookup[r_idx, c_idx] = edges
        chosen = lookup[sel_r, sel_c]
        chosen = chosen[chosen >= 0]
        selected[chosen[weights[chosen] > 0]] = True
    return selected


# ----------------------------------------------------------------------------------------------------
# Instance metrics from the shared table
# ----------------------------------------------------------------------------------------------------
class PQResult(NamedTuple):
    """Panoptic quality (paper Sec. IV-A): ``pq = dq * sq``; each a float in [0, 1]."""

    dq: float
    sq: float
    pq: float


def _dice1(ov: InstanceOverlap) -> float:
    denom = int(ov.true_area.sum() + ov.pred_area.sum())
    if denom == 0:  # both maps empty: identical, so perfect (the published code returns NaN)
        return 1.0
    return 2.0 * int(ov.pair_inter.sum()) / denom


def _dice2(ov: InstanceOverlap) -> float:
    if ov.n_true == 0 and ov.n_pred == 0:  # the published code raises ZeroDivisionError
        return 1.0
    if len(ov.pair_inter) == 0:  # nothing overlaps (also one map empty): no agreement at all
        return 0.0
    markup = int(ov.true_area[ov.pair_true].sum() + ov.pred_area[ov.pair_pred].sum())
    return 2.0 * int(ov.pair_inter.sum()) / markup


def _aji_from_pairs(ov: InstanceOverlap, chosen: np.ndarray) -> float:
    """Aggregated inter / aggregated union given the chosen pair indices into the edge arrays."""
    if ov.n_true == 0 and ov.n_pred == 0:  # the published code returns NaN (or crashes)
        return 1.0
    union = ov.pair_union
    paired_true = np.zeros(ov.n_true, bool)
    paired_true[ov.pair_true[chosen]] = True
    paired_pred = np.zeros(ov.n_pred, bool)
    paired_pred[ov.pair_pred[chosen]] = True
    # A pred chosen by several truths has its union counted once per pair, as in the published AJI.
    overall_inter = int(ov.pair_inter[chosen].sum())
    overall_union = (int(union[chosen].sum()) + int(ov.true_area[~paired_true].sum())
                     + int(ov.pred_area[~paired_pred].sum()))
    return overall_inter / overall_union


def _aji(ov: InstanceOverlap) -> float:
    if len(ov.pair_true) == 0:
        return _aji_from_pairs(ov, np.zeros(0, np.int64))
    iou = ov.pair_inter / (ov.pair_union + _AJI_IOU_EPS)
    # For each true instance the overlapping pred of highest IoU, ties to the lower pred id
    # (np.argmax's first occurrence in the published code); preds may be reused.
    order = np.lexsort((ov.pair_pred, -iou, ov.pair_true))
    first = np.ones(len(order), bool)
    first[1:] = ov.pair_true[order[1:]] != ov.pair_true[order[:-1]]
    return _aji_from_pairs(ov, order[first])


def _aji_plus(ov: InstanceOverlap) -> float:
    iou = ov.pair_inter / (ov.pair_union + _AJI_IOU_EPS)
    chosen = np.flatnonzero(_max_weight_matching(ov.pair_true, ov.pair_pred, iou))
    return _aji_from_pairs(ov, chosen)


def _pq(ov: InstanceOverlap, match_iou: float = 0.5) -> PQResult:
    if not 0.0 <= match_iou < 1.0:
        raise ValueError(f"match_iou must be in [0, 1), got {match_iou}")
    if ov.n_true == 0 and ov.n_pred == 0:  # the published code raises ZeroDivisionError
        return PQResult(1.0, 1.0, 1.0)
    iou = ov.pair_iou
    if match_iou >= 0.5:
        # IoU > 0.5 pairs are unique by construction (two such preds would share > half of one truth).
        matched = iou > match_iou
    else:
        matched = _max_weight_matching(ov.pair_true, ov.pair_pred, iou) & (iou > match_iou)
    tp = int(matched.sum())
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    # Exact mean IoU of the matches; 0 when nothing matched (the published code divides by TP + 1e-6).
    sq = float(iou[matched].sum() / tp) if tp else 0.0
    return PQResult(dq, sq, dq * sq)


def dice1(true: np.ndarray, pred: np.ndarray) -> float:
    """Binary Dice of the foregrounds (DICE1): ``2|T & P| / (|T| + |P|)`` in [0, 1].

    Args:
        true, pred: HxW non-negative integer instance maps (0 background), same shape.

    Returns 1.0 when both foregrounds are empty (published: NaN).
    """
    true = check_label_map(true, "true")
    pred = check_label_map(pred, "pred")
    if true.shape != pred.shape:
        raise ValueError(f"true and pred shapes differ: {true.shape} vs {pred.shape}")
    t_fg, p_fg = true > 0, pred > 0
    denom = int(np.count_nonzero(t_fg)) + int(np.count_nonzero(p_fg))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(t_fg & p_fg)) / denom


def dice2(true: np.ndarray, pred: np.ndarray) -> float:
    """Ensemble Dice (DICE2, paper Sec. IV-A), in [0, 1].

    Over every (true, pred) pair that overlaps: ``2 * sum |T_i & P_j| / sum (|T_i| + |P_j|)``; a split or a
    merge is penalised through the extra pairs. Returns 1.0 when both maps are empty (published:
    ZeroDivisionError) and 0.0 when no pair overlaps.
    """
    return _dice2(instance_overlap(true, pred))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017; paper Sec. IV-A), in [0, 1].

    Each true instance is paired with the overlapping pred of highest IoU (a pred may serve several
    truths; its pair union then counts several times); truths without overlap and preds never chosen
    add their area to the union. Returns 1.0 when both maps are empty (published: NaN or a crash),
    0.0 when one of them is.
    """
    return _aji(instance_overlap(true, pred))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (paper Sec. IV-A): AJI with a one-to-one pairing maximising the summed IoU (Hungarian).

    Unpaired truths and preds add their area to the union, so AJI+ does not over-penalise a pred that
    covers several truths. Same empty-map values as :func:`aji`.
    """
    return _aji_plus(instance_overlap(true, pred))


def pq(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> PQResult:
    """Panoptic quality (Kirillov et al. 2019; paper Sec. IV-A): ``(dq, sq, pq)``, each in [0, 1].

    Pairs matched at IoU > ``match_iou`` (unique for >= 0.5; below, a maximal-IoU one-to-one matching,
    as published). ``dq = TP / (TP + FP/2 + FN/2)``, ``sq`` = mean IoU of the matches (0.0 without a
    match), ``pq = dq * sq``. Both maps empty gives (1.0, 1.0, 1.0) (published: ZeroDivisionError).
    """
    return _pq(instance_overlap(true, pred), match_iou)


def instance_metrics(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> dict[str, float]:
    """All instance metrics of one image from one shared contingency table (spec section 7).

    Args:
        true, pred: HxW non-negative integer instance maps of the same shape, 0 background, any ids.
        match_iou: PQ matching threshold (published 0.5).

    Returns:
        ``{"dice", "aji", "aji_plus", "dq", "sq", "pq", "dice2"}`` -> float in [0, 1]; ``dice`` is DICE1.
        Empty cases as documented on each metric (both maps empty: all 1.0).
    """
    ov = instance_overlap(true, pred)
    dq, sq, pq_value = _pq(ov, match_iou)
    return {"dice": _dice1(ov), "aji": _aji(ov), "aji_plus": _aji_plus(ov),
            "dq": dq, "sq": sq, "pq": pq_value, "dice2": _dice2(ov)}


# ----------------------------------------------------------------------------------------------------
# Classification (paper Sec. IV-B): centroid pairing and the type F1 scores
# ----------------------------------------------------------------------------------------------------
def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must be Nx2 (x, y), got shape {points.shape}")
    return points


def pair_coordinates(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair true and predicted centroids one-to-one (paper Sec. IV-B).

    The Hungarian assignment minimising the summed Euclidean distance over *all* points (as published),
    after which pairs farther apart than ``radius`` are rejected (distance <= radius is kept).

    Args:
        true_xy: (N, 2) float (x, y) centroids; pred_xy: (M, 2); radius: pixels (12 at 40x, 6 at 20x).

    Returns:
        ``paired`` (K, 2) int64 rows (true index, pred index) sorted by true index; ``unpaired_true``
        and ``unpaired_pred``: int64 sorted indices of the points left over. Empty inputs are fine.
    """
    true_xy = _as_points(true_xy, "true_xy")
    pred_xy = _as_points(pred_xy, "pred_xy")
    if len(true_xy) and len(pred_xy):
        dist = cdist(true_xy, pred_xy, metric="euclidean")  # as released
        rows, cols = linear_sum_assignment(dist)
        keep = dist[rows, cols] <= radius
        rows, cols = rows[keep], cols[keep]
    else:
        rows = cols = np.zeros(0, np.int64)
    paired = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
    unpaired_true = np.setdiff1d(np.arange(len(true_xy)), rows).astype(np.int64)
    unpaired_pred = np.setdiff1d(np.arange(len(pred_xy)), cols).astype(np.int64)
    return paired, unpaired_true, unpaired_pred


class TypePairing(NamedTuple):
    """Types of paired and unpaired instances (int64 1-D arrays), poolable over images.

    ``paired_true[k]`` and ``paired_pred[k]`` are the true and predicted type of the k-th pair.
    """

    paired_true: np.ndarray
    paired_pred: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray


def pair_types(true_xy: np.ndarray, true_type: np.ndarray, pred_xy: np.ndarray, pred_type: np.ndarray,
               radius: float) -> TypePairing:
    """Pair one image's centroids (:func:`pair_coordinates`) and look up the types of each group.

    Args:
        true_xy, pred_xy: (N, 2) / (M, 2) (x, y) centroids, rounded to float32 first as the released evaluation
            does; true_type, pred_type: (N,) / (M,) integer types (Nx1 accepted); radius: pairing radius in
            pixels.
    """
    true_type = np.asarray(true_type).reshape(-1).astype(np.int64)
    pred_type = np.asarray(pred_type).reshape(-1).astype(np.int64)
    # The released run_nuclei_type_stat casts both centroid sets to float32 before pairing; near-ties between
    # candidates then resolve as they did there (one image of a point-label set paired differently otherwise).
    true_xy = _as_points(np.asarray(true_xy, np.float32), "true_xy")
    pred_xy = _as_points(np.asarray(pred_xy, np.float32), "pred_xy")
    if len(true_type) != len(true_xy) or len(pred_type) != len(pred_xy):
        raise ValueError("each centroid needs exactly one type")
    paired, unpaired_true, unpaired_pred = pair_coordinates(true_xy, pred_xy, radius)
    return TypePairing(true_type[paired[:, 0]], pred_type[paired[:, 1]],
                       true_type[unpaired_true], pred_type[unpaired_pred])


def concat_pairings(pairings: list[TypePairing]) -> TypePairing:
    """Pool the pairings of several images (the paper pools all images before scoring)."""
    empty = np.zeros(0, np.int64)
    return TypePairing(*(np.concatenate([empty, *(getattr(p, f) for p in pairings)]).astype(np.int64)
                         for f in TypePairing._fields))


UNTYPED_TRUTH = (-1, 0)  # truth types of an untyped nucleus when the truth is not exhaustively typed


def _typed_pairs(pairing: TypePairing, exhaustive: bool) -> np.ndarray:
    """Bool mask of the pairs whose truth carries a type (all of them when ``exhaustive``)."""
    if exhaustive:
        return np.ones(len(pairing.paired_true), bool)
    return ~np.isin(pairing.paired_true, UNTYPED_TRUTH)


def f1_type(pairing: TypePairing, type_id: int, weights: tuple[float, ...] = (2, 2, 1, 1),
            exhaustive: bool = True) -> float:
    """Per-type F1 ``Fc_t`` (paper Sec. IV-B, published weights (2, 2, 1, 1)), in [0, 1].

    ``Fc_t = 2(TPc + TNc) / (2(TPc + TNc) + w0 FPc + w1 FNc + w2 FPd + w3 FNd)`` over the pairs whose
    true or predicted type is ``t`` (TPc: both t; TNc: neither, always 0 there, kept for the formula;
    FPc: only pred t; FNc: only true t), with FPd / FNd the unpaired predictions / truths of type t.
    Returns 1.0 when type t occurs nowhere (0/0; published: NaN).

    ``exhaustive=False`` (truth not exhaustively typed, e.g. CRCHisto): a pair whose truth type is -1
    or 0 (an untyped nucleus) is left out of FPc, as the released
    ``run_nuclei_type_stat(..., exhaustive=False)`` subtracts its ``-1`` pairs from FPc.
    """
    in_t = ((pairing.paired_true == type_id) | (pairing.paired_pred == type_id)) & _typed_pairs(pairing, exhaustive)
    p_true, p_pred = pairing.paired_true[in_t], pairing.paired_pred[in_t]
    tp_c = int(((p_true == type_id) & (p_pred == type_id)).sum())
    tn_c = int(((p_true != type_id) & (p_pred != type_id)).sum())
    fp_c = int(((p_true != type_id) & (p_pred == type_id)).sum())
    fn_c = int(((p_true == type_id) & (p_pred != type_id)).sum())
    fp_d = int((pairing.unpaired_pred == type_id).sum())
    fn_d = int((pairing.unpaired_true == type_id).sum())
    good = 2 * (tp_c + tn_c)
    denom = good + weights[0] * fp_c + weights[1] * fn_c + weights[2] * fp_d + weights[3] * fn_d
    return 1.0 if denom == 0 else good / denom


def type_metrics(pairing: TypePairing, type_ids: list[int] | None = None, exhaustive: bool = True) -> dict:
    """Detection and classification scores of a (pooled) pairing (paper Sec. IV-B, Table III).

    Returns ``{"f1_d": float, "acc": float, "f1_type": {type id (int): float}}``:
    ``f1_d = 2TP / (2TP + FP + FN)`` over detections; ``acc`` = fraction of pairs whose types agree;
    ``f1_type`` from :func:`f1_type` for ``type_ids`` (default: the types present in the truth, sorted).
    Empty cases: no truth and no prediction at all gives ``f1_d`` 1.0 and ``acc`` 1.0; no pair while
    something was detected or missed leaves ``acc`` undefined: NaN (as published), not 0.

    ``exhaustive=False``: truth types -1 and 0 mark untyped nuclei (point sets typed only in part, paper
    Table V / CRCHisto). They count for detection (``f1_d``) but not for classification: pairs with an
    untyped truth leave the ``acc`` denominator and every FPc (the released ``exhaustive=False``), and
    the default ``type_ids`` leave out -1 and 0.
    """
    n_pair = len(pairing.paired_true)
    n_fp, n_fn = len(pairing.unpaired_pred), len(pairing.unpaired_true)
    nothing = n_pair + n_fp + n_fn == 0
    f1_d = 1.0 if nothing else 2 * n_pair / (2 * n_pair + n_fp + n_fn)
    typed = _typed_pairs(pairing, exhaustive)
    n_typed = int(typed.sum())
    if n_typed:
        acc = int((pairing.paired_true[typed] == pairing.paired_pred[typed]).sum()) / n_typed
    else:
        acc = 1.0 if nothing else float("nan")  # an accuracy over no pairs is undefined
    if type_ids is None:
        type_ids = np.unique(np.concatenate([pairing.paired_true, pairing.unpaired_true])).tolist()
        if not exhaustive:
            type_ids = [t for t in type_ids if t not in UNTYPED_TRUTH]
    return {"f1_d": f1_d, "acc": acc,
            "f1_type": {int(t): f1_type(pairing, int(t), exhaustive=exhaustive) for t in type_ids}}
