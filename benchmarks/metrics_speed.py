"""Speed of the instance metrics (DICE1, DICE2, AJI, AJI+, PQ) on a synthetic CoNSeP-sized tile.

Run from the repository root as a module::

    .venv/bin/python -m benchmarks.metrics_speed

(``python benchmarks/metrics_speed.py`` would put ``benchmarks/``, not the root, on ``sys.path``, and
this file does not edit ``sys.path``: it works that way only with the project installed.)

Builds a 1000x1000 truth with ~1,400 non-overlapping elliptical nuclei and a perturbed prediction
(shifted, some split in two, some merged pairwise, some missing, a few false positives, ids shuffled
and non-contiguous), then prints the median time of :func:`metrics.stats.instance_metrics` over
several runs. For comparison it times a naive per-instance-mask implementation of the published
algorithm on a crop (one boolean mask per instance, as the published code does) and checks that both
give the same values there; it also times the centroid pairing of type mode.
Options: ``--runs N`` (default 7), ``--crop PX`` (default 300), ``--seed S`` (default 0).
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from metrics.stats import INSTANCE_KEYS, instance_metrics, pair_coordinates

TILE = 1000
GRID = 38  # 38 x 38 cells of ~26 px: 1,444 nuclei, one per cell, so they never overlap


def synthetic_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true, pred) HxW int32 instance maps of a TILE x TILE tile; pred ids shuffled and non-contiguous."""
    rng = np.random.default_rng(seed)
    cell = TILE / GRID
    true = np.zeros((TILE, TILE), np.int32)
    pred = np.zeros((TILE, TILE), np.int32)
    n = GRID * GRID
    pred_ids = rng.permutation(n * 2) * 7 + 3  # spare ids for split halves and false positives
    fate = rng.choice(4, size=n, p=[0.85, 0.05, 0.05, 0.05])  # 0 kept, 1 split, 2 merged, 3 missing
    centres, axes, angles = [], [], []
    for k in range(n):
        row, col = divmod(k, GRID)
        a, b = rng.uniform(5, 10), rng.uniform(4, 8)
        cx = (col + 0.5) * cell + rng.uniform(-1.5, 1.5)
        cy = (row + 0.5) * cell + rng.uniform(-1.5, 1.5)
        angle = rng.uniform(0, 180)
        centres.append((cx, cy))
        axes.append((a, b))
        angles.append(angle)
        cv2.ellipse(true, (round(cx), round(cy)), (round(a), round(b)), angle, 0, 360, k + 1, -1)
    for k in range(n):
        if fate[k] == 3:
            continue
        (cx, cy), (a, b) = centres[k], axes[k]
        dx, dy = rng.integers(-2, 3, size=2)
        centre = (round(cx + dx), round(cy + dy))
        size = (max(2, round(a + rng.uniform(-1, 1))), max(2, round(b + rng.uniform(-1, 1))))
        pid = int(pred_ids[k])
        if fate[k] == 2 and k % GRID:  # merged with the left neighbour: same id plus a bridge
            pid = int(pred_ids[k - 1])
            left = (round(centres[k - 1][0] + dx), round(centres[k - 1][1] + dy))
            cv2.line(pred, left, centre, pid, 3)
        cv2.ellipse(pred, centre, size, angles[k], 0, 360, pid, -1)
        if fate[k] == 1:  # split: the half on one side of a line through the centre gets a new id
            half = np.zeros_like(pred, np.uint8)
            cv2.ellipse(half, centre, size, angles[k], 0, 180, 1, -1)
            pred[(half > 0) & (pred == pid)] = int(pred_ids[n + k])
    for k in range(n // 50):  # false positives in the gaps between cells
        row, col = rng.integers(0, GRID - 1, size=2)
        centre = (round((col + 1) * cell), round((row + 1) * cell))
        cv2.circle(pred, centre, 3, int(pred_ids[n + n // 2 + k]), -1)
    return true, pred


def naive_instance_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Published-style reference: one boolean mask per instance, pairwise sums per overlapping pair."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [i for i in np.unique(pred) if i]
    t_masks = [true == i for i in t_ids]
    p_masks = [pred == i for i in p_ids]
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros_like(inter)
    p_index = {pid: j for j, pid in enumerate(p_ids)}
    for i, t_mask in enumerate(t_masks):
        for pid in np.unique(pred[t_mask]):
            if pid:
                j = p_index[pid]
                inter[i, j] = np.logical_and(t_mask, p_masks[j]).sum()
                union[i, j] = np.logical_or(t_mask, p_masks[j]).sum()
    t_area = np.array([m.sum() for m in t_masks], float)
    p_area = np.array([m.sum() for m in p_masks], float)
    iou_eps = inter / (union + 1e-6)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    def aggregated(rows, cols):
        keep = iou_eps[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
        total_union = union[rows, cols].sum() + np.delete(t_area, rows).sum() + np.delete(p_area, cols).sum()
        return inter[rows, cols].sum() / total_union

    rows = np.arange(len(t_ids))
    aji = aggregated(rows, iou_eps.argmax(axis=1))
    aji_plus = aggregated(*linear_sum_assignment(-iou_eps))
    matched = iou > 0.5
    tp = matched.sum()
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    sq = iou[matched].sum() / tp
    dice = 2 * np.logical_and(true > 0, pred > 0).sum() / ((true > 0).sum() + (pred > 0).sum())
    return {"dice": dice, "aji": aji, "aji_plus": aji_plus, "dq": dq, "sq": sq, "pq": dq * sq}


def centroids(inst_map: np.ndarray) -> np.ndarray:
    """(N, 2) float64 (x, y) centroid of each instance, in increasing id order."""
    ids, inverse = np.unique(inst_map, return_inverse=True)
    inverse = inverse.reshape(inst_map.shape)
    yy, xx = np.indices(inst_map.shape)
    count = np.bincount(inverse.ravel())
    xy = np.stack([np.bincount(inverse.ravel(), xx.ravel()), np.bincount(inverse.ravel(), yy.ravel())], 1)
    xy = xy / count[:, None]
    return xy[ids != 0]


def _median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs; the median is reported")
    parser.add_argument("--crop", type=int, default=300, help="side of the crop the naive reference runs on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic tile")
    args = parser.parse_args(argv)

    true, pred = synthetic_pair(args.seed)
    n_true = len(np.unique(true)) - 1
    n_pred = len(np.unique(pred)) - 1
    result = instance_metrics(true, pred)  # warm-up, also the values shown
    fast = _median_seconds(lambda: instance_metrics(true, pred), args.runs)
    print(f"tile {TILE}x{TILE}: {n_true} true / {n_pred} pred nuclei; "
          + " ".join(f"{k}={result[k]:.4f}" for k in INSTANCE_KEYS))
    print(f"instance_metrics (all of DICE1, DICE2, AJI, AJI+, PQ), full tile: {fast:.4f} s "
          f"(median of {args.runs})")

    true_xy, pred_xy = centroids(true), centroids(pred)
    pairing = _median_seconds(lambda: pair_coordinates(true_xy, pred_xy, 12), args.runs)
    print(f"pair_coordinates (type mode, {len(true_xy)} x {len(pred_xy)} centroids, radius 12): {pairing:.4f} s")

    crop_t, crop_p = true[:args.crop, :args.crop], pred[:args.crop, :args.crop]
    n_crop = len(np.unique(crop_t)) - 1
    fast_crop = _median_seconds(lambda: instance_metrics(crop_t, crop_p), args.runs)
    naive_crop = _median_seconds(lambda: naive_instance_metrics(crop_t, crop_p), max(1, args.runs // 3))
    got, ref = instance_metrics(crop_t, crop_p), naive_instance_metrics(crop_t, crop_p)
    max_diff = max(abs(got[k] - ref[k]) for k in INSTANCE_KEYS)
    print(f"crop {args.crop}x{args.crop} ({n_crop} true nuclei): fast {fast_crop:.4f} s, "
          f"naive per-instance masks {naive_crop:.4f} s ({naive_crop / fast_crop:.0f}x slower); "
          f"max |fast - naive| = {max_diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
