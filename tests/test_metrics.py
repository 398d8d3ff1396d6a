"""Tests of metrics/stats.py: the paper's Table I, hand-computed cases, edge cases, id invariance, a
per-instance reference implementation on random maps, and the classification scores."""
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from metrics import stats
from metrics.stats import (
    TypePairing,
    aji,
    aji_plus,
    concat_pairings,
    dice1,
    dice2,
    f1_type,
    instance_metrics,
    instance_overlap,
    pair_coordinates,
    pair_types,
    pq,
    relabel_contiguous,
    type_metrics,
)
from misc.io import colour_instances_to_ids, read_image_rgb

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "metrics_sample"
ALL_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq", "dice2")


def _row(*values):
    """A 1xN instance map: enough for hand arithmetic, pixel counts are the run lengths."""
    return np.array([values], dtype=np.int32)


# ----------------------------------------------------------------------------------------------------
# (a) Table I of the paper from the Fig. 4 maps
# ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason=f"Fig. 4 sample maps not found at {SAMPLE_DIR}")
@pytest.mark.parametrize("name, expected", [
    ("pred_1.png", {"dice2": 0.6477, "aji": 0.4790, "pq": 0.6803}),  # prediction A
    ("pred_2.png", {"dice2": 0.9007, "aji": 0.6414, "pq": 0.6863}),  # prediction B
])
def test_table_1_from_fig_4(name, expected):
    true = colour_instances_to_ids(read_image_rgb(SAMPLE_DIR / "true.png"))
    pred = colour_instances_to_ids(read_image_rgb(SAMPLE_DIR / name))
    got = instance_metrics(true, pred)
    for key, value in expected.items():
        assert abs(got[key] - value) < 5e-5, (key, got[key], value)


# ----------------------------------------------------------------------------------------------------
# (b) hand-computed cases
# ----------------------------------------------------------------------------------------------------
def test_hand_case_match_miss_and_false_positive():
    true = _row(1, 1, 1, 1, 0, 2, 2, 2, 2, 0, 3, 3, 0, 0, 0)
    pred = _row(5, 5, 5, 5, 0, 0, 7, 7, 7, 7, 0, 0, 0, 9, 9)
    # T1-P5: inter 4, union 4, IoU 1.   T2-P7: inter 3 (cols 6-8), union 5 (cols 5-9), IoU 0.6.
    # T3 (2 px) and P9 (2 px) overlap nothing.
    got = instance_metrics(true, pred)
    # DICE1: fg 10 and 10, shared 4 + 3 = 7 -> 2*7 / 20 = 0.7
    assert got["dice"] == pytest.approx(0.7, abs=1e-15)
    # DICE2: pairs (T1,P5) 4 / (4+4), (T2,P7) 3 / (4+4) -> 2*7 / 16 = 0.875
    assert got["dice2"] == pytest.approx(0.875, abs=1e-15)
    # AJI: inter 4 + 3 = 7; union 4 + 5 + |T3| 2 + |P9| 2 = 13 -> 7/13; AJI+ pairs the same
    assert got["aji"] == pytest.approx(7 / 13, abs=1e-15)
    assert got["aji_plus"] == pytest.approx(7 / 13, abs=1e-15)
    # PQ: TP 2, FP 1, FN 1 -> DQ 2 / (2 + 0.5 + 0.5) = 2/3; SQ (1 + 0.6) / 2 = 0.8; PQ 8/15
    assert got["dq"] == pytest.approx(2 / 3, abs=1e-15)
    assert got["sq"] == pytest.approx(0.8, abs=1e-15)
    assert got["pq"] == pytest.approx(8 / 15, abs=1e-15)


