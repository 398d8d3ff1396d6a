"""``python -m xla_runner bench``: seconds per 1000x1000 tile and training patches per second, with XLA.

  python -m xla_runner bench --artifacts xla-original/ xla-fast/ [--model weights.npz] --json bench.json

For every export folder given (one mode/preset each) and every forward artifact in it (batch sizes 8/16/32 when
exported): the forward pass of a random 1000x1000 tile through the sliding windows (``src/infer/windows.py``), then
post-processing of network-like maps of ~1,400 synthetic nuclei (``src.maps.synthetic``, as
``benchmarks.postproc_speed``; with ``--model`` the tile's own maps); and for every training step, patches per
second on random batches (the step alone, data loading excluded; ``benchmarks.dataflow_speed`` measures the
augmentation). Untrained weights from the published initialisers unless ``--model``. Prints a table and writes the
JSON. Targets on one H100: <= 0.5 s per tile end to end for the full model (paper: 11.04 s).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from misc.io import write_json_atomic
from src.infer.tiles import split_channels
from src.infer.windows import predict_tile, window_layout
from src.maps.postproc import PostprocParams, process
from src.model.weights_file import detect_nr_types, read_npz, write_npz
from xla_runner.artifacts import Artifacts, XlaPredictor, initial_state
from xla_runner.train import StepRunner


def _forward(artifacts: Artifacts, entry: dict, weights_path, size: int, repeats: int, tmp) -> dict:
    if weights_path is None:
        weights_path = f"{tmp}/init-{entry['batch_size']}.npz"
        write_npz(weights_path, initial_state(entry)[0])
    predictor = XlaPredictor(artifacts, weights_path, entry["batch_size"])
    tile = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    kwargs = {"batch_size": predictor.batch_size, "input_shape": artifacts.input_shape,
              "output_shape": artifacts.output_shape}
    predict_tile(tile, predictor, **kwargs)  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        maps = predict_tile(tile, predictor, **kwargs)
        times.append(time.perf_counter() - start)
    return {"forward_s": float(np.median(times)), "maps": maps,
            "windows": window_layout(size, size, artifacts.input_shape, artifacts.output_shape).n_windows}


def _train(artifacts: Artifacts, entry: dict, steps: int) -> dict:
    runner = StepRunner(artifacts, entry, initial_state(entry)[0])
    rng = np.random.default_rng(0)
    batch = [rng.uniform(0, 255, s["shape"]).astype(s["dtype"]) if s["dtype"] == "float32"
             else rng.integers(0, 2, s["shape"]).astype(s["dtype"]) for s in entry["inputs"] if s["role"] == "data"]
    runner.step(batch, 1e-4)  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(batch, 1e-4)  # float() of the metrics waits for the device each step
    seconds = time.perf_counter() - start
    return {"step_s": seconds / steps, "patches_per_s": steps * runner.batch_size / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xla_runner bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", nargs="+", required=True, help="export folders (one per mode/preset)")
    parser.add_argument("--model", default=None, help="trained weights .npz (default: published initialisers)")
    parser.add_argument("--size", type=int, default=1000, help="square tile side (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per tile (median)")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps (0: none)")
    parser.add_argument("--json", default="bench.json", help="where to write the results (default bench.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import tempfile

    import jax

    from src.maps.synthetic import synthetic_outputs

    results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "tile": args.size, "runs": []}
    post = None
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.artifacts:
            artifacts = Artifacts(folder)
            model = artifacts.cfg.MODEL
            graph_keys = ("MODEL.PRESET", "MODEL.MODE", "MODEL.DATA_FORMAT", "MODEL.NR_TYPES")
            shrunk = any(o.startswith("MODEL.") and not o.startswith(graph_keys)  # '*': e.g. the tests' tiny net
                         for o in artifacts.manifest["config_overrides"])
            label = {"artifacts": folder, "mode": model.MODE, "preset": model.get("PRESET", "full") + "*" * shrunk}
            if args.model and detect_nr_types({k: v.shape for k, v in read_npz(args.model)[0].items()}) is None:
                print(f"bench: {args.model} has no type branch", file=sys.stderr)
                return 2
            for name, entry in sorted(artifacts.entries.items()):
                entry = dict(entry, name=name)
                if entry["kind"] == "forward":
                    run = _forward(artifacts, entry, args.model, args.size, args.repeats, tmp)
                    if args.model is not None:
                        np_prob, hv, tp_prob = split_channels(run.pop("maps"))
                        start = time.perf_counter()
                        process(np_prob, hv, tp_prob, PostprocParams.from_config(artifacts.cfg))
                        post_s = time.perf_counter() - start
                    else:
                        run.pop("maps")
                        if post is None:  # the same synthetic maps for every forward
                            _, np_prob, hv, tp_prob = synthetic_outputs((args.size, args.size))
                            start = time.perf_counter()
                            process(np_prob, hv, tp_prob, PostprocParams.from_config(artifacts.cfg))
                            post = time.perf_counter() - start
                        post_s = post
                    run.update(postproc_s=post_s, total_s=run["forward_s"] + post_s)
                    results["runs"].append({**label, "artifact": name, "batch_size": entry["batch_size"], **run})
                elif args.train_steps > 0:
                    run = _train(artifacts, entry, args.train_steps)
                    results["runs"].append({**label, "artifact": name, "batch_size": entry["batch_size"], **run})
                else:
                    continue  # no training steps asked for: nothing new to print
                print(json.dumps(results["runs"][-1]), flush=True)
    write_json_atomic(args.json, results, indent=1, newline=True)
    print(f"device {results['device']}; results in {args.json}")
    for run in results["runs"]:
        if "forward_s" in run:
            print(f"{run['mode']:>8} {run['preset']:>5} b{run['batch_size']:<3} forward {run['forward_s']:.3f} s + "
                  f"post-processing {run['postproc_s']:.3f} s = {run['total_s']:.3f} s per {args.size}x{args.size} "
                  f"tile ({run['windows']} windows)")
        else:
            print(f"{run['mode']:>8} {run['preset']:>5} {run['artifact']}: {run['patches_per_s']:.1f} patches/s "
                  f"({run['step_s']:.3f} s per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
