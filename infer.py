"""Run HoVer-Net on H&E tiles: every nucleus segmented and typed, written in the formats tools read.

Examples:
  python infer.py --input tiles/ --output results/ --model small-consep       # the bundled CPU model
  python infer.py --list-models
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

Whole slides (--mode wsi, or auto: any file OpenSlide recognises as a slide): processed at the model's
magnification (WSI.MODEL_MPP; the slide's own mpp or --mpp) in large tiles on tissue only, on an embedded
Dask cluster (--workers) or an existing one (--scheduler); per slide <name>.json, <name>.geojson (or
.geojson.gz with --gzip) in level-0 pixels, a <name>.png thumbnail overlay and a summary.csv row with the
tissue area and nuclei per mm^2. Finished tiles are kept in <name>.parts/, so a killed run resumes.

Re-running the same command skips images whose outputs are complete (writes are atomic), so a killed run
resumes; --overwrite redoes them. Unreadable, grayscale, 16-bit or empty images are reported and skipped, and
the exit status is then 1. Exit status 2: the run could not start (bad arguments, model or type file, an
output folder holding the input images or another model's results; run_info.json there records which; a
full disk, a network answering NaN, a folder another run is writing into). Ctrl-C stops with one line saying
how many images are done, exit status 130 (SIGTERM alike, 143); rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from pathlib import Path

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.io import (
    DiskFullError,
    InputError,
    NonFiniteMapsError,
    check_image_header,
    check_writable,
    folder_lock,
    remove_stale_temporaries,
)
from misc.logs import attach_log_file, setup_logging
from misc.outputs import FORMATS, check_formats
from misc.proc import exit_status, stop_on_sigterm, stop_word


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input",
                        help="one image, a folder of images, or a quoted glob; PNG, JPEG or TIFF, 8-bit RGB/RGBA")
    parser.add_argument("--output", help="output folder (created if missing)")
    parser.add_argument("--model",
                        help="weights: the name of a bundled model (see --list-models), a checkpoint written by "
                             "train.py (e.g. runs/x/phase2/model-best), a run folder (runs/x: the model-best of its "
                             "last phase) or phase folder (its model-best), or an .npz of variable name -> array "
                             "(tensorpack varmanip format; src.model.convert writes one from the authors' released "
                             "checkpoints). The network is built with the training config recorded "
                             "with the weights (run.json beside a checkpoint; inside a bundled .npz), so training "
                             "--config overrides need not be repeated. Every network variable must load, or the "
                             "run stops and lists what was missing or unexpected")
    parser.add_argument("--list-models", action="store_true", help="list the bundled models and exit")
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
                        help="config overrides, e.g. POSTPROC.MIN_SIZE=10 (see src/config.py); they win over the "
                             "training config recorded beside a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--mode", choices=("auto", "tile", "wsi"), default="auto",
                        help="tile: images read whole; wsi: whole-slide images through OpenSlide; auto (default): "
                             "wsi for files OpenSlide recognises as slides, tile for the others")
    parser.add_argument("--mpp", type=float, default=None,
                        help="microns per pixel of the inputs. Slides: per level-0 pixel, overriding a missing or "
                             "wrong value in the file (a slide with neither is refused). Tiles: e.g. 0.5 for 20x "
                             "tiles; when it differs from the model's (config WSI.MODEL_MPP, 0.25 = 40x) by more "
                             "than WSI.MPP_TOLERANCE, each tile is resampled to the model's mpp, and its nuclei are "
                             "mapped back (instance map by nearest neighbour, contours/centroids/bboxes recomputed "
                             "from it), so every output is in the tile's own pixels and size. Default: tiles are "
                             "taken to be at the model's mpp; slides use their file's value. Recorded in "
                             "run_info.json")
    parser.add_argument("--tissue_mask", default=None,
                        help="slides: a tissue mask image (non-zero = tissue, any size) for one slide, or a folder "
                             "of <slide name>.png masks; default: automatic (Otsu on saturation)")
    parser.add_argument("--workers", type=int, default=1,
                        help="slides: worker processes of the embedded Dask cluster (default 1); with --gpu 0,1 "
                             "one worker per GPU")
    parser.add_argument("--scheduler", default=None,
                        help="slides: address of a running Dask scheduler (e.g. tcp://head:8786) to use instead "
                             "of the embedded cluster")
    parser.add_argument("--gzip", action="store_true", help="slides: write <name>.geojson.gz")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and tensorpack's full logs (layer shapes, restored variables); "
                             "they always go to infer.log in the output folder")
    args = parser.parse_args(argv)
    if not args.list_models:
        missing = [f"--{name}" for name in ("input", "output", "model") if getattr(args, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        args.formats = check_formats(f.strip() for f in args.formats.split(",") if f.strip())
    except ValueError as exc:
        parser.error(f"--formats: {exc}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.mpp is not None and not (math.isfinite(args.mpp) and args.mpp > 0):
        parser.error(f"--mpp must be a finite number > 0, got {args.mpp}")
    return args


def _list_models() -> int:
    from src.model.weights_file import bundled_models

    models = bundled_models()
    if not models:
        print("no bundled models")
    for name, meta in models.items():
        model = meta.get("MODEL", {})
        print(f"{name}: {meta.get('description', '')} [mode {model.get('MODE', 'original')}, preset "
              f"{model.get('PRESET', 'full')}, {meta.get('parameters', 0):,} parameters]")
    return 0


def _gpu_ids(spec: str | None) -> list[str] | None:
    return [g.strip() for g in spec.split(",") if g.strip()] if spec else None


@dataclasses.dataclass
class _Run:
    """What a run was set up with: the opened weights and config, the inputs, the predictor (tiles only)."""

    weights: object
    files: list  # the tiles to run
    slides: list
    type_info: dict
    run_info: dict
    unreadable: dict  # tile path -> reason: not an image (found before the model loads), skipped
    predictor: object = None


def _unreadable(files) -> dict[str, str]:
    """Path -> reason for the tiles that are missing, empty or not images (their header does not decode)."""
    failed = {}
    for file in files:
        try:
            check_image_header(file)
        except InputError as exc:
            failed[str(file)] = str(exc)
    return failed


def _set_up(args) -> _Run:
    """List and check the inputs, open the model, check the output folder and load the network: everything that
    may refuse the run (InputError, ValueError, KeyError, OSError) before anything is written."""
    from misc.outputs import default_type_info, load_type_info
    from src.infer.slides import input_suffixes, split_inputs
    from src.infer.tiles import check_output_dir, collect_inputs, run_record
    from src.model.weights_file import open_model

    check_writable(args.output, "--output")
    slides, files = split_inputs(collect_inputs(args.input, input_suffixes(args.mode)), args.mode)
    # A file that is not an image is skipped like any bad image, but found before the model loads (for nothing,
    # when no input is good); a file cut short in its pixels shows only when it is read.
    unreadable = _unreadable(files)
    # A bundled model's name means its file, a run or phase folder its model-best; the network is built with the
    # training config recorded with the weights, so training --config overrides need not be repeated.
    weights = open_model(args.model, args.config)
    type_info = load_type_info(args.types) if args.types else default_type_info(weights.cfg.DATA.TYPE_NAMES)
    run = _Run(weights, [f for f in files if str(f) not in unreadable], slides, type_info,
               run_record(weights, weights.cfg, args.mpp), unreadable)
    check_output_dir(args.output, files + slides, args.formats, run.run_info, args.overwrite)
    if run.files:
        from src.infer.predictor import HoVerNetPredictor

        run.predictor = HoVerNetPredictor(weights)
        nr_types = run.predictor.nr_types
    else:  # slides only: the workers build the network; here only check the file and its types
        nr_types = weights.nr_types  # an .npz says it; a checkpoint's shapes need TensorFlow
        if weights.arrays is None:
            from src.model.weights import stored_nr_types

            nr_types = stored_nr_types(weights)
    uncovered = [t for t in range(1, nr_types or 0) if t not in type_info]
    if uncovered:
        raise InputError(f"type ids {uncovered} of the model have no name/colour in "
                         f"{args.types or 'the default types'}")
    return run


def _print_skipped(failed: dict) -> None:
    """One line per skipped image or slide, naming it once (the reasons of InputError name the file already)."""
    for path, reason in failed.items():
        print(f"infer.py: skipped {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)


def _infer_tiles(args, run: _Run, report) -> bool:
    from src.infer.tiles import TileSettings, run_inference

    report.failed.update(run.unreadable)
    if run.files:
        settings = TileSettings.from_config(run.weights.cfg, batch_size=args.batch_size, input_mpp=args.mpp)
        run_inference(run.files, args.output, run.predictor, run.type_info, settings, formats=args.formats,
                      overwrite=args.overwrite, run_info=run.run_info, progress=not args.quiet, report=report)
    print(f"{len(report.done)} image(s) written, {len(report.already_complete)} already complete, "
          f"{len(report.failed)} skipped -> {args.output}")
    _print_skipped(report.failed)
    return report.ok


def _infer_slides(args, run: _Run) -> bool:
    from src.infer.cluster import infer_slides

    report = infer_slides(run.slides, args.output, run.weights, run.type_info, run.run_info, formats=args.formats,
                          batch_size=args.batch_size, gzip=args.gzip, tissue_mask=args.tissue_mask,
                          workers=args.workers, scheduler=args.scheduler, gpus=_gpu_ids(args.gpu), mpp=args.mpp,
                          overwrite=args.overwrite, progress=not args.quiet, verbose=args.verbose)
    print(f"{len(report.done)} slide(s) written, {len(report.already_complete)} already complete, "
          f"{len(report.failed)} skipped -> {args.output}")
    _print_skipped(report.failed)
    return report.ok


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_models:
        return _list_models()
    if args.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    from src.infer.tiles import InferenceReport

    report = InferenceReport()
    run = None
    stop_on_sigterm()
    try:  # from here on a Ctrl-C or SIGTERM is one line (loading TensorFlow alone takes seconds)
        setup_logging(args.verbose, buffer=True)  # before TensorFlow loads
        if args.gpu:  # like train.py: asking for a GPU that is not there must not pass silently
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                logging.warning("--gpu %s: no GPU visible; running on the CPU", args.gpu)
        run = _set_up(args)
        # creates the folder; a second run into it is refused, one line (it would compute or mix everything)
        with folder_lock(args.output, "run"):
            attach_log_file(Path(args.output) / "infer.log")  # the full logs, whatever the console showed
            ok = _infer_tiles(args, run, report) if run.files or run.unreadable else True
            return 0 if (_infer_slides(args, run) if run.slides else True) and ok else 1
    except (InputError, KeyError, ValueError, OSError) as exc:
        # DiskFullError: every further write would fail; the image in progress left no file
        print(f"infer.py: error: {exc.strerror if isinstance(exc, DiskFullError) else exc}", file=sys.stderr)
        return 2
    except NonFiniteMapsError as exc:  # every further image would be as wrong
        print(f"infer.py: error: {exc}; {len(report.done)} image(s) done", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (stop_on_sigterm)
        # The signal can land between a temporary's creation and the block that removes it; this process writes
        # nothing more (the slides' workers: src.infer.cluster.infer_slides)
        remove_stale_temporaries(args.output, own_too=True)
        kept = ", the slides' finished tiles kept" if run is not None and run.slides else ""
        print(f"infer.py: {stop_word(exc)}; {len(report.done)} image(s) done{kept}, rerun the same command to "
              "resume", file=sys.stderr)
        return exit_status(exc)

if __name__ == "__main__":
    sys.exit(main())
