"""Speed of the post-processing (spec section 5) on a synthetic 1000x1000 tile.

Run from the repository root::

    python -m benchmarks.postproc_speed [--repeats 7]

The network outputs are synthesised from a random instance map (~1,400 nuclei): np_prob is a
smoothed binary map, hv is ``gen_hv_map`` of the instances plus noise, tp_prob a noisy one-hot of
the instance types. Prints the median seconds of ``instances_from_np_hv`` and of ``process``.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from benchmarks.targets_speed import median_s, synthetic_instance_map
from src.config import make_config
from src.postproc import PostprocParams, instances_from_np_hv, process
from src.targets import gen_hv_map


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    inst_map, np_prob, hv, tp_prob = synthetic_outputs()
    params = PostprocParams.from_config(make_config())  # the published values
    pred = instances_from_np_hv(np_prob, hv, params)
    print(f"tile 1000x1000: {np.unique(inst_map).size - 1} true nuclei, {int(pred.max())} predicted, "
          f"foreground {100 * (inst_map > 0).mean():.1f}%")
    sec = median_s(lambda: instances_from_np_hv(np_prob, hv, params), args.repeats)
    print(f"instances_from_np_hv: {sec:.3f} s (median of {args.repeats})")
    sec = median_s(lambda: process(np_prob, hv, tp_prob, params), args.repeats)
    print(f"process (with tp_prob): {sec:.3f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
