"""Evaluate predicted CoNSeP-format ``.mat`` labels against the ground truth (paper Sec. IV, Tables II-III).

Usage (the project is installed in the environment by ``make``, so both forms work from anywhere)::

    python metrics/compute_stats.py --mode instance --true_dir T --pred_dir P [--json OUT]
    python -m metrics.compute_stats --mode type --true_dir T --pred_dir P [--radius 12] [--types 1,2,3,4]

Every ``<name>.mat`` in ``--pred_dir`` is compared with ``<name>.mat`` in ``--true_dir`` (read with
:func:`misc.io.load_label_mat`: ``instance`` reads ``inst_map``; ``type`` reads only ``inst_centroid``
Nx2 (x, y) and ``inst_type`` Nx1, so point annotations without ``inst_map`` work, as in the released
evaluation). ``instance`` scores each image and averages over images; ``type`` pairs centroids per image
and pools the pairs of all images before scoring, as the paper does. ``--no-exhaustive`` scores truths
typed only in part (paper Table V, CRCHisto): a truth type -1 or 0 is an untyped nucleus that counts
for detection only, as the released ``run_nuclei_type_stat(..., exhaustive=False)``. Bad input ends with a
one-line message on stderr and exit code 2. Nothing runs at import.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from metrics.evaluate import evaluate_instance, evaluate_type, match_files
from metrics.stats import INSTANCE_KEYS
from misc.io import InputError, check_writable, write_json_atomic
from src.config import config_from_args

__all__ = ["main"]

EXIT_BAD_INPUT = 2

_JSON_HELP = """\
JSON written by --json:
  instance: {"per_image": {"<name>": {"dice": f, "aji": f, "aji_plus": f, "dq": f, "sq": f, "pq": f}},
             "mean": {"dice": f, "aji": f, "aji_plus": f, "dq": f, "sq": f, "pq": f}}
  type:     {"f1_d": f, "acc": f, "f1_type": {"<type id>": f, ...}}
dice is the binary DICE1; mean is the average over images. f1_d is the detection F1, acc the type
accuracy of the paired nuclei, f1_type the per-type F1 with weights (2, 2, 1, 1). All values in [0, 1];
an empty comparison (nothing in truth nor prediction) scores 1.0. acc is NaN (n/a in the table) when no
predicted nucleus pairs with a true one: an accuracy over no pairs is undefined.
exit codes: 0 done, 2 bad input (message on stderr)."""


def _type_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer type ids, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one type id")
    return values


def _build_parser(default_radius: float) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compute_stats.py",
        description="Score predicted CoNSeP-format .mat labels against the ground truth (HoVer-Net paper "
                    "Sec. IV). Every <name>.mat in --pred_dir is compared with <name>.mat in --true_dir.",
        epilog=_JSON_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", required=True, choices=("instance", "type"),
                        help="instance: DICE, AJI, AJI+, DQ, SQ, PQ from 'inst_map', per image and averaged "
                             "over images; type: detection F1, type accuracy and per-type F1 from "
                             "'inst_centroid' and 'inst_type', pooled over all images")
    parser.add_argument("--true_dir", required=True, type=Path, help="folder of ground-truth <name>.mat files")
    parser.add_argument("--pred_dir", required=True, type=Path, help="folder of predicted <name>.mat files")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the scores to this JSON file (format below), atomically")
    parser.add_argument("--radius", type=float, default=default_radius,
                        help=f"type mode: max centroid distance in pixels for a true/pred pair "
                             f"(default {default_radius:g}, EVAL.RADIUS: 12 at 40x, use 6 at 20x)")
    parser.add_argument("--types", type=_type_list, default=None, metavar="1,2,3,4",
                        help="type mode: comma-separated type ids to score (default: those in the truth, "
                             "without -1 and 0 under --no-exhaustive). A predicted type outside the list is "
                             "not an error: it counts for detection and as a wrong type for the truth it "
                             "pairs with; add --strict_types to stop with an error instead")
    parser.add_argument("--strict_types", action="store_true",
                        help="type mode: a predicted type id outside --types is an error (exit status 2)")
    parser.add_argument("--exhaustive", action=argparse.BooleanOptionalAction, default=True,
                        help="type mode: whether every truth nucleus carries a type (default). With "
                             "--no-exhaustive a truth type -1 or 0 is an untyped nucleus (point sets typed "
                             "in part, e.g. CRCHisto): it counts for detection (f1_d) but is left out of the "
                             "accuracy and of every type's false positives, as the released "
                             "run_nuclei_type_stat(..., exhaustive=False)")
    parser.add_argument("--allow_missing", action="store_true",
                        help="score the truths that have a prediction and list the others (warning, and "
                             "'missing_predictions' in the JSON); without it a truth with no prediction is an error")
    parser.add_argument("--merge_types", action="store_true",
                        help="type mode: merge the truth's original CoNSeP types 1..7 into the paper's 4 "
                             "(DATA.TYPE_MERGE: 3,4 -> 3 epithelial; 5,6,7 -> 4 spindle) before scoring; not for "
                             "labels that are merged already, such as consep256")
    return parser


def _print_instance(result: dict) -> None:
    width = max([len("mean"), *(len(n) for n in result["per_image"])])
    print(f"{'image':<{width}}  " + "  ".join(f"{k:>8}" for k in INSTANCE_KEYS))
    for name, scores in result["per_image"].items():
        print(f"{name:<{width}}  " + "  ".join(f"{scores[k]:8.5f}" for k in INSTANCE_KEYS))
    print(f"{'mean':<{width}}  " + "  ".join(f"{result['mean'][k]:8.5f}" for k in INSTANCE_KEYS))


def _print_type(result: dict) -> None:
    print(f"{'f1_d':<12}{result['f1_d']:.5f}")
    print(f"{'acc':<12}{'n/a' if np.isnan(result['acc']) else format(result['acc'], '.5f')}")
    for type_id, value in result["f1_type"].items():
        print(f"{'f1_type ' + type_id:<12}{value:.5f}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), evaluate, print and optionally write JSON; return the exit code."""
    cfg = config_from_args()
    args = _build_parser(float(cfg.EVAL.RADIUS)).parse_args(argv)
    try:
        if args.json is not None:
            check_writable(args.json.parent, "--json")
        if args.radius <= 0:
            raise InputError(f"--radius must be positive, got {args.radius:g}")
        if args.strict_types and args.types is None:
            raise InputError("--strict_types needs --types (the type ids predictions may use)")
        names, missing = match_files(args.true_dir, args.pred_dir, allow_missing=args.allow_missing)
        if args.mode == "instance":
            result = evaluate_instance(args.true_dir, args.pred_dir, names, match_iou=float(cfg.EVAL.MATCH_IOU))
            _print_instance(result)
        else:
            merge = dict(cfg.DATA.TYPE_MERGE) if args.merge_types else None
            result = evaluate_type(args.true_dir, args.pred_dir, names, args.radius, args.types, merge,
                                   exhaustive=args.exhaustive, strict_types=args.strict_types)
            _print_type(result)
        if args.allow_missing:
            result["missing_predictions"] = missing
        if args.json is not None:
            try:
                write_json_atomic(args.json, result, indent=2, newline=True)
            except OSError as exc:  # e.g. OUT is a directory or not writable
                raise InputError(f"{args.json}: cannot write the JSON ({exc.strerror or exc})") from exc
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
