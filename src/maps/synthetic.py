"""Synthetic scenes with known answers: a crowded instance map and the maps a near-perfect network would give it.

For measurements that need network-like maps without a trained network (an untrained network's maps are not
nuclei): ``benchmarks/`` and ``xla_runner bench``. Pure numpy/OpenCV.
"""
from __future__ import annotations

import cv2
import numpy as np

from src.maps.targets import gen_hv_map

__all__ = ["synthetic_instance_map", "synthetic_outputs"]


def synthetic_instance_map(shape, n_nuclei: int, rng: np.random.Generator,
                           radius=(5.0, 11.0)) -> np.ndarray:
    """HxW int32 map of ``n_nuclei`` random discs (ids 1..n); later discs only fill background, so
    nuclei touch and overlap-clip like crowded tissue. A few ids may end up fully hidden."""
    height, width = shape
    inst_map = np.zeros(shape, dtype=np.int32)
    centres_y = rng.uniform(0, height, n_nuclei)
    centres_x = rng.uniform(0, width, n_nuclei)
    radii = rng.uniform(radius[0], radius[1], n_nuclei)
    for idx in range(n_nuclei):
        cy, cx, r = centres_y[idx], centres_x[idx], radii[idx]
        r0, r1 = max(int(cy - r), 0), min(int(cy + r) + 2, height)
        c0, c1 = max(int(cx - r), 0), min(int(cx + r) + 2, width)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        box = inst_map[r0:r1, c0:c1]
        box[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (box == 0)] = idx + 1
    return inst_map


def synthetic_outputs(shape=(1000, 1000), n_nuclei: int = 1500, nr_types: int = 5, seed: int = 0):
    """(inst_map, np_prob HxW float32, hv HxWx2 float32, tp_prob HxWxC float32) of a fake network."""
    rng = np.random.default_rng(seed)
    inst_map = synthetic_instance_map(shape, n_nuclei, rng)
    np_prob = cv2.GaussianBlur((inst_map > 0).astype(np.float32), (5, 5), 0)
    np_prob = np.clip(np_prob + rng.normal(0, 0.05, shape).astype(np.float32), 0, 1)
    hv = gen_hv_map(inst_map) + rng.normal(0, 0.05, shape + (2,)).astype(np.float32)
    types = np.where(inst_map > 0, inst_map % (nr_types - 1) + 1, 0)
    tp_prob = np.eye(nr_types, dtype=np.float32)[types] + rng.uniform(0, 0.6, shape + (nr_types,)).astype(np.float32)
    tp_prob /= tp_prob.sum(axis=-1, keepdims=True)
    return inst_map, np_prob, hv.astype(np.float32), tp_prob