def test_hand_case_one_truth_split_in_two():
    true = _row(1, 1, 1, 1, 1).repeat(2, axis=0)  # 2x5 block, 10 px
    pred = _row(1, 1, 1, 2, 2).repeat(2, axis=0)  # P1 2x3 = 6 px, P2 2x2 = 4 px
    got = instance_metrics(true, pred)
    assert got["dice"] == 1.0  # same foreground
    # DICE2: (T,P1) 6 / (10+6), (T,P2) 4 / (10+4) -> 2*10 / 30 = 2/3
    assert got["dice2"] == pytest.approx(2 / 3, abs=1e-15)
    # AJI: T takes P1 (IoU 0.6 > 0.4): inter 6, union 10, plus unpaired P2 4 -> 6/14 = 3/7
    assert got["aji"] == pytest.approx(3 / 7, abs=1e-15)
    assert got["aji_plus"] == pytest.approx(3 / 7, abs=1e-15)
    # PQ: IoU 0.6 > 0.5 so TP 1, FP 1 (P2), FN 0 -> DQ 1/1.5 = 2/3, SQ 0.6, PQ 0.4
    assert got["dq"] == pytest.approx(2 / 3, abs=1e-15)
    assert got["sq"] == pytest.approx(0.6, abs=1e-15)
    assert got["pq"] == pytest.approx(0.4, abs=1e-15)


def test_hand_case_two_truths_merged():
    true = _row(1, 1, 1, 0, 2, 2, 2).repeat(2, axis=0)  # T1, T2: 6 px each, a background gap
    pred = _row(4, 4, 4, 4, 4, 4, 4).repeat(2, axis=0)  # one pred over both: 14 px
    got = instance_metrics(true, pred)
    # DICE1: shared 12 -> 2*12 / (12 + 14) = 12/13
    assert got["dice"] == pytest.approx(12 / 13, abs=1e-15)
    # DICE2: (T1,P) 6 / (6+14), (T2,P) 6 / (6+14) -> 2*12 / 40 = 0.6
    assert got["dice2"] == pytest.approx(0.6, abs=1e-15)
    # AJI: both truths reuse P (IoU 6/14 each): inter 12, union 14 + 14 = 28 -> 3/7 (over-penalised)
    assert got["aji"] == pytest.approx(3 / 7, abs=1e-15)
    # AJI+: one-to-one, P goes to one truth: inter 6, union 14 + the other truth 6 = 20 -> 0.3
    assert got["aji_plus"] == pytest.approx(0.3, abs=1e-15)
    # PQ: IoU 6/14 < 0.5 -> TP 0, FP 1, FN 2: everything 0
    assert (got["dq"], got["sq"], got["pq"]) == (0.0, 0.0, 0.0)


def test_hand_case_aji_tie_broken_like_published():
    true = _row(0, 1, 1, 1, 1, 1, 0, 0, 0, 0)  # T: 5 px (cols 1-5)
    pred = _row(1, 1, 1, 2, 2, 2, 2, 2, 2, 2)  # P1: 3 px (cols 0-2), P2: 7 px (cols 3-9)
    # (T,P1): inter 2, union 6, IoU 1/3.  (T,P2): inter 3, union 9, IoU 1/3: an exact tie.
    # The published ranking inter / (union + 1e-6) prefers the larger pair P2:
    # AJI = 3 / (9 + |P1| 3) = 0.25 (choosing P1 would give 2 / (6 + 7) = 2/13).
    assert aji(true, pred) == pytest.approx(0.25, abs=1e-15)
    assert aji_plus(true, pred) == pytest.approx(0.25, abs=1e-15)
    # DICE2: 2 * (2 + 3) / ((5+3) + (5+7)) = 0.5; DICE1: 2*5 / (5 + 10) = 2/3
    assert dice2(true, pred) == pytest.approx(0.5, abs=1e-15)
    assert dice1(true, pred) == pytest.approx(2 / 3, abs=1e-15)
    # PQ: no IoU > 0.5: TP 0, FP 2, FN 1 -> 0
    assert pq(true, pred) == (0.0, 0.0, 0.0)


