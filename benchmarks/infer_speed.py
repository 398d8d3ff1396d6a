"""Seconds per 1000x1000 tile for infer.py, split into forward pass / post-processing / writing.

Run from the repository root (CPU, or the GPU TensorFlow sees)::

    python -m benchmarks.infer_speed [--size 1000] [--batch_size 16] [--model WEIGHTS]

* forward: the real network through the sliding-window layout (``src/inference.py``) on a random
  RGB tile; its speed does not depend on the weights or the content, so without ``--model`` it runs
  with untrained weights. The window count and the spec's ~392 GFLOP per window give the achieved
  throughput. The paper reports 11.04 s per 1000x1000 tile (valid model, batch 1, 12 GB GPU).
* post-processing and writing: on network-like maps of ~1,400 synthetic nuclei
  (``benchmarks.postproc_speed.synthetic_outputs``), because an untrained network's maps are not
  nuclei; with ``--model`` trained weights, the tile's own maps are used instead.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks.postproc_speed import synthetic_outputs
from misc.outputs import default_type_info, write_outputs
from src.config import config_from_args
from src.inference import window_layout
from src.pipeline import postproc_kwargs, split_channels

GFLOP_PER_WINDOW = 392.0  # spec section 1, convolutions of one 270x270 window


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000, help="square tile side in pixels (default 1000)")
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument("--model", default=None, help="trained weights; default: untrained weights")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward batches first (default 1)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from src.inference import predict_tile
    from src.model.weights import save_initial_weights
    from src.predictor import HoVerNetPredictor

    cfg = config_from_args()
    device = "GPU " + tf.config.list_physical_devices("GPU")[0].name if tf.config.list_physical_devices("GPU") \
        else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = f"{tmp}/untrained.npz"
            save_initial_weights(model, cfg, nr_types=5)
        predictor = HoVerNetPredictor(model, cfg)
        rng = np.random.default_rng(0)
        tile = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        layout = window_layout(args.size, args.size, cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE)
        warm = np.zeros((args.batch_size, cfg.MODEL.INPUT_SHAPE, cfg.MODEL.INPUT_SHAPE, 3), np.float32)
        for _ in range(args.warmup):
            predictor(warm)

        start = time.perf_counter()
        maps = predict_tile(tile, predictor, batch_size=args.batch_size, input_shape=cfg.MODEL.INPUT_SHAPE,
                            output_shape=cfg.MODEL.OUTPUT_SHAPE)
        forward_s = time.perf_counter() - start

        if args.model is None:
            _, np_prob, hv, tp_prob = synthetic_outputs((args.size, args.size))
            maps_from = "synthetic network-like maps (~1,400 nuclei)"
        else:
            np_prob, hv, tp_prob = split_channels(maps)
            maps_from = "the tile's own maps"
        from src.postproc import process

        start = time.perf_counter()
        inst_map, inst_info = process(np_prob, hv, tp_prob, **postproc_kwargs(cfg))
        post_s = time.perf_counter() - start
        start = time.perf_counter()
        write_outputs(tmp, "tile", tile, inst_map, inst_info, default_type_info())
        write_s = time.perf_counter() - start

    tflop = layout.n_windows * GFLOP_PER_WINDOW / 1000.0
    print(f"device: {device}; tile {args.size}x{args.size}; {layout.n_windows} windows of 270x270; "
          f"batch {args.batch_size}")
    print(f"forward:         {forward_s:8.2f} s  ({forward_s / layout.n_windows:.3f} s/window, "
          f"~{tflop:.1f} TFLOP -> {tflop / forward_s:.2f} TFLOP/s)")
    print(f"post-processing: {post_s:8.2f} s  ({len(inst_info)} nuclei, on {maps_from})")
    print(f"writing:         {write_s:8.2f} s  (.mat, .json, .png overlay, .geojson)")
    print(f"total:           {forward_s + post_s + write_s:8.2f} s per tile (paper: 11.04 s on a 12 GB GPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
