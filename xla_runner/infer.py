"""``python -m xla_runner infer``: infer.py's per-image outputs with the exported forward graph (no TensorFlow).

  python -m xla_runner infer --artifacts xla/ --model hovernet.npz --input tiles/ --output results/

The same sliding windows, stitching (``src/infer/windows.py``), post-processing (``src/maps/postproc.py``), writers
(``misc/outputs.py``), resume and ``summary.csv`` as ``infer.py`` (``src/infer/tiles.py``); the forward pass is the
exported TensorFlow graph compiled by XLA. ``--model`` is an ``.npz`` of variable name -> array (a checkpoint
of ``python -m xla_runner train``, or one exported from a TensorFlow checkpoint); every network variable must
load. Exit status: 0 all done, 1 some images skipped, 2 the run could not start.
"""
from __future__ import annotations

import argparse
import logging
import sys

from misc.io import InputError, NonFiniteMapsError, folder_lock
from misc.outputs import FORMATS, check_formats, default_type_info, load_type_info
from misc.proc import exit_status, stop_on_sigterm, stop_word


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xla_runner infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="export folder (manifest.json + .mlirbc files)")
    parser.add_argument("--model", required=True,
                        help="weights .npz (variable name -> array) or a bundled model's name (infer.py "
                             "--list-models); the post-processing settings recorded in it apply, as in infer.py")
    parser.add_argument("--input", required=True, help="one image, a folder of images, or a quoted glob")
    parser.add_argument("--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="forward artifact to use, by its batch size (default: the largest exported)")
    parser.add_argument("--types", default=None, help="TYPE_INFO.json; default: CoNSeP's four types")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"from {','.join(FORMATS)} (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides that do not change the graph, e.g. POSTPROC.MIN_SIZE=10")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        args.formats = check_formats(f.strip() for f in args.formats.split(",") if f.strip())
    except ValueError as exc:
        parser.error(f"--formats: {exc}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from src.infer.tiles import TileSettings, check_output_dir, collect_inputs, run_inference, run_record
    from src.model.weights_file import open_model
    from xla_runner.artifacts import Artifacts, XlaPredictor

    try:
        weights = open_model(args.model)
        # what infer.py applies to this file (POSTPROC chosen for the model, its type names), then --config
        artifacts = Artifacts(args.artifacts, [*weights.recorded_overrides(), *args.config])
        cfg = artifacts.cfg
        files = collect_inputs(args.input)
        type_info = load_type_info(args.types) if args.types else default_type_info(cfg.DATA.TYPE_NAMES)
        run_info = run_record(weights, cfg)  # as infer.py records it: either resumes the other's folder
        check_output_dir(args.output, files, args.formats, run_info, args.overwrite)
        predictor = XlaPredictor(artifacts, weights, args.batch_size)
        uncovered = [t for t in range(1, predictor.nr_types or 0) if t not in type_info]
        if uncovered:
            raise InputError(f"type ids {uncovered} of the model have no name/colour in "
                             f"{args.types or 'the default types'}")
    except (InputError, KeyError, ValueError) as exc:
        print(f"xla_runner infer: error: {exc}", file=sys.stderr)
        return 2

    # infer.py's settings (geometry, post-processing, large tiles in blocks) at the exported batch size
    settings = TileSettings.from_config(cfg, batch_size=predictor.batch_size)
    try:
        with folder_lock(args.output, "run"):  # infer.py and xla_runner runs alike: one run per folder
            report = run_inference(files, args.output, predictor, type_info, settings, formats=args.formats,
                                   overwrite=args.overwrite, run_info=run_info, progress=not args.quiet)
    except (NonFiniteMapsError, InputError) as exc:
        print(f"xla_runner infer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        print(f"xla_runner infer: {stop_word(exc)}; rerun the same command to resume", file=sys.stderr)
        return exit_status(exc)
    print(f"{len(report.done)} image(s) written, {len(report.already_complete)} already complete, "
          f"{len(report.failed)} skipped -> {args.output}")
    for path, reason in report.failed.items():
        print(f"xla_runner infer: skipped {path}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
