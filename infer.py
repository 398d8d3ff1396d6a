"""Run HoVer-Net on H&E tiles: every nucleus segmented and typed, written in the formats tools read.

Examples:
  python infer.py --input tiles/ --output results/ --model runs/consep/phase2/model-best
  python infer.py --input "slides/*.png" --output results/ --model hovernet_consep.npz --gpu 0 --formats mat,geojson

Per input image <name> it writes, into --output:
  <name>.mat      CoNSeP label format: inst_map (HxW, 0 background, ids 1..N), type_map, inst_type (Nx1),
                  inst_centroid (Nx2, x then y); read by metrics/compute_stats.py like a ground truth
  <name>.json     one record per nucleus: id, bbox [[row_min, col_min], [row_max, col_max]], centroid [x, y],
                  contour [[x, y], ...], type, type_name, type_prob; plus the type names and colours
  <name>.png      the image with every nucleus contour drawn in its type's colour
  <name>.geojson  a FeatureCollection with one polygon per nucleus, classified by type (QuPath: File > Import
                  objects)
and summary.csv for the run (image, height, width, nuclei, nuclei per type, seconds).

Re-running the same command skips images whose outputs are complete (writes are atomic), so a killed run
resumes; --overwrite redoes them. Unreadable, grayscale, 16-bit or empty images are reported and skipped, and
the exit status is then 1. Exit status 2: the run could not start (bad arguments, model or type file, an
output folder holding the input images or another model's results; run_info.json there records which).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.io import InputError
from misc.outputs import FORMATS, check_formats


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="one image, a folder of images, or a quoted glob; PNG, JPEG or TIFF, 8-bit RGB/RGBA")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--model", required=True,
                        help="weights: a checkpoint written by train.py (e.g. runs/x/phase2/model-best) or an .npz "
                             "of variable name -> array (tensorpack varmanip format; src.model.convert writes one from "
                             "the authors' released checkpoints); every network variable must load, or the run "
                             "stops and lists what was missing or unexpected. The mode (original/fast) and widths "
                             "recorded in an .npz are applied before --config")
    parser.add_argument("--gpu", default=None,
                        help="GPU id to use (sets CUDA_VISIBLE_DEVICES); '' forces the CPU; default: whatever "
                             "TensorFlow sees")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="network input windows per forward pass (default: config INFER.BATCH_SIZE, 16)")
    parser.add_argument("--types", default=None,
                        help='TYPE_INFO.json mapping type ids to names and RGB colours, e.g. '
                             '{"1": ["tumour", [255, 0, 0]]}; default: CoNSeP\'s four types')
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated outputs to write, from {','.join(FORMATS)} (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. POSTPROC.MIN_SIZE=10 (see src/config.py)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        args.formats = check_formats(f.strip() for f in args.formats.split(",") if f.strip())
    except ValueError as exc:
        parser.error(f"--formats: {exc}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu

    from misc.outputs import default_type_info, load_type_info
    from src.config import config_from_args
    from src.model.weights import read_npz_config
    from src.pipeline import check_output_dir, collect_inputs, postproc_kwargs, run_inference

    try:
        # what an .npz records about its network (mode, preset, widths, nr_types) first; --config wins
        cfg = config_from_args(read_npz_config(args.model) + list(args.config))
        files = collect_inputs(args.input)
        type_info = load_type_info(args.types) if args.types else default_type_info(cfg.DATA.TYPE_NAMES)
        run_info = {"model": str(Path(args.model).resolve()), "postproc": postproc_kwargs(cfg)}
        check_output_dir(args.output, files, args.formats, run_info, args.overwrite)
        from src.predictor import HoVerNetPredictor

        predictor = HoVerNetPredictor(args.model, cfg)
        uncovered = [t for t in range(1, predictor.nr_types or 0) if t not in type_info]
        if uncovered:
            raise InputError(f"type ids {uncovered} of the model have no name/colour in "
                             f"{args.types or 'the default types'}")
    except (InputError, KeyError, ValueError) as exc:
        print(f"infer.py: error: {exc}", file=sys.stderr)
        return 2

    report = run_inference(
        files, args.output, predictor, type_info, formats=args.formats, overwrite=args.overwrite,
        batch_size=args.batch_size or cfg.INFER.BATCH_SIZE, input_shape=cfg.MODEL.INPUT_SHAPE,
        output_shape=cfg.MODEL.OUTPUT_SHAPE, postproc_kwargs=run_info["postproc"], run_info=run_info,
        progress=not args.quiet)
    print(f"{len(report.done)} image(s) written, {len(report.already_complete)} already complete, "
          f"{len(report.failed)} skipped -> {args.output}")
    for path, reason in report.failed.items():
        print(f"infer.py: skipped {path}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
