"""Train HoVer-Net with the published two-phase schedule (spec section 4).

Examples:
  python train.py --gpu 0,1 --data_dir patches/train --valid_dir patches/valid --out_dir runs/consep \
      --pretrained ImageNet-ResNet50-Preact.npz
  python train.py --gpu 0 --phase 2 --data_dir ... --out_dir runs/consep     # phase 2 from runs/consep/phase1

Patches come from extract_patches.py. Each phase writes <out_dir>/phase<k>/ with tensorpack
checkpoints, the best one by validation NP Dice as model-best, stats.json and the log. Re-running the
same command after an interruption resumes from the last checkpoint, and so does asking a finished
phase for more --epochs than it ran; a phase finished with the requested epochs is skipped (all of them
finished: the run is refused). --overwrite starts every requested phase afresh, moving any earlier
directory aside to <dir>.old-<time> (never deleting it). run.json keeps a phase's first settings,
run_history.jsonl one line per start, and init_record.json the training record of a bundled model given as
--pretrained. A run that stops before its last epoch exits with status 1; Ctrl-C
stops it with one line and status 130, SIGTERM with status 143 (rerun the same command to resume). A run folder
another run is using is refused.

--gpu: left out, one tower on whatever TensorFlow sees (GPU 0 if any, else the CPU); --gpu '' forces
the CPU; --gpu 0,1 trains one synchronous tower on each listed GPU (set as CUDA_VISIBLE_DEVICES).
"""
from __future__ import annotations

import argparse
import os
import sys

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.io import InputError, check_writable, folder_lock
from misc.logs import setup_logging
from misc.proc import exit_status, stop_on_sigterm, stop_word


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default=None,
                        help="comma-separated GPU ids, one synchronous tower each (e.g. 0,1; set as "
                             "CUDA_VISIBLE_DEVICES); '' forces one tower on the CPU; default: one tower on whatever "
                             "TensorFlow sees (GPU 0 if any, else the CPU). Without a GPU the towers share the CPU.")
    parser.add_argument("--data_dir", required=True, help="folder of training .npy patches (extract_patches.py)")
    parser.add_argument("--valid_dir", default=None,
                        help="folder of validation .npy patches; NP Dice is reported every epoch and the best "
                             "checkpoint kept (without it only the last checkpoints are kept)")
    parser.add_argument("--valid_images", default=None,
                        help="labelled images (a folder with Images/ and Labels/, as extract_patches.py reads) run "
                             "through inference and post-processing after every epoch: DICE, AJI, PQ and the HV "
                             "maps' correlation and MSE are recorded as tiles_<score> in stats.json and curves.png. "
                             "With a split.json in --valid_dir (extract_patches.py --holdout) only its held-out "
                             "images are used. TRAIN.BEST_METRIC=pq|aji|dice picks model-best by them")
    parser.add_argument("--out_dir", required=True, help="run directory; one sub-folder per phase")
    parser.add_argument("--pretrained", default=None,
                        help="initial weights for the first phase run: an ImageNet Preact-ResNet50 .npz (loaded by "
                             "variable name) or a tensorpack checkpoint; without it phase 1 starts from random "
                             "weights and phase 2 from <out_dir>/phase1")
    parser.add_argument("--phase", type=int, default=None,
                        help="run only this phase (default: every phase of the schedule in order: 1 then 2 for the "
                             "published one)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per phase (default: the schedule's, 50)")
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help="steps per epoch (default: all training patches once per epoch)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="patches per tower per step (default: the schedule's, 8 in phase 1 and 4 in phase 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation processes (default: config DATA.NUM_WORKERS, all cores but one; 0 = "
                             "in-process, for debugging)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. LOSS.MSGE=paper MODEL.NR_TYPES=None (see src/config.py)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and tensorpack's full logs on the console (layer shapes, restored "
                             "variables); they always go to log.log in the phase folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="start every requested phase afresh, whether finished or interrupted (existing phase "
                             "directories are moved aside to <dir>.old-<time>, not deleted)")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def held_out_tiles(cfg, images_dir, valid_dir=None):
    """The ``--valid_images`` scorer: the labelled images of ``images_dir`` (only those named held out in
    ``<valid_dir>/split.json`` when there is one) as a ``metrics.validation.TileScorer``."""
    from dataset.readers import get_reader
    from metrics.validation import TileScorer, held_out_names

    reader = get_reader("instance", images_dir)  # only the instance map is scored; any label layout
    names = held_out_names(valid_dir) if valid_dir is not None else None
    if names is not None:
        missing = sorted(set(names) - set(reader.names))
        if missing:
            raise InputError(f"{images_dir}: lacks {len(missing)} held-out image(s) of {valid_dir}/split.json, "
                             f"e.g. {missing[:3]}")
    tiles = [(s.name, s.image, s.inst_map) for s in reader.samples(None if names is None else set(names))]
    return TileScorer.from_config(cfg, tiles)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    gpus = [] if args.gpu is None else [g.strip() for g in args.gpu.split(",") if g.strip()]
    if args.gpu is not None:  # before TensorFlow is imported; '' hides every GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    setup_logging(args.verbose)  # before TensorFlow loads

    from dataset.dataflow import get_train_dataflow, get_valid_dataflow
    from src.config import config_from_args
    from src.train.trainer import Dataflows, Towers, TrainingIncompleteError, TrainOptions, train

    tiles = None
    if args.valid_images is not None:
        def tiles(cfg):
            return held_out_tiles(cfg, args.valid_images, args.valid_dir)

    try:
        check_writable(args.out_dir, "--out_dir")
        cfg = config_from_args(args.config, is_training=True)
        options = TrainOptions(
            train_dir=args.data_dir, out_dir=args.out_dir, valid_dir=args.valid_dir, towers=Towers.detect(gpus),
            phases=(args.phase,) if args.phase else None, pretrained=args.pretrained, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, num_workers=args.workers,
            overwrite=args.overwrite)
        with folder_lock(args.out_dir, "training run"):  # two runs must never share a run folder
            train(cfg, options, Dataflows(train=get_train_dataflow, valid=get_valid_dataflow, tiles=tiles))
    except (InputError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except TrainingIncompleteError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (stop_on_sigterm)
        print(f"train.py: {stop_word(exc)}; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return exit_status(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
