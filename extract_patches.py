"""Cut a data set's tiles into mirror-padded training patches (spec section 4).

    python extract_patches.py --input_dir ../shared/data/consep256/train --output_dir patches/train --kind consep

Each window is saved as ``<output_dir>/<image>_<row>_<col>.npy``: one HxWx5 int32 array (R, G, B in
0-255, instance id, type id; type 0 everywhere for instance-only sets). All five channels share int32, the
published single-array layout, because instance ids exceed 255; at 540x540 a patch takes 5.8 MB on disk.
``row``/``col`` (4 digits, zero-padded) are the image coordinates of the top-left of the patch's central
``step x step`` region, the part the network's 80x80 output covers; the windows' central regions tile the
image (see :func:`dataset.readers.extract_windows`).

Every file is written atomically. A non-empty output folder is refused unless ``--overwrite``, which first
deletes the ``.npy`` files directly inside it so that patches of an earlier run cannot mix in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.readers import READERS, extract_windows, get_reader, merge_types
from misc.io import InputError, atomic_path
from src.config import make_config

__all__ = ["main", "build_parser", "extract_dataset", "sample_patches"]


def build_parser() -> argparse.ArgumentParser:
    data = make_config().DATA
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True, help="data set root holding Images/ and Labels/")
    parser.add_argument("--output_dir", required=True, help="folder for the .npy patches")
    parser.add_argument("--kind", choices=sorted(READERS), default="consep",
                        help="label layout: 'consep' (.mat with inst_map and type_map) or 'instance' "
                             "(.mat/.npy/.png/.tif instance maps, no types)")
    parser.add_argument("--patch_size", type=int, default=data.PATCH_SIZE,
                        help=f"window side in pixels (default {data.PATCH_SIZE})")
    parser.add_argument("--step", type=int, default=data.PATCH_STEP,
                        help=f"grid stride = the network output side (default {data.PATCH_STEP})")
    parser.add_argument("--merge_types", action="store_true",
                        help="merge CoNSeP's original types 1..7 into the paper's 4 (DATA.TYPE_MERGE); not for "
                             "labels already merged, such as consep256")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty output folder, deleting its .npy files first")
    return parser


def sample_patches(name: str, image: np.ndarray, inst_map: np.ndarray, type_map: np.ndarray | None,
                   patch_size: int, step: int) -> list[tuple[str, np.ndarray]]:
    """The named patches of one image: ``[(f"{name}_{row:04d}_{col:04d}", HxWx5 int32), ...]``.

    ``image`` HxWx3 uint8 RGB, ``inst_map`` / ``type_map`` HxW int32 (``None`` -> type 0 everywhere).
    """
    if type_map is None:
        type_map = np.zeros_like(inst_map)
    stacked = np.concatenate([image.astype(np.int32), inst_map[..., None].astype(np.int32),
                              type_map[..., None].astype(np.int32)], axis=-1)
    return [(f"{name}_{row:04d}_{col:04d}", patch)
            for (row, col), patch in extract_windows(stacked, patch_size, step, mode="mirror")]


def _prepare_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"{output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise InputError(f"{output_dir}: folder is not empty; choose another --output_dir or pass --overwrite")
        for old in output_dir.glob("*.npy"):
            old.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


def extract_dataset(input_dir, output_dir, kind: str, patch_size: int, step: int,
                    type_merge: dict | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Extract every image of the data set at ``input_dir`` into ``output_dir``; returns a summary dict
    (``images``, ``patches``, ``bytes``, ``max_type_before_merge``)."""
    if patch_size < step or step <= 0:
        raise InputError(f"--patch_size ({patch_size}) must be >= --step ({step}) > 0")
    reader = get_reader(kind, input_dir)  # types are merged below, after noting the original ids
    output_dir = Path(output_dir)
    _prepare_output(output_dir, overwrite)
    summary = {"images": 0, "patches": 0, "bytes": 0, "max_type_before_merge": 0}
    for sample in tqdm(reader, total=len(reader), desc="images", unit="img", disable=not progress):
        type_map = sample.type_map
        if type_map is not None:
            summary["max_type_before_merge"] = max(summary["max_type_before_merge"], int(type_map.max(initial=0)))
            if type_merge is not None:
                try:
                    type_map = merge_types(type_map, type_merge)
                except InputError as exc:
                    raise InputError(f"{sample.name}: {exc}") from None
        for patch_name, patch in sample_patches(sample.name, sample.image, sample.inst_map, type_map,
                                                patch_size, step):
            with atomic_path(output_dir / f"{patch_name}.npy") as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(patch))
            summary["patches"] += 1
            summary["bytes"] += patch.nbytes
        summary["images"] += 1
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = make_config()
    if args.merge_types and args.kind != "consep":
        print(f"error: --merge_types needs typed labels (--kind consep), not --kind {args.kind}", file=sys.stderr)
        return 2
    try:
        summary = extract_dataset(args.input_dir, args.output_dir, args.kind, args.patch_size, args.step,
                                  type_merge=dict(cfg.DATA.TYPE_MERGE) if args.merge_types else None,
                                  overwrite=args.overwrite)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['images']} images -> {summary['patches']} patches of {args.patch_size}x{args.patch_size}x5 "
          f"int32 ({summary['bytes'] / 1e9:.2f} GB) in {args.output_dir}")
    if args.merge_types and summary["max_type_before_merge"] <= max(cfg.DATA.TYPE_MERGE.values()):
        print(f"warning: the largest type id before merging was {summary['max_type_before_merge']}; these labels "
              "look merged already, and merging twice folds types together", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
