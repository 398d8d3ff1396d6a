"""Training dataflow throughput: augmented patches per second per CPU core, and cores needed to feed a GPU.

    python -m benchmarks.dataflow_speed                      # real consep256 crops if ../shared is present
    python -m benchmarks.dataflow_speed --synthetic --zmq_workers 0
    python -m benchmarks.dataflow_speed --format npz --zmq_workers 0     # the compact patch store

1. Makes patches in a temporary folder: ``extract_patches`` on the first ``--images`` crops of ``--source``
   (default ``../shared/data/consep256/train``), or synthetic 540x540 patches of discs with ``--synthetic``
   or when the source is absent.
   ``--format`` picks the patch format (``npy`` published, ``npz`` compact); the mean file size is printed.
2. Times the training mapper (load the patch, geometric + photometric augmentation, targets) in this one
   process, stage by stage, and reports patches/s/core and the cores needed for a target rate (the
   original model trains at roughly 100-200 patches/s on one H100).
3. Optionally times the full multi-process path (``get_train_dataflow`` with ZMQ workers) with tensorpack's
   ``TestDataSpeed``.
"""
from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from dataset.augment import apply_geometry, augment_photometric, centre_crop, sample_geometry
from dataset.dataflow import PatchDataFlow, TrainingDataPreprocessor, get_train_dataflow, load_patch
from dataset.extraction import extract_dataset
from dataset.patches import save_patch
from src.config import config_from_args
from src.maps.targets import gen_targets

__all__ = ["main", "make_patches", "time_mapper"]


def make_patches(out_dir: Path, source: Path | None, images: int, cfg, seed: int = 0, fmt: str = "npy") -> int:
    """Fill ``out_dir`` with ``fmt`` patches; returns how many. Real crops from ``source`` when given, else
    synthetic."""
    if source is not None:
        with tempfile.TemporaryDirectory() as subset:
            subset = Path(subset)
            for folder in ("Images", "Labels"):
                (subset / folder).mkdir()
            names = sorted(p.name for p in (source / "Images").iterdir())[:images]
            for name in names:
                (subset / "Images" / name).symlink_to((source / "Images" / name).resolve())
                label = f"{Path(name).stem}.mat"
                (subset / "Labels" / label).symlink_to((source / "Labels" / label).resolve())
            summary = extract_dataset(subset, out_dir, "consep", cfg.DATA.PATCH_SIZE, cfg.DATA.PATCH_STEP,
                                      progress=False, fmt=fmt)
        return summary["patches"]
    rng = np.random.default_rng(seed)
    size = cfg.DATA.PATCH_SIZE
    rows, cols = np.mgrid[:size, :size]
    count = images * 16
    for k in range(count):
        inst = np.zeros((size, size), np.int32)
        for n, (r, c) in enumerate(rng.integers(0, size, (250, 2)), start=1):  # ~ CoNSeP nuclear density
            inst[(rows - r) ** 2 + (cols - c) ** 2 <= rng.integers(5, 12) ** 2] = n
        types = np.where(inst > 0, inst % 4 + 1, 0)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        save_patch(out_dir / f"synthetic_{k:03d}", image, inst, types, fmt)
    return count


def time_mapper(patch_dir: Path, cfg, n: int, seed: int = 0) -> dict:
    """Seconds per patch of each training-mapper stage, single process, over ``n`` patches (cycled)."""
    mapper = TrainingDataPreprocessor(cfg, is_training=True)
    source = PatchDataFlow(patch_dir, seed=seed)
    source.reset_state()
    datapoints = list(itertools.islice(itertools.cycle(list(source)), n + 2))
    for dp in datapoints[:2]:  # warm-up: imports, OpenCV thread pools
        mapper(dp)
    stages = {"load": 0.0, "geometry": 0.0, "photometric": 0.0, "targets": 0.0}
    start_all = time.perf_counter()
    for path, dp_seed in datapoints[2:]:
        rng = np.random.RandomState(dp_seed)
        t0 = time.perf_counter()
        image, labels = load_patch(path, mapper.input_shape)
        t1 = time.perf_counter()
        image, labels = apply_geometry(image, labels, sample_geometry(rng, image.shape[:2], mapper.aug))
        image, labels = centre_crop(image, mapper.input_shape), centre_crop(labels, mapper.input_shape)
        t2 = time.perf_counter()
        image = augment_photometric(np.ascontiguousarray(image), rng, mapper.aug)
        t3 = time.perf_counter()
        gen_targets(np.ascontiguousarray(labels[..., 0]), np.ascontiguousarray(labels[..., 1]),
                    mapper.output_shape, min_instance_size=mapper.min_instance_size)
        t4 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[key] += dt
    total = time.perf_counter() - start_all
    full = time.perf_counter()
    for dp in datapoints[2:]:
        mapper(dp)
    stages = {key: value / n for key, value in stages.items()}
    stages["total"] = total / n
    stages["mapper_call"] = (time.perf_counter() - full) / n
    return stages