def test_hand_case_aji_plus_hungarian_beats_greedy():
    true = _row(1, 1, 1, 1, 2, 2, 2, 2)
    pred = _row(3, 3, 3, 4, 4, 4, 4, 4)
    # (T1,P3): inter 3, union 4, IoU 0.75.  (T1,P4): inter 1, union 8.  (T2,P4): inter 4, union 5, IoU 0.8.
    # AJI: T1->P3, T2->P4: inter 7, union 9 -> 7/9; AJI+ pairs the same one-to-one.
    assert aji(true, pred) == pytest.approx(7 / 9, abs=1e-15)
    assert aji_plus(true, pred) == pytest.approx(7 / 9, abs=1e-15)
    # PQ at IoU 0.5: both pairs match: DQ 1, SQ (0.75 + 0.8) / 2 = 0.775
    assert pq(true, pred) == pytest.approx((1.0, 0.775, 0.775), abs=1e-15)


def test_pq_below_half_uses_one_to_one_matching():
    true = _row(1, 1, 1, 1, 1, 1, 0, 0)
    pred = _row(2, 2, 2, 3, 3, 3, 3, 3)
    # (T,P2): IoU 3/6 = 0.5; (T,P3): inter 3, union 6 + 5 - 3 = 8, IoU 0.375.
    # match_iou 0.3: the matching keeps one pair, the higher IoU 0.5: TP 1, FP 1, FN 0 -> DQ 2/3, SQ 0.5
    assert pq(true, pred, match_iou=0.3) == pytest.approx((2 / 3, 0.5, 1 / 3), abs=1e-15)
    # match_iou 0.5: IoU 0.5 is not > 0.5 -> nothing matched
    assert pq(true, pred) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        pq(true, pred, match_iou=1.0)


# ----------------------------------------------------------------------------------------------------
# (c) edge cases
# ----------------------------------------------------------------------------------------------------
def _two_discs():
    yy, xx = np.mgrid[:32, :32]
    inst = np.zeros((32, 32), np.int32)
    inst[(yy - 10) ** 2 + (xx - 10) ** 2 < 36] = 3
    inst[(yy - 20) ** 2 + (xx - 22) ** 2 < 49] = 8
    return inst


def test_identical_maps_score_one():
    inst = _two_discs()
    assert instance_metrics(inst, inst) == {k: 1.0 for k in ALL_KEYS}


def test_single_identical_instance_scores_one():
    inst = np.zeros((5, 5), np.int32)
    inst[1:3, 1:4] = 42
    assert instance_metrics(inst, inst) == {k: 1.0 for k in ALL_KEYS}


@pytest.mark.parametrize("which", ["empty_pred", "empty_true"])
def test_one_empty_map_scores_zero(which):
    inst, empty = _two_discs(), np.zeros((32, 32), np.int32)
    true, pred = (inst, empty) if which == "empty_pred" else (empty, inst)
    assert instance_metrics(true, pred) == {k: 0.0 for k in ALL_KEYS}


def test_both_empty_is_perfect():
    empty = np.zeros((7, 9), np.uint8)
    # The published code returns NaN or divides by zero here; identical (empty) maps are documented as 1.0.
    assert instance_metrics(empty, empty) == {k: 1.0 for k in ALL_KEYS}
    assert (dice1(empty, empty), dice2(empty, empty), aji(empty, empty), aji_plus(empty, empty)) == (1, 1, 1, 1)
    assert pq(empty, empty) == (1.0, 1.0, 1.0)


def test_disjoint_maps_score_zero():
    true = _row(1, 1, 0, 0)
    pred = _row(0, 0, 2, 2)
    assert instance_metrics(true, pred) == {k: 0.0 for k in ALL_KEYS}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        instance_metrics(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="negative"):
        instance_metrics(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer"):
        instance_metrics(np.zeros((2, 2), float), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="2-D"):
        relabel_contiguous(np.zeros((2, 2, 2), int))


# ----------------------------------------------------------------------------------------------------
# (d) invariance to the id values
# ----------------------------------------------------------------------------------------------------
def test_relabel_contiguous_keeps_partition_and_order():
    inst = np.array([[0, 40, 40], [7, 7, 0], [1000, 0, 40]])
    out, n = relabel_contiguous(inst)
    assert n == 3
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 1, 0], [3, 0, 2]])
    huge = inst.astype(np.int64) * 10**12  # sparse ids beyond a lookup table take the sorting path
    out_huge, n_huge = relabel_contiguous(huge)
    assert n_huge == 3
    np.testing.assert_array_equal(out_huge, out)


