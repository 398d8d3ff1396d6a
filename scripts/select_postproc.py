"""Choose post-processing thresholds for a model on its validation images (never the test split).

    python scripts/select_postproc.py --model models/small-consep.npz --split data/small/valid/split.json \
        --data ../shared/data/consep256/train

Predicts every held-out image once (the names under "holdout" in ``split.json``), then post-processes the
same maps with each combination of ``POSTPROC.MARKER_THRESHOLD`` and ``POSTPROC.SOBEL_KSIZE`` and prints the
mean DICE and PQ per combination, best PQ last. The published values (0.4, 21) suit the paper's network; a
model whose HV maps are weaker (the small CPU model) may need a higher marker threshold to find markers at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from metrics.stats import instance_metrics
from misc.io import load_label_mat, read_image_rgb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="weights: a bundled model's name, an .npz, a checkpoint or a run folder (as infer.py)")
    parser.add_argument("--split", required=True, help="split.json written by extract_patches.py --holdout")
    parser.add_argument("--data", required=True, help="the data set root holding Images/ and Labels/")
    parser.add_argument("--thresholds", default="0.4,0.5,0.6,0.7", help="MARKER_THRESHOLD values to try")
    parser.add_argument("--ksizes", default="21,11,5", help="SOBEL_KSIZE values to try")
    args = parser.parse_args(argv)

    from src.infer.predictor import HoVerNetPredictor
    from src.infer.tiles import split_channels
    from src.infer.windows import predict_tile
    from src.maps.postproc import PostprocParams, process
    from src.model.weights_file import open_model

    weights = open_model(args.model)  # bundled names and run folders too, as infer.py takes them
    cfg = weights.cfg
    predictor = HoVerNetPredictor(weights)
    names = json.loads(Path(args.split).read_text())["holdout"]
    data = Path(args.data)
    cases = []
    for name in names:
        image_path = next(p for p in (data / "Images").iterdir() if p.stem == name)
        maps = predict_tile(read_image_rgb(image_path), predictor, batch_size=cfg.INFER.BATCH_SIZE,
                            input_shape=cfg.MODEL.INPUT_SHAPE, output_shape=cfg.MODEL.OUTPUT_SHAPE)
        cases.append((split_channels(maps), load_label_mat(data / "Labels" / f"{name}.mat")["inst_map"]))
    base = PostprocParams.from_config(cfg)
    results = []
    for threshold, ksize in itertools.product([float(v) for v in args.thresholds.split(",")],
                                              [int(v) for v in args.ksizes.split(",")]):
        settings = dataclasses.replace(base, marker_threshold=threshold, sobel_ksize=ksize)
        scores = [instance_metrics(truth, process(*channels, settings)[0]) for channels, truth in cases]
        results.append((float(np.mean([s["pq"] for s in scores])), float(np.mean([s["dice"] for s in scores])),
                        threshold, ksize))
    print(f"{len(cases)} validation images; mean over images")
    print(f"{'MARKER_THRESHOLD':>17}{'SOBEL_KSIZE':>13}{'DICE':>8}{'PQ':>8}")
    for pq, dice, threshold, ksize in sorted(results):
        print(f"{threshold:>17.2f}{ksize:>13d}{dice:>8.4f}{pq:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
