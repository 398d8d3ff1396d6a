"""Peak memory and wall time of infer.py on large tiles, which go in blocks (INFER.BLOCK_SIZE), and the nuclei
of a blocked tile against the same tile processed whole.

Run from the repository root::

    python -m benchmarks.large_tile_memory [--sizes 6000 12000] [--compare_size 3000] [--model small-consep]
        [--crops ../shared/data/consep256/test/Images] [--work DIR]

For each ``--sizes`` N an N x N RGB PNG is written, a mosaic of the real H&E crops in ``--crops`` (the 256x256
CoNSeP test crops by default; the mosaic of ``benchmarks.wsi_speed``, written a band of rows at a time by
``misc.viz.write_png_bands``), and ``infer.py --model MODEL`` (all outputs: .mat, .json, .png, .geojson) runs on it
in a child process. Its peak RSS is the child's ``ru_maxrss`` (``os.wait4``; the whole process: Python,
TensorFlow and the network with its batch, the image, the nuclei, one block) and its wall time includes loading
the model. With ``--compare_size`` M > 0 an M x M tile is also run whole (``--config INFER.BLOCK_SIZE=M``, the
behaviour before blocks) and in blocks (the default block size), and their nuclei are matched by centroid
(within 1 px); unmatched ones are counted by their distance to a block seam. Prints one JSON object.
Files go to ``--work`` (kept) or a temporary folder (removed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.wsi_speed import _mosaic, load_crops
from misc.viz import write_png_bands

ROOT = Path(__file__).resolve().parents[1]


def write_mosaic_png(path: Path, size: int, crops: list[np.ndarray], band_rows: int = 1024) -> None:
    """A ``size`` x ``size`` RGB PNG of the mosaic of ``crops``, never held whole."""
    bands = (_mosaic(crops, y, min(band_rows, size - y), size) for y in range(0, size, band_rows))
    write_png_bands(path, bands, size, size)


def run_infer(image: Path, out: Path, model: str, config: list[str]) -> dict:
    """``infer.py`` on one image in a child process: peak RSS (MB), wall seconds, nuclei written."""
    command = [sys.executable, str(ROOT / "infer.py"), "--input", str(image), "--output", str(out),
               "--model", model, "--quiet", "--overwrite"] + (["--config", *config] if config else [])
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the largest of all children
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    nuclei = json.loads((out / f"{image.stem}.json").read_text())["nuclei"]
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024), "wall_s": round(wall, 1), "nuclei": len(nuclei)}


def compare_nuclei(whole: list[dict], blocked: list[dict], core: int, size: int, tolerance: float = 1.0) -> dict:
    """Match the two runs' nuclei by centroid (within ``tolerance`` px, one to one, nearest first) and count the
    matched pairs of the same type; count the unmatched ones by their distance to the nearest seam of the
    ``core``-px block grid (interior seams only)."""
    from scipy.spatial import cKDTree

    a = np.array([n["centroid"] for n in whole]).reshape(-1, 2)
    b = np.array([n["centroid"] for n in blocked]).reshape(-1, 2)
    pairs = []
    for i, neighbours in enumerate(cKDTree(a).query_ball_tree(cKDTree(b), tolerance)):
        pairs += [(float(np.hypot(*(a[i] - b[j]))), i, j) for j in neighbours]
    used_a, used_b, same_type = set(), set(), 0
    for _, i, j in sorted(pairs):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            same_type += whole[i]["type"] == blocked[j]["type"]
    seams = np.arange(core, size, core, dtype=np.float64)

    def seam_distance(points: np.ndarray) -> np.ndarray:
        if not len(seams):
            return np.full(len(points), np.inf)
        return np.abs(points[:, :, None] - seams[None, None, :]).min(axis=(1, 2))

    far = {}
    for name, points, used in (("whole", a, used_a), ("blocked", b, used_b)):
        lost = points[[k for k in range(len(points)) if k not in used]]
        far[name] = {"unmatched": len(lost), "unmatched_within_100px_of_a_seam": int((seam_distance(lost) < 100).sum())}
    return {"nuclei_whole": len(a), "nuclei_blocked": len(b), "matched_within_1px": len(used_a),
            "matched_same_type": same_type, "whole_only": far["whole"], "blocked_only": far["blocked"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[6000, 12000], help="tile sides (px) to measure")
    parser.add_argument("--compare_size", type=int, default=3000,
                        help="side (px) of the tile run whole and in blocks to compare nuclei (0: skip)")
    parser.add_argument("--model", default="small-consep", help="infer.py --model (default small-consep)")
    parser.add_argument("--crops", default=str(ROOT.parent / "shared" / "data" / "consep256" / "test" / "Images"),
                        help="folder of square H&E crops for the mosaic (default ../shared/data/consep256/test/Images)")
    parser.add_argument("--work", default=None, help="folder for the tiles and outputs (kept); default temporary")
    args = parser.parse_args(argv)

    from src.infer.blocks import block_core
    from src.infer.tiles import TileSettings
    from src.model.weights_file import open_model

    settings = TileSettings.from_config(open_model(args.model, []).cfg)  # the config infer.py builds (no TF)
    core = block_core(settings.block_size, settings.block_margin, settings.output_shape)
    crops = load_crops(Path(args.crops))
    result = {"model": args.model, "block_size": settings.block_size, "block_core": core,
              "block_margin": settings.block_margin, "batch_size": settings.batch_size, "tiles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            image = work / f"mosaic{size}" / f"mosaic{size}.png"
            image.parent.mkdir(exist_ok=True)
            write_mosaic_png(image, size, crops)
            result["tiles"][str(size)] = {"blocks": settings.in_blocks((size, size)),
                                          **run_infer(image, work / f"out{size}", args.model, [])}
            print(json.dumps({str(size): result["tiles"][str(size)]}), file=sys.stderr, flush=True)
        if args.compare_size > 0:
            size = args.compare_size
            image = work / f"compare{size}" / f"compare{size}.png"
            image.parent.mkdir(exist_ok=True)
            write_mosaic_png(image, size, crops)
            runs = {"whole": run_infer(image, work / f"compare{size}_whole", args.model, [f"INFER.BLOCK_SIZE={size}"]),
                    "blocked": run_infer(image, work / f"compare{size}_blocked", args.model, [])}
            nuclei = {name: json.loads((work / f"compare{size}_{name}" / f"{image.stem}.json").read_text())["nuclei"]
                      for name in runs}
            result["compare"] = {"size": size, "runs": runs,
                                 **compare_nuclei(nuclei["whole"], nuclei["blocked"], core, size)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