def test_metrics_invariant_to_id_permutation_and_gaps():
    rng = np.random.default_rng(0)
    for _ in range(5):
        true, pred = _random_pair(rng, 40, 12, 14)
        base = instance_metrics(true, pred)
        for inst_map_dtype in (np.int32, np.uint16, np.int64):
            t_ids = rng.permutation(int(true.max()) + 1)[1:] * 17 + 5  # shuffled, sparse, no 0
            p_ids = rng.permutation(int(pred.max()) + 1)[1:] * 3 + 1
            t_lut = np.concatenate([[0], t_ids]).astype(inst_map_dtype)
            p_lut = np.concatenate([[0], p_ids]).astype(inst_map_dtype)
            got = instance_metrics(t_lut[true], p_lut[pred])
            for key in ALL_KEYS:
                assert abs(got[key] - base[key]) < 1e-12, key
        # swapping which of the two maps holds which ids changes nothing either
        assert instance_metrics(true * 2, pred * 5) == base


# ----------------------------------------------------------------------------------------------------
# (e) the fast implementation equals a per-instance-mask reference written from the published definitions
# ----------------------------------------------------------------------------------------------------
def _reference_metrics(true, pred, match_iou=0.5):
    """One boolean mask per instance, dense pairwise matrices, the published formulas step by step.

    Empty-map conventions are those documented in metrics/stats.py; SQ is the exact mean IoU.
    """
    t_ids = sorted(set(np.unique(true).tolist()) - {0})
    p_ids = sorted(set(np.unique(pred).tolist()) - {0})
    t_masks = [true == i for i in t_ids]
    p_masks = [pred == i for i in p_ids]
    inter = np.array([[np.sum(t & p) for p in p_masks] for t in t_masks], float).reshape(len(t_ids), len(p_ids))
    union = np.array([[np.sum(t | p) for p in p_masks] for t in t_masks], float).reshape(len(t_ids), len(p_ids))
    t_area = np.array([m.sum() for m in t_masks], float)
    p_area = np.array([m.sum() for m in p_masks], float)
    out = {}
    t_fg, p_fg = true > 0, pred > 0
    if not t_ids and not p_ids:
        return {k: 1.0 for k in ALL_KEYS}
    out["dice"] = 2 * np.sum(t_fg & p_fg) / (t_fg.sum() + p_fg.sum())
    # DICE2 over every overlapping pair
    overlap = inter > 0
    markup = (t_area[:, None] + p_area[None, :])[overlap].sum()
    out["dice2"] = 2 * inter[overlap].sum() / markup if markup else 0.0
    iou_eps = inter / (union + 1e-6)

    def aggregated(rows, cols):
        keep = inter[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
        extra = np.delete(t_area, rows).sum() + np.delete(p_area, np.unique(cols)).sum()
        return inter[rows, cols].sum() / (union[rows, cols].sum() + extra)

    if p_ids and t_ids:
        out["aji"] = aggregated(np.arange(len(t_ids)), np.argmax(iou_eps, axis=1))
        out["aji_plus"] = aggregated(*linear_sum_assignment(-iou_eps))
    else:
        out["aji"] = out["aji_plus"] = 0.0
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if match_iou >= 0.5:
        rows, cols = np.nonzero(iou > match_iou)
    else:
        rows, cols = linear_sum_assignment(-iou) if iou.size else (np.zeros(0, int), np.zeros(0, int))
        keep = iou[rows, cols] > match_iou
        rows, cols = rows[keep], cols[keep]
    tp = len(rows)
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    sq = iou[rows, cols].sum() / tp if tp else 0.0
    out.update(dq=dq, sq=sq, pq=dq * sq)
    return out


def _random_pair(rng, size, n_true, n_pred):
    """A truth of random rectangles (later ones overwrite earlier ones) and a prediction that is a noisy
    copy: shifted, with some instances split, merged, dropped, and a few extra rectangles."""
    true = np.zeros((size, size), np.int32)
    for i in range(1, n_true + 1):
        y, x = rng.integers(0, size - 3, 2)
        h, w = rng.integers(2, 9, 2)
        true[y:y + h, x:x + w] = i
    pred = np.roll(true, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)).copy()
    next_id = n_true + 1
    for i in np.unique(pred)[1:]:
        fate = rng.random()
        ys, xs = np.nonzero(pred == i)
        if fate < 0.15:  # dropped
            pred[ys, xs] = 0
        elif fate < 0.3:  # split along the x median
            right = xs > np.median(xs)
            pred[ys[right], xs[right]] = next_id
            next_id += 1
        elif fate < 0.45:  # merged into another instance id
            pred[ys, xs] = rng.integers(1, n_true + 1)
    for _ in range(n_pred - n_true):
        y, x = rng.integers(0, size - 3, 2)
        pred[y:y + rng.integers(2, 6), x:x + rng.integers(2, 6)] = next_id
        next_id += 1
    return true, pred


