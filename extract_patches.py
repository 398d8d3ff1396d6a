"""Cut a data set's tiles into mirror-padded training patches (spec section 4).

    python extract_patches.py --input_dir ../shared/data/consep256/train --output_dir patches/train --kind consep
    python extract_patches.py --input_dir ../shared/data/consep256/train --output_dir patches/train \
        --holdout 3 --holdout_dir patches/valid --format npz --config MODEL.MODE=fast

Each window is saved as ``<output_dir>/<image>_<row>_<col>.<npy|npz>``. ``--format npy`` (default, the
published layout): one HxWx5 int32 array (R, G, B in 0-255, instance id, type id; type 0 everywhere for
instance-only sets), 5.8 MB per 540x540 patch. ``--format npz``: the compact store of
``dataset/patches.py`` (uint8 image, uint16 ids, uint8 types, compressed), the same content in a few
hundred KB. The patch size and step follow from the model geometry (``MODEL.MODE``): twice the network
input and the network output (540/80 original, 512/164 fast).
``row``/``col`` (4 digits, zero-padded) are the image coordinates of the top-left of the patch's central
``step x step`` region, the part the network's 80x80 output covers; the windows' central regions tile the
image (see :func:`dataset.extraction.cut_patches`; the library behind this command line is
:mod:`dataset.extraction`).

The set is written atomically as a whole: patches go to a sibling ``<output_dir>.partial-<pid>`` folder,
which is renamed to ``<output_dir>`` only once every image has succeeded, so an existing ``<output_dir>``
always holds one complete run. On any failure (or interruption) the partial folder is removed and
``<output_dir>`` is left as it was; a partial folder that a killed run (SIGKILL) could not remove is removed,
with a message, by the next run writing beside it. A non-empty output folder is refused unless ``--overwrite``,
which moves the old folder aside to ``<output_dir>.old-<timestamp>`` (kept, not deleted: remove it yourself) when the
new set is complete, so patches of two runs never mix.

``--holdout K --holdout_dir DIR`` holds out the crops of K source tiles (the image name without its trailing
``_<index>``, e.g. ``train_10`` for ``train_10_003``; evenly spaced in sorted order) into DIR, for validation:
crops of one tile are never on both sides. ``split.json`` in both folders lists the split.
"""
from __future__ import annotations

import argparse
import sys

from dataset.extraction import extract_sets
from dataset.patches import PATCH_FORMATS
from dataset.readers import READERS
from misc.io import InputError, check_writable
from misc.proc import exit_status, stop_on_sigterm, stop_word
from src.config import config_from_args

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extract_patches.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, help="data set root holding Images/ and Labels/")
    parser.add_argument("--output_dir", required=True, help="folder for the .npy patches")
    parser.add_argument("--kind", choices=sorted(READERS), default="consep",
                        help="label layout: 'consep' (.mat with inst_map and type_map) or 'instance' "
                             "(.mat/.npy/.png/.tif instance maps, no types)")
    parser.add_argument("--patch_size", type=int, default=None,
                        help="window side in pixels (default: config DATA.PATCH_SIZE, twice the network input: 540 "
                             "original, 512 fast)")
    parser.add_argument("--step", type=int, default=None,
                        help="grid stride (default: config DATA.PATCH_STEP, the network output side: 80 original, "
                             "164 fast)")
    parser.add_argument("--format", choices=PATCH_FORMATS, default="npy",
                        help="'npy': published HxWx5 int32 arrays (5.8 MB per 540x540 patch); 'npz': compact "
                             "compressed store (uint8/uint16), read by train.py alike")
    parser.add_argument("--holdout", type=int, default=0,
                        help="hold out the crops of this many source tiles into --holdout_dir (validation split by "
                             "tile; see above)")
    parser.add_argument("--holdout_dir", default=None, help="folder for the held-out patches (with --holdout)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. MODEL.MODE=fast (the patch geometry follows the mode)")
    parser.add_argument("--merge_types", action="store_true",
                        help="merge CoNSeP's original types 1..7 into the paper's 4 (DATA.TYPE_MERGE); not for "
                             "labels already merged, such as consep256")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output folder; the old one is moved to "
                             "<output_dir>.old-<timestamp> once the new patches are complete")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.holdout > 0) != (args.holdout_dir is not None):
        parser.error("--holdout and --holdout_dir go together")
    stop_on_sigterm()
    try:
        cfg = config_from_args(args.config)
        patch_size = args.patch_size or cfg.DATA.PATCH_SIZE
        step = args.step or cfg.DATA.PATCH_STEP
        type_merge = dict(cfg.DATA.TYPE_MERGE) if args.merge_types else None
        check_writable(args.output_dir, "--output_dir")
        if args.holdout:
            check_writable(args.holdout_dir, "--holdout_dir")
        results = extract_sets(args.input_dir, args.output_dir, args.kind, patch_size, step,
                               holdout=args.holdout, holdout_dir=args.holdout_dir, type_merge=type_merge,
                               overwrite=args.overwrite, fmt=args.format)
    except (InputError, KeyError, ValueError) as exc:
        print(f"extract_patches.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the partial folder is gone, the output as it was
        print(f"extract_patches.py: {stop_word(exc)}; nothing "
              "was written to --output_dir", file=sys.stderr)
        return exit_status(exc)
    for output_dir, summary in results:
        print(f"{summary['images']} images -> {summary['patches']} patches of {patch_size}x{patch_size} "
              f"({args.format}, {summary['bytes'] / 1e9:.2f} GB) in {output_dir}")
        if summary["previous"] is not None:
            print(f"the previous patches were moved to {summary['previous']} (delete it when no longer needed)")
    max_before = max(s["max_type_before_merge"] for _, s in results)
    if args.merge_types and max_before <= max(cfg.DATA.TYPE_MERGE.values()):
        print(f"warning: the largest type id before merging was {max_before}; these labels "
              "look merged already, and merging twice folds types together", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
