"""Speed of the post-processing (spec section 5) on a synthetic 1000x1000 tile.

Run from the repository root::

    python -m benchmarks.postproc_speed [--repeats 7]

The network outputs are synthesised from a random instance map (~1,400 nuclei): np_prob is a
smoothed binary map, hv is ``gen_hv_map`` of the instances plus noise, tp_prob a noisy one-hot of
the instance types. Prints the median seconds of ``instances_from_np_hv`` and of ``process``.
"""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks.targets_speed import median_s
from src.config import make_config
from src.maps.postproc import PostprocParams, instances_from_np_hv, process
from src.maps.synthetic import synthetic_outputs


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
