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
image (see :func:`dataset.readers.extract_windows`).

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
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.patches import PATCH_FORMATS, save_patch, split_by_source
from dataset.readers import READERS, extract_windows, get_reader, merge_types
from misc.io import InputError, check_writable, move_aside, remove_stale_partials
from src.config import config_from_args

__all__ = ["main", "build_parser", "extract_dataset", "sample_patches"]


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


def sample_patches(name: str, image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None,
                   patch_size: int, step: int) -> list[tuple[str, np.ndarray]]:
    """The named patches of one image: ``[(f"{name}_{row:04d}_{col:04d}", HxWx5 int32), ...]``
    (R, G, B, instance id, type id).

    ``image`` HxWx3 uint8 RGB, ``inst_map`` / ``type_map`` HxW int32 (``None`` -> type 0 everywhere).
    """
    if type_map is None:
        type_map = np.zeros_like(inst_map)
    stacked = np.concatenate([image.astype(np.int32), inst_map[..., None].astype(np.int32),
                              type_map[..., None].astype(np.int32)], axis=-1)
    return [(f"{name}_{row:04d}_{col:04d}", patch)
            for (row, col), patch in extract_windows(stacked, patch_size, step, mode="mirror")]


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise InputError(f"{output_dir}: folder is not empty; choose another --output_dir or pass --overwrite")


def _install(partial: Path, output_dir: Path, overwrite: bool) -> Path | None:
    """Rename the complete ``partial`` folder to ``output_dir``; returns where an old non-empty
    ``output_dir`` was moved (``<output_dir>.old-<timestamp>``), or None."""
    _check_output(output_dir, overwrite)  # again: the folder may have changed during the run
    previous = None
    if output_dir.is_dir():
        if any(output_dir.iterdir()):
            previous = move_aside(output_dir)
        else:
            output_dir.rmdir()
    try:
        partial.rename(output_dir)
    except OSError:
        if previous is not None:
            previous.rename(output_dir)  # put the old set back
        raise
    return previous


def extract_dataset(input_dir, output_dir, kind: str, patch_size: int, step: int,
                    type_merge: dict | None = None, overwrite: bool = False, progress: bool = True,
                    fmt: str = "npy", names: list[str] | None = None) -> dict:
    """Extract every image of the data set at ``input_dir`` into ``output_dir``; returns a summary dict
    (``images``, ``patches``, ``bytes``, ``max_type_before_merge``, ``previous``: where ``--overwrite``
    moved the old non-empty output folder, or None).

    ``type_merge`` (old -> new type id, e.g. ``cfg.DATA.TYPE_MERGE``) relabels the types with
    :func:`dataset.readers.merge_types`; only for typed kinds ('consep'). All patches are written to a
    sibling ``<output_dir>.partial-<pid>`` folder that replaces ``output_dir`` only when every image
    succeeded (see the module docstring); on failure ``output_dir`` is untouched. ``fmt``: 'npy' or 'npz'
    (:mod:`dataset.patches`). ``names``: extract only these images (default all).
    """
    if patch_size < step or step <= 0:
        raise InputError(f"--patch_size ({patch_size}) must be >= --step ({step}) > 0")
    if type_merge is not None and kind != "consep":
        raise InputError(f"--merge_types needs typed labels (--kind consep): dataset kind {kind!r} has no type "
                         "labels to merge")
    reader = get_reader(kind, input_dir)
    output_dir = Path(os.path.abspath(output_dir))
    _check_output(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f"{output_dir.name}.partial-{os.getpid()}")
    if partial.exists():  # left by a killed run that had this process id; never a live one
        shutil.rmtree(partial)
    # Partial folders of killed runs (SIGKILL skips every cleanup) hold GBs; running processes' are kept.
    ours = re.compile(rf"^{re.escape(output_dir.name)}\.partial-(\d+)$")
    for stale in remove_stale_partials(output_dir.parent, ours):
        print(f"removed {stale}, left by an interrupted run", file=sys.stderr)
    partial.mkdir()
    summary = {"images": 0, "patches": 0, "bytes": 0, "max_type_before_merge": 0, "previous": None}
    try:
        wanted = set(reader.names if names is None else names)
        for sample in tqdm(reader.samples(wanted), total=len(wanted), desc="images", unit="img", disable=not progress):
            type_map = sample.type_map
            if type_map is not None:
                summary["max_type_before_merge"] = max(summary["max_type_before_merge"],
                                                       int(type_map.max(initial=0)))
                if type_merge is not None:
                    try:
                        type_map = merge_types(type_map, type_merge)
                    except InputError as exc:
                        raise InputError(f"{sample.name}: {exc}") from None
            for patch_name, patch in sample_patches(sample.name, sample.image, sample.inst_map, type_map,
                                                    patch_size, step):
                path = save_patch(partial / patch_name, patch[..., :3].astype(np.uint8), patch[..., 3],
                                  patch[..., 4], fmt)
                summary["patches"] += 1
                summary["bytes"] += path.stat().st_size
            summary["images"] += 1
        previous = _install(partial, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary["previous"] = str(previous) if previous is not None else None
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.holdout > 0) != (args.holdout_dir is not None):
        parser.error("--holdout and --holdout_dir go together")
    try:
        cfg = config_from_args(args.config)
        patch_size = args.patch_size or cfg.DATA.PATCH_SIZE
        step = args.step or cfg.DATA.PATCH_STEP
        type_merge = dict(cfg.DATA.TYPE_MERGE) if args.merge_types else None
        splits = [(args.output_dir, None)]
        check_writable(args.output_dir, "--output_dir")
        if args.holdout:
            kept, held = split_by_source(get_reader(args.kind, args.input_dir).names, args.holdout)
            splits = [(args.output_dir, kept), (args.holdout_dir, held)]
            check_writable(args.holdout_dir, "--holdout_dir")
        summaries = []
        for output_dir, names in splits:
            summaries.append(extract_dataset(args.input_dir, output_dir, args.kind, patch_size, step,
                                             type_merge=type_merge, overwrite=args.overwrite, fmt=args.format,
                                             names=names))
    except (InputError, KeyError, ValueError) as exc:
        print(f"extract_patches.py: error: {exc}", file=sys.stderr)
        return 2
    if args.holdout:
        record = {"holdout_sources": args.holdout, "train": splits[0][1], "holdout": splits[1][1]}
        for output_dir, _ in splits:
            (Path(output_dir) / "split.json").write_text(json.dumps(record, indent=1))
    for (output_dir, _), summary in zip(splits, summaries, strict=True):
        print(f"{summary['images']} images -> {summary['patches']} patches of {patch_size}x{patch_size} "
              f"({args.format}, {summary['bytes'] / 1e9:.2f} GB) in {output_dir}")
        if summary["previous"] is not None:
            print(f"the previous patches were moved to {summary['previous']} (delete it when no longer needed)")
    max_before = max(s["max_type_before_merge"] for s in summaries)
    if args.merge_types and max_before <= max(cfg.DATA.TYPE_MERGE.values()):
        print(f"warning: the largest type id before merging was {max_before}; these labels "
              "look merged already, and merging twice folds types together", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
