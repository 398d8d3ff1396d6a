"""Seconds per tile for infer.py in both modes side by side: forward pass ('original' 270 -> 80 and 'fast'
256 -> 164), post-processing and writing.

Run from the repository root (CPU, or the GPU TensorFlow sees)::

    python -m benchmarks.infer_speed [--size 1000] [--preset full|small] [--windows 2] [--batch_size 2]

* forward: for each mode the real network (untrained weights: the speed does not depend on them) on the
  sliding-window layout of a random ``--size`` tile (``src/infer/windows.py``: windows and steps from the
  mode's geometry). ``--windows N`` times only the first N windows and **extrapolates** to the tile's
  window count (labelled so in the output); ``--windows 0`` runs every window (measured). The convolution
  GFLOP per window are counted from each graph (2 x multiply-adds of every Conv2D), so the achieved
  throughput is printed too. The paper: 11.04 s (original) and 1.97 s (fast) per 1000x1000 tile on a
  12 GB GPU, batch 1.
* post-processing and writing: once (they do not depend on the mode), on network-like maps of synthetic
  nuclei (``src.maps.synthetic.synthetic_outputs``): an untrained network's maps are not nuclei.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.outputs import default_type_info, write_outputs
from src.config import MODEL_PRESETS, config_from_args
from src.geometry import MODES
from src.infer.windows import gather_windows, window_layout
from src.maps.synthetic import synthetic_outputs


def conv_gflop_per_window(graph) -> float:
    """2 x multiply-adds of every Conv2D op of ``graph`` for one window (batch 1), in GFLOP."""
    total = 0
    for op in graph.get_operations():
        if op.type != "Conv2D":
            continue
        out = op.outputs[0].shape.as_list()
        kh, kw, cin, _ = op.inputs[1].shape.as_list()
        spatial_channels = int(np.prod([d for d in out[1:]]))  # H x W x Cout (either layout)
        total += 2 * spatial_channels * kh * kw * cin
    return total / 1e9


def time_forward(mode: str, preset: str, tile: np.ndarray, n_windows: int, batch_size: int, warmup: int) -> dict:
    """Build the ``mode`` network with random weights and time its forward pass over the tile's windows."""
    import tensorflow as tf
    from tensorpack.tfutils.tower import PredictTowerContext

    from src.infer.predictor import session_config
    from src.model.graph import INFERENCE_INPUTS, HoVerNet, inference_output_names

    tf1 = tf.compat.v1
    cfg = config_from_args([f"MODEL.MODE={mode!r}", f"MODEL.PRESET={preset!r}"])
    size_in, size_out = cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE
    layout = window_layout(tile.shape[0], tile.shape[1], size_in, size_out)
    timed = layout.n_windows if n_windows <= 0 else min(n_windows, layout.n_windows)
    graph = tf.Graph()
    start = time.perf_counter()
    with graph.as_default(), PredictTowerContext(""):
        images = tf1.placeholder(tf.float32, [None, size_in, size_in, 3], INFERENCE_INPUTS[0])
        HoVerNet(nr_types=5, cfg=cfg).build_outputs(images)
        fetch = [graph.get_tensor_by_name(f"{n}:0") for n in inference_output_names(5)]
    build_s = time.perf_counter() - start
    with graph.as_default(), tf1.Session(graph=graph, config=session_config()) as sess:  # the predictor's
        sess.run(tf1.global_variables_initializer())
        gflop = conv_gflop_per_window(graph)
        warm = np.zeros((min(batch_size, timed), size_in, size_in, 3), np.float32)
        for _ in range(warmup):
            sess.run(fetch, {images: warm})
        start = time.perf_counter()
        for first in range(0, timed, batch_size):
            batch = gather_windows(tile, layout, first, min(first + batch_size, timed)).astype(np.float32)
            sess.run(fetch, {images: batch})
        seconds = time.perf_counter() - start
    per_window = seconds / timed
    return {"mode": mode, "input": size_in, "output": size_out, "windows": layout.n_windows, "timed": timed,
            "per_window": per_window, "tile": per_window * layout.n_windows, "gflop": gflop, "build": build_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000, help="square tile side in pixels (default 1000)")
    parser.add_argument("--preset", default="full", choices=sorted(MODEL_PRESETS),
                        help="network size (default full, the published one)")
    parser.add_argument("--windows", type=int, default=2,
                        help="windows timed per mode, then extrapolated to the tile; 0 = all (default 2)")
    parser.add_argument("--batch_size", type=int, default=2, help="windows per forward pass (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward batches first (default 1)")
    args = parser.parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)  # before TensorFlow loads
    import tensorflow as tf

    device = "GPU " + tf.config.list_physical_devices("GPU")[0].name if tf.config.list_physical_devices("GPU") \
        else "CPU"
    tile = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    results = [time_forward(mode, args.preset, tile, args.windows, args.batch_size, args.warmup)
               for mode in sorted(MODES, key=lambda m: m != "original")]

    cfg = config_from_args()
    _, np_prob, hv, tp_prob = synthetic_outputs((args.size, args.size))
    from src.maps.postproc import PostprocParams, process

    start = time.perf_counter()
    inst_map, inst_info = process(np_prob, hv, tp_prob, PostprocParams.from_config(cfg))
    post_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_outputs(tmp, "tile", tile, inst_map, inst_info, default_type_info(cfg.DATA.TYPE_NAMES))
        write_s = time.perf_counter() - start

    print(f"device: {device}; tile {args.size}x{args.size}; preset {args.preset}; batch {args.batch_size}")
    for r in results:
        how = "measured" if r["timed"] == r["windows"] else f"EXTRAPOLATED from {r['timed']} timed windows"
        print(f"forward {r['mode']:>8} ({r['input']} -> {r['output']}): {r['windows']:4d} windows x "
              f"{r['per_window']:.3f} s = {r['tile']:8.2f} s per tile ({how}); {r['gflop']:.1f} GFLOP/window, "
              f"{r['gflop'] * r['windows'] / 1000:.1f} TFLOP/tile, {r['gflop'] / r['per_window']:.1f} GFLOP/s; "
              f"graph built in {r['build']:.1f} s")
    original, fast = results
    print(f"forward ratio original / fast: {original['tile'] / fast['tile']:.2f}x per tile "
          f"({original['per_window'] / fast['per_window']:.2f}x per window, "
          f"{original['windows'] / fast['windows']:.2f}x the windows); paper: 11.04 / 1.97 = 5.60x")
    print(f"post-processing: {post_s:8.2f} s  ({len(inst_info)} nuclei, synthetic network-like maps)")
    print(f"writing:         {write_s:8.2f} s  (.mat, .json, .png overlay, .geojson)")
    for r in results:
        print(f"total {r['mode']:>8}: {r['tile'] + post_s + write_s:8.2f} s per tile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