def time_zmq(patch_dir: Path, cfg, workers: int, batch_size: int, batches: int) -> float:
    """Patches per second through ``get_train_dataflow`` with ``workers`` ZMQ processes (TestDataSpeed)."""
    from tensorpack.dataflow import TestDataSpeed

    flow = get_train_dataflow(cfg, patch_dir, batch_size=batch_size, num_workers=workers, seed=0)
    start = time.perf_counter()
    TestDataSpeed(flow, size=batches, warmup=2).start()
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="../shared/data/consep256/train",
                        help="data set with Images/ and Labels/ (consep layout) to cut patches from")
    parser.add_argument("--synthetic", action="store_true", help="use synthetic patches even if --source exists")
    parser.add_argument("--images", type=int, default=2, help="source images to cut (16 patches each at 256 px)")
    parser.add_argument("--n", type=int, default=64, help="patches to time in the single-process loop")
    parser.add_argument("--targets", type=float, nargs=2, default=(100.0, 200.0),
                        help="GPU consumption rates (patches/s) to size the worker pool for")
    parser.add_argument("--zmq_workers", type=int, default=2, help="ZMQ workers for TestDataSpeed (0: skip)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="batches timed by TestDataSpeed")
    parser.add_argument("--format", choices=("npy", "npz"), default="npy", help="patch format to time")
    parser.add_argument("--config", nargs="*", default=[], help="KEY=VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = config_from_args(args.config)

    source = Path(args.source)
    use_real = not args.synthetic and (source / "Images").is_dir()
    with tempfile.TemporaryDirectory(prefix="hovernet-bench-") as tmp:
        patch_dir = Path(tmp)
        count = make_patches(patch_dir, source if use_real else None, args.images, cfg, fmt=args.format)
        kind = f"real patches from {source}" if use_real else "synthetic patches"
        size_mb = sum(p.stat().st_size for p in patch_dir.glob(f"*.{args.format}")) / count / 1e6
        print(f"{count} {kind} ({cfg.DATA.PATCH_SIZE}x{cfg.DATA.PATCH_SIZE}, .{args.format}, {size_mb:.2f} MB "
              f"each); input {cfg.MODEL.INPUT_SHAPE}, output {cfg.MODEL.OUTPUT_SHAPE}, nr_types {cfg.MODEL.NR_TYPES}")

        stages = time_mapper(patch_dir, cfg, args.n)
        print(f"\nsingle process, training mapper, mean over {args.n} patches:")
        for key in ("load", "geometry", "photometric", "targets", "total"):
            print(f"  {key:<12s}{stages[key] * 1e3:8.2f} ms")
        rate = 1.0 / stages["mapper_call"]
        print(f"  mapper call {stages['mapper_call'] * 1e3:8.2f} ms  ->  {rate:.1f} patches/s per core")
        for target in args.targets:
            print(f"  to feed {target:.0f} patches/s: {math.ceil(target / rate)} worker cores "
                  f"(+1 for the main process)")

        if args.zmq_workers > 0:
            speed = time_zmq(patch_dir, cfg, args.zmq_workers, args.batch_size, args.batches)
            print(f"\nget_train_dataflow with {args.zmq_workers} ZMQ workers, batch {args.batch_size}: "
                  f"{speed:.1f} patches/s ({speed / args.zmq_workers:.1f} per worker) on this machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