@pytest.mark.parametrize("seed", range(6))
def test_fast_equals_per_instance_reference(seed):
    rng = np.random.default_rng(seed)
    for size, n_true, n_pred in [(24, 6, 8), (40, 15, 18), (48, 30, 30), (16, 1, 2), (20, 0, 3), (20, 4, 4)]:
        true, pred = _random_pair(rng, size, n_true, n_pred)
        for match_iou in (0.5, 0.3):
            got = instance_metrics(true, pred, match_iou=match_iou)
            ref = _reference_metrics(true, pred, match_iou=match_iou)
            for key in ALL_KEYS:
                assert abs(got[key] - ref[key]) < 1e-9, (seed, size, match_iou, key, got[key], ref[key])
        # and against an independent pred drawn from scratch, where pairings are messier
        other, _ = _random_pair(rng, size, n_pred, n_pred)
        got, ref = instance_metrics(true, other), _reference_metrics(true, other)
        for key in ALL_KEYS:
            assert abs(got[key] - ref[key]) < 1e-9, (seed, size, key, got[key], ref[key])


def test_overlap_table_counts():
    true = _row(0, 3, 3, 9, 9, 9)
    pred = _row(1, 1, 2, 2, 2, 0)
    ov = instance_overlap(true, pred)
    assert (ov.n_true, ov.n_pred) == (2, 2)
    np.testing.assert_array_equal(ov.true_area, [2, 3])
    np.testing.assert_array_equal(ov.pred_area, [2, 3])
    # T(3)-P(1) share col 1, T(3)-P(2) col 2, T(9)-P(2) cols 3-4
    np.testing.assert_array_equal(np.stack([ov.pair_true, ov.pair_pred, ov.pair_inter]), [[0, 0, 1], [0, 1, 1],
                                                                                           [1, 1, 2]])
    np.testing.assert_array_equal(ov.pair_union, [3, 4, 4])


