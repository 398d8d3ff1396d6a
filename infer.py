"""Run HoVer-Net on H&E tiles: every nucleus segmented and typed, written in the formats tools read.

Examples:
  python infer.py --input tiles/ --output results/ --model runs/consep/phase2/model-best
  python infer.py --input "slides/*.png" --output results/ --model hovernet_consep.npz --gpu 0 --formats mat,geojson

Per input image <name> it writes, into --output:
  <name>.mat      CoNSeP label format: inst_map (HxW, 0 background, ids 1..N), type_map, inst_type (Nx1),
                  inst_centroid (Nx2, x then y); read by metrics/compute_stats.py like a ground truth
  <name>.json     one record per nucleus: id, bbox [[row_min, col_min], [row_max, col_max]], centroid [x, y],
                  contour [[x, y], ...], type, type_name, type_prob; plus the type names and colours and
                  image_shape [height, width] of the input image
  <name>.png      the image with every nucleus contour drawn in its type's colour
  <name>.geojson  a FeatureCollection with one polygon per nucleus, classified by type (QuPath: File > Import
                  objects)
and summary.csv for the run (image, height, width, nuclei, nuclei per type, seconds).

Re-running the same command skips images whose outputs are complete (writes are atomic), so a killed run
resumes; --overwrite redoes them. Unreadable, grayscale, 16-bit or empty images are reported and skipped, and
the exit status is then 1. Exit status 2: the run could not start (bad arguments, model or type file, an
output folder holding the input images or another model's results; run_info.json there records which; a
full disk). Ctrl-C stops with one line saying how many images are done, exit status 130; rerunning the
same command resumes.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.io import DiskFullError, InputError, check_writable
from misc.logs import attach_log_file, setup_logging
from misc.outputs import FORMATS, check_formats

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="one image, a folder of images, or a quoted glob; PNG, JPEG or TIFF, 8-bit RGB/RGBA")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--model", required=True,
                        help="weights: a checkpoint written by train.py (e.g. runs/x/phase2/model-best), a run folder "
                             "(runs/x: the model-best of its last phase) or phase folder (its model-best), or an "
                             ".npz of variable name -> array (tensorpack varmanip format). The network is built "
                             "with the training config recorded beside a checkpoint (run.json), so training "
                             "--config overrides need not be repeated. Every network variable must load, or the "
                             "run stops and lists what was missing or unexpected")
    parser.add_argument("--gpu", default=None,
                        help="GPU id to use (sets CUDA_VISIBLE_DEVICES); '' forces the CPU; default: whatever "
                             "TensorFlow sees")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="270x270 windows per forward pass (default: config INFER.BATCH_SIZE, 16)")
    parser.add_argument("--types", default=None,
                        help='TYPE_INFO.json mapping type ids to names and RGB colours, e.g. '
                             '{"1": ["tumour", [255, 0, 0]]}; default: CoNSeP\'s four types')
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated outputs to write, from {','.join(FORMATS)} (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. POSTPROC.MIN_SIZE=10 (see src/config.py); they win over the "
                             "training config recorded beside a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and tensorpack's full logs (layer shapes, restored variables); "
                             "they always go to infer.log in the output folder")
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
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    setup_logging(args.verbose, buffer=True)  # before TensorFlow loads

    from misc.outputs import default_type_info, load_type_info
    from src.model.model_config import model_config, resolve_model_path
    from src.model.weights import weights_digest
    from src.pipeline import InferenceReport, check_output_dir, collect_inputs, postproc_kwargs, run_inference

    if args.gpu:  # like train.py: asking for a GPU that is not there must not pass silently
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            logging.warning("--gpu %s: no GPU visible; running on the CPU", args.gpu)
    try:
        check_writable(args.output, "--output")
        # A run or phase folder means its model-best; the network is built with the training config recorded
        # beside a checkpoint (run.json), so training --config overrides need not be repeated.
        args.model = str(resolve_model_path(args.model))
        cfg = model_config(args.model, args.config)
        files = collect_inputs(args.input)
        type_info = load_type_info(args.types) if args.types else default_type_info(cfg.DATA.TYPE_NAMES)
        # The weights by content: new weights at the same path (model-best after more training) are another model.
        run_info = {"weights": weights_digest(args.model), "model_path": str(Path(args.model).resolve()),
                    "postproc": postproc_kwargs(cfg)}
        check_output_dir(args.output, files, args.formats, run_info, args.overwrite)
        from src.predictor import HoVerNetPredictor

        predictor = HoVerNetPredictor(args.model, cfg)
        uncovered = [t for t in range(1, predictor.nr_types or 0) if t not in type_info]
        if uncovered:
            raise InputError(f"type ids {uncovered} of the model have no name/colour in "
                             f"{args.types or 'the default types'}")
    except (InputError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"infer.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while the model loads
        print("infer.py: interrupted; 0 image(s) done", file=sys.stderr)
        return EXIT_INTERRUPTED

    Path(args.output).mkdir(parents=True, exist_ok=True)
    attach_log_file(Path(args.output) / "infer.log")  # the full logs, whatever the console showed
    report = InferenceReport()
    try:
        run_inference(
            files, args.output, predictor, type_info, formats=args.formats, overwrite=args.overwrite,
            batch_size=args.batch_size or cfg.INFER.BATCH_SIZE, input_shape=cfg.MODEL.INPUT_SHAPE,
            output_shape=cfg.MODEL.OUTPUT_SHAPE, postproc_kwargs=run_info["postproc"], run_info=run_info,
            progress=not args.quiet, report=report)
    except KeyboardInterrupt:
        print(f"infer.py: interrupted; {len(report.done)} image(s) done, rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except DiskFullError as exc:  # stop: every further write would fail; the image in progress left no file
        print(f"infer.py: error: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"{len(report.done)} image(s) written, {len(report.already_complete)} already complete, "
          f"{len(report.failed)} skipped -> {args.output}")
    for path, reason in report.failed.items():  # the reasons of InputError name the file already
        print(f"infer.py: skipped {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
