"""Speed of the training-target generation (spec section 2) on a synthetic training patch.

Run from the repository root::

    python -m benchmarks.targets_speed [--repeats 50] [--mode original|fast]

Prints the median milliseconds per call of ``gen_targets`` (a patch of the mode's size, 540x540 in the
original mode, ~250 nuclei, cropped to the output and to the input) and of ``gen_hv_map`` on the full
patch. The sizes come from ``src.geometry.derive_geometry``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from src.geometry import MODES, derive_geometry
from src.maps.synthetic import synthetic_instance_map
from src.maps.targets import gen_hv_map, gen_targets


def median_s(func, repeats: int) -> float:
    """Median wall time of ``func()`` over ``repeats`` runs after one warm-up run, in seconds."""
    func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--mode", default="original", choices=sorted(MODES), help="network geometry")
    args = parser.parse_args(argv)

    geometry = derive_geometry(args.mode)
    patch, size_in, size_out = geometry.patch_size, geometry.input_shape, geometry.output_shape
    rng = np.random.default_rng(0)
    inst_map = synthetic_instance_map((patch, patch), 250, rng)
    type_map = (inst_map % 4 + 1) * (inst_map > 0)
    n_inst = np.unique(inst_map).size - 1
    print(f"patch {patch}x{patch} ({args.mode}), {n_inst} nuclei, foreground {100 * (inst_map > 0).mean():.1f}%")
    for crop in (size_out, size_in):
        ms = 1e3 * median_s(lambda crop=crop: gen_targets(inst_map, type_map, crop), args.repeats)
        print(f"gen_targets({patch}x{patch} -> {crop}x{crop}): {ms:.2f} ms per call (median of {args.repeats})")
    ms = 1e3 * median_s(lambda: gen_hv_map(inst_map), args.repeats)
    print(f"gen_hv_map({patch}x{patch}): {ms:.2f} ms per call (median of {args.repeats})")


if __name__ == "__main__":
    main()