# ----------------------------------------------------------------------------------------------------
# (f) classification: centroid pairing and the type scores
# ----------------------------------------------------------------------------------------------------
def test_pair_coordinates_within_radius():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]])
    pred = np.array([[1.0, 0.0], [10.0, 13.0], [50.0, 50.0]])
    # Distances: t0-p0 1, t1-p1 13, t2-p2 70.7; swapping t0/t1 costs 16.4 + 9 > 1 + 13, so the
    # assignment is the diagonal; only t0-p0 lies within 12 px.
    paired, unpaired_true, unpaired_pred = pair_coordinates(true, pred, 12)
    np.testing.assert_array_equal(paired, [[0, 0]])
    np.testing.assert_array_equal(unpaired_true, [1, 2])
    np.testing.assert_array_equal(unpaired_pred, [1, 2])
    # exactly on the radius is kept (distance <= radius, as published)
    paired, _, _ = pair_coordinates([[0, 0]], [[12, 0]], 12)
    np.testing.assert_array_equal(paired, [[0, 0]])
    paired, _, _ = pair_coordinates([[0, 0]], [[12.001, 0]], 12)
    assert paired.shape == (0, 2)


def test_pair_coordinates_one_to_one_and_empty():
    # two truths compete for one prediction: the closer one gets it (Hungarian on distance)
    paired, unpaired_true, unpaired_pred = pair_coordinates([[0, 0], [5, 0]], [[4, 0]], 12)
    np.testing.assert_array_equal(paired, [[1, 0]])
    np.testing.assert_array_equal(unpaired_true, [0])
    assert unpaired_pred.size == 0
    paired, unpaired_true, unpaired_pred = pair_coordinates(np.zeros((0, 2)), [[1, 1], [2, 2]], 12)
    assert paired.shape == (0, 2) and unpaired_true.size == 0
    np.testing.assert_array_equal(unpaired_pred, [0, 1])


def _hand_pairing():
    return TypePairing(paired_true=np.array([1, 1, 1, 2, 2, 3]), paired_pred=np.array([1, 1, 2, 2, 1, 3]),
                       unpaired_true=np.array([1, 2]), unpaired_pred=np.array([1, 3, 3]))


def test_f1_type_hand_counts():
    pairing = _hand_pairing()
    # type 1: pairs (1,1) (1,1) (1,2) (2,1): TPc 2, TNc 0, FPc 1, FNc 1; FPd 1, FNd 1
    #   -> 2*2 / (2*2 + 2*1 + 2*1 + 1 + 1) = 4/10
    assert f1_type(pairing, 1) == pytest.approx(0.4, abs=1e-15)
    # type 2: pairs (1,2) (2,2) (2,1): TPc 1, FPc 1, FNc 1; FPd 0, FNd 1 -> 2 / (2 + 2 + 2 + 0 + 1) = 2/7
    assert f1_type(pairing, 2) == pytest.approx(2 / 7, abs=1e-15)
    # type 3: pair (3,3): TPc 1; FPd 2, FNd 0 -> 2 / (2 + 2) = 0.5
    assert f1_type(pairing, 3) == pytest.approx(0.5, abs=1e-15)
    # a type that occurs nowhere: 0/0, documented as 1.0
    assert f1_type(pairing, 7) == 1.0


def test_type_metrics_hand_counts():
    scores = type_metrics(_hand_pairing())
    # detection: 6 pairs, 3 unpaired preds, 2 unpaired truths -> 2*6 / (12 + 3 + 2) = 12/17
    assert scores["f1_d"] == pytest.approx(12 / 17, abs=1e-15)
    # accuracy: types agree in (1,1) (1,1) (2,2) (3,3): 4 of 6
    assert scores["acc"] == pytest.approx(2 / 3, abs=1e-15)
    # default types: those in the truth, {1, 2, 3}
    assert list(scores["f1_type"]) == [1, 2, 3]
    assert scores["f1_type"][2] == pytest.approx(2 / 7, abs=1e-15)
    assert list(type_metrics(_hand_pairing(), [3, 9])["f1_type"]) == [3, 9]


