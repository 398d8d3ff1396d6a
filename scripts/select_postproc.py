"""Choose post-processing thresholds for a model on its validation images (never the test split).

    python scripts/select_postproc.py --model small-consep --split models/small-consep.json \\
        --data ../shared/data/consep256/train --thresholds 0.4,0.5,0.6,0.7,0.8 --ksizes 21,15,11,7 --record

Predicts every held-out image once (the names under "holdout" in the ``split.json`` that
``extract_patches.py --holdout`` writes, or in a bundle's training record), then post-processes the same maps
with each combination of ``POSTPROC.MARKER_THRESHOLD`` and ``POSTPROC.SOBEL_KSIZE`` and prints the mean DICE
and PQ per combination, best PQ last. ``--record`` writes the best into the bundle (``infer.py`` applies a
bundle's recorded ``POSTPROC`` before ``--config``) and the table into its training record. The published
values (0.4, 21) suit the paper's network. A higher marker threshold splits only at the strongest HV edges;
whether that helps a weaker model on new tiles depends on how well its validation tiles stand for them (for
``small-consep`` it did not: models/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import numpy as np
from tqdm import tqdm

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from dataset.readers import get_reader
from metrics.stats import instance_metrics
from metrics.validation import split_holdout
from misc.io import InputError


def _values(key: str, cast):
    """argparse type: a comma-separated list of ``key``'s values, each checked by the config's rule for it."""
    from src.config import check_value

    def parse(text: str) -> list:
        try:
            values = []
            for item in (v for v in text.split(",") if v.strip()):
                try:
                    values.append(cast(item))
                except ValueError:
                    raise ValueError(f"config {key}={item!r}: not a number") from None
            for value in values:
                check_value(key, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not values:
            raise argparse.ArgumentTypeError("no values")
        return values

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="weights: a bundled model's name, an .npz, a checkpoint or a run folder (as infer.py)")
    parser.add_argument("--split", required=True,
                        help="split.json written by extract_patches.py --holdout, or a bundle's training record "
                             "(models/<name>.json, its 'split')")
    parser.add_argument("--data", required=True, help="the data set root holding Images/ and Labels/")
    parser.add_argument("--thresholds", type=_values("POSTPROC.MARKER_THRESHOLD", float), default="0.4,0.5,0.6,0.7",
                        help="MARKER_THRESHOLD values to try, comma-separated (0..1)")
    parser.add_argument("--ksizes", type=_values("POSTPROC.SOBEL_KSIZE", int), default="21,11,5",
                        help="SOBEL_KSIZE values to try, comma-separated (odd)")
    parser.add_argument("--record", action="store_true",
                        help="write the best combination (highest mean PQ) into --model, a bundle (.npz), where "
                             "infer.py applies it, and the table into its training record (<name>.json)")
    args = parser.parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)  # before TensorFlow loads: no layer shapes or restored-variable list on the console
    from src.infer.predictor import HoVerNetPredictor
    from src.infer.tiles import split_channels
    from src.infer.windows import predict_tile
    from src.maps.postproc import PostprocParams, process
    from src.model.bundle import record_postproc
    from src.model.weights_file import is_npz, open_model

    try:
        names = split_holdout(args.split)
        if not names:
            raise InputError(f"{args.split}: the split holds nothing out")
        reader = get_reader("instance", args.data)  # the instance maps are all this needs, of any label format
        missing = sorted(set(names) - set(reader.names))
        if missing:
            raise InputError(f"{args.data}: no image for {len(missing)} held-out name(s): {', '.join(missing[:5])}")
        weights = open_model(args.model)  # bundled names and run folders too, as infer.py takes them
        if args.record and not is_npz(weights.path):
            raise InputError(f"--record: --model {args.model} is not a bundle (.npz)")
    except InputError as exc:
        print(f"select_postproc: error: {exc}", file=sys.stderr)
        return 2
    cfg = weights.cfg
    predictor = HoVerNetPredictor(weights)
    cases = []
    for sample in tqdm(reader.samples(set(names)), total=len(names), desc="predicting", unit="img",
                       disable=not sys.stderr.isatty()):
        maps = predict_tile(sample.image, predictor, batch_size=cfg.INFER.BATCH_SIZE,
                            input_shape=cfg.MODEL.INPUT_SHAPE, output_shape=cfg.MODEL.OUTPUT_SHAPE)
        cases.append((split_channels(maps), sample.inst_map))
    base = PostprocParams.from_config(cfg)
    results = []
    for threshold, ksize in tqdm(list(itertools.product(args.thresholds, args.ksizes)), desc="post-processing",
                                 unit="setting", disable=not sys.stderr.isatty()):
        settings = dataclasses.replace(base, marker_threshold=threshold, sobel_ksize=ksize)
        scores = [instance_metrics(truth, process(*channels, settings)[0]) for channels, truth in cases]
        results.append((float(np.mean([s["pq"] for s in scores])), float(np.mean([s["dice"] for s in scores])),
                        threshold, ksize))
    print(f"{len(cases)} validation images; mean over images")
    print(f"{'MARKER_THRESHOLD':>17}{'SOBEL_KSIZE':>13}{'DICE':>8}{'PQ':>8}")
    results.sort()
    for pq, dice, threshold, ksize in results:
        print(f"{threshold:>17.2f}{ksize:>13d}{dice:>8.4f}{pq:>8.4f}")
    if args.record:
        _, _, threshold, ksize = results[-1]
        chosen = {"MARKER_THRESHOLD": threshold, "SOBEL_KSIZE": ksize}
        rows = [{"MARKER_THRESHOLD": t, "SOBEL_KSIZE": k, "dice": d, "pq": q} for q, d, t, k in results]
        record_postproc(weights.path, chosen, {"split": str(args.split), "holdout": names, "data": str(args.data),
                                               "rows": rows, "chosen": chosen})
        print(f"recorded in {weights.path}: " + " ".join(f"POSTPROC.{k}={v}" for k, v in chosen.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