def test_pair_types_and_pooling():
    # image 1: truth type 1 at (0,0) paired with a pred of type 2; a missed truth of type 2 far away
    first = pair_types([[0, 0], [200, 200]], [[1], [2]], [[3, 4]], [2], radius=12)
    np.testing.assert_array_equal(first.paired_true, [1])
    np.testing.assert_array_equal(first.paired_pred, [2])
    np.testing.assert_array_equal(first.unpaired_true, [2])
    assert first.unpaired_pred.size == 0
    # image 2: one exact match of type 1 and a false positive of type 1
    second = pair_types([[50, 50]], [1], [[50, 51], [90, 90]], [1, 1], radius=12)
    pooled = concat_pairings([first, second])
    np.testing.assert_array_equal(pooled.paired_true, [1, 1])
    np.testing.assert_array_equal(pooled.paired_pred, [2, 1])
    scores = type_metrics(pooled)
    # detection: 2 pairs, 1 FP, 1 FN -> 4/6; accuracy 1 of 2
    assert scores["f1_d"] == pytest.approx(2 / 3, abs=1e-15)
    assert scores["acc"] == 0.5
    # type 1: pairs (1,2) (1,1): TPc 1, FNc 1; FPd 1 -> 2 / (2 + 2 + 1) = 0.4
    # type 2: pair (1,2): FPc 1; FNd 1 -> 0 / (0 + 2 + 1) = 0
    assert scores["f1_type"] == pytest.approx({1: 0.4, 2: 0.0}, abs=1e-15)


def test_type_metrics_empty_cases():
    empty = concat_pairings([])
    assert type_metrics(empty) == {"f1_d": 1.0, "acc": 1.0, "f1_type": {}}
    only_missed = TypePairing(np.zeros(0, int), np.zeros(0, int), np.array([1, 1]), np.zeros(0, int))
    scores = type_metrics(only_missed)  # no pair: accuracy undefined (issue 13.12)
    assert scores["f1_d"] == 0.0 and np.isnan(scores["acc"]) and scores["f1_type"] == {1: 0.0}


def test_sparse_table_path_equals_dense(monkeypatch):
    rng = np.random.default_rng(0)
    pairs = [_random_pair(rng, 40, 15, 18) for _ in range(4)]
    dense = [instance_metrics(t, p) for t, p in pairs]
    # force the sort-based table used when (N_t + 1)(N_p + 1) would be too large for a dense bincount
    monkeypatch.setattr(stats, "_DENSE_TABLE_MAX_CELLS", 0)
    assert [instance_metrics(t, p) for t, p in pairs] == dense


def test_fast_equals_reference_on_benchmark_tile_crop():
    from benchmarks.metrics_speed import synthetic_pair

    true, pred = synthetic_pair(seed=0)
    true, pred = true[:200, :200], pred[:200, :200]  # ~60 nuclei with shifts, splits, merges, misses
    got, ref = instance_metrics(true, pred), _reference_metrics(true, pred)
    for key in ALL_KEYS:
        assert abs(got[key] - ref[key]) < 1e-9, key


def test_type_accuracy_of_no_pairs_is_nan():
    """Issue 13.12: detections or misses but no pair: accuracy undefined (NaN), as published."""
    from metrics.stats import pair_types, type_metrics

    pairing = pair_types(np.array([[0.0, 0.0]]), np.array([1]), np.array([[100.0, 100.0]]), np.array([1]), 12)
    scores = type_metrics(pairing)
    assert scores["f1_d"] == 0.0 and np.isnan(scores["acc"])


def test_type_pairing_rounds_centroids_to_float32_as_released():
    """Issue 22.10: the released run_nuclei_type_stat casts centroids to float32 before pairing. Here the
    prediction is 1e-9 px nearer the second truth in float64, a tie in float32, which the assignment resolves
    towards the first truth, as the released evaluation does."""
    from metrics.stats import pair_coordinates, pair_types

    true_xy = np.array([[0.0, 0.0], [10.0, 0.0]])
    pred_xy = np.array([[5.0 + 1e-9, 0.0]])
    assert pair_coordinates(true_xy, pred_xy, 12)[0].tolist() == [[1, 0]]  # float64: the nearer one
    pairing = pair_types(true_xy, [1, 2], pred_xy, [1], 12)
    assert pairing.paired_true.tolist() == [1] and pairing.unpaired_true.tolist() == [2]
