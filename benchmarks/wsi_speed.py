"""Whole-slide inference speed and memory: seconds per mm^2 of tissue and peak RSS, split by stage.

Run from the repository root (CPU, or the GPU TensorFlow sees)::

    python -m benchmarks.wsi_speed --config MODEL.MODE=fast MODEL.PRESET=small [--size 6000] [--model WEIGHTS]
    python -m benchmarks.wsi_speed --memory_only --size 40000     # peak RSS on a large slide, fake network
    python -m benchmarks.wsi_speed --model small-consep --crops <shared>/data/consep256/test/Images --size 3000

A synthetic slide is written first (a pyramidal tiled TIFF at WSI.MODEL_MPP): tissue-like stained texture
with ~1,400 synthetic nuclei per 1000x1000 px on a white background over ``--tissue`` of its area, or with
``--crops DIR`` a mosaic of the real H&E images in DIR (e.g. the 256x256 CoNSeP crops), so a trained model finds
real nuclei. Then
``src.infer.slides.run_wsi`` runs on it through an embedded one-worker Dask cluster, exactly as ``infer.py`` does.
The network has untrained weights unless ``--model`` is given (a bundled model's name such as
``small-consep``, a checkpoint or an .npz, built with the config recorded with it, as ``infer.py`` does; its
speed does not depend on the weights); with untrained weights post-processing sees the network's
meaningless maps, so its time is only indicative. ``--memory_only`` replaces the network by a fake that
calls dark pixels (red < 150) nuclei instantly, with their exact hv maps, to measure what the tiling,
post-processing and assembly hold on a slide of any size (with ``--crops``, the dark nuclei of real H&E).

Reported: read / forward / post-process / write seconds summed over tiles (worker time), wall time,
seconds per mm^2 of tissue, and peak RSS of the client and of the worker process (``ru_maxrss`` of the
children of this process, i.e. the largest worker).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.outputs import default_type_info
from src.config import config_from_args


def _mosaic(crops: list[np.ndarray], y: int, h: int, w: int) -> np.ndarray:
    """Rows ``[y, y + h)`` and columns ``[0, w)`` of an endless mosaic of the equal square ``crops``; the crop of
    each cell is fixed by the cell's position, so every pyramid level shows the same mosaic."""
    cell = crops[0].shape[0]
    r0, r1, cols = y // cell, (y + h - 1) // cell + 1, -(-w // cell)
    out = np.empty(((r1 - r0) * cell, cols * cell, 3), np.uint8)
    for r in range(r0, r1):
        for c in range(cols):
            out[(r - r0) * cell:(r - r0 + 1) * cell, c * cell:(c + 1) * cell] = crops[(r * 7919 + c * 104729)
                                                                                       % len(crops)]
    return out[y - r0 * cell:y - r0 * cell + h, :w]


def load_crops(folder: Path, limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` square RGB crops of one size from ``folder`` (sorted names, spread over the folder)."""
    from misc.io import IMAGE_SUFFIXES, read_image_rgb

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[::max(1, len(files) // limit)][:limit]
    crops = [read_image_rgb(p) for p in files]
    crops = [c for c in crops if c.shape[0] == c.shape[1] == crops[0].shape[0]]
    if not crops:
        raise SystemExit(f"--crops {folder}: no square images")
    return crops


def synthetic_slide(path: Path, size: int, tissue: float, mpp: float, seed: int = 0, strip: int = 1024,
                    crops: list[np.ndarray] | None = None) -> None:
    """Write a ``size`` x ``size`` pyramidal TIFF: a stained band covering ``tissue`` of the width, dark discs
    (or, with ``crops``, a mosaic of those real images; their side must be divisible by the pyramid's factors)."""
    import cv2
    import tifffile

    rng = np.random.default_rng(seed)
    width_tissue = int(size * tissue)

    def strips(level: int):
        factor = 2 ** level
        side = -(-size // factor)
        small = None if crops is None else [cv2.resize(c, (c.shape[1] // factor, c.shape[0] // factor),
                                                       interpolation=cv2.INTER_AREA) for c in crops]
        for y in range(0, side, strip):
            h = min(strip, side - y)
            block = np.full((h, side, 3), 242, np.uint8)
            w = -(-width_tissue // factor)
            if small is not None:
                block[:, :w] = _mosaic(small, y, h, w)
                yield block
                continue
            pink = np.array([230, 160, 200], np.uint8)
            block[:, :w] = pink
            texture = np.tile(rng.integers(-12, 12, (64, 64, 3)), (-(-h // 64), -(-w // 64), 1))[:h, :w]
            block[:, :w] = np.clip(block[:, :w].astype(int) + texture, 0, 255).astype(np.uint8)
            n = int(1.4e-3 * h * w)  # ~1,400 nuclei per 1000x1000 px at level 0
            for _ in range(n):
                cx, cy = int(rng.integers(0, max(1, w))), int(rng.integers(0, h))
                cv2.circle(block, (cx, cy), max(1, 7 // factor), (90, 50, 140), -1)
            yield block

    levels = max(1, int(np.log2(max(1, size // 512))) + 1)
    res = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        for level in range(levels):
            side = -(-size // 2 ** level)
            tiff.write(_tiles(strips(level), side, strip), shape=(side, side, 3), dtype=np.uint8, tile=(256, 256),
                       photometric="rgb", compression="zlib", subfiletype=1 if level else 0,
                       resolution=(res / 2 ** level, res / 2 ** level), resolutionunit="CENTIMETER")


def _tiles(strips, side: int, strip: int, tile: int = 256):
    """Re-cut row strips into the 256x256 tiles tifffile expects from an iterator (row-major, padded)."""
    buffer = np.empty((0, side, 3), np.uint8)
    for block in strips:
        buffer = np.concatenate([buffer, block])
        while len(buffer) >= tile:
            row, buffer = buffer[:tile], buffer[tile:]
            for x in range(0, side, tile):
                out = np.zeros((tile, tile, 3), np.uint8)
                part = row[:, x:x + tile]
                out[:, :part.shape[1]] = part
                yield out
    if len(buffer):
        row = np.zeros((tile, side, 3), np.uint8)
        row[:len(buffer)] = buffer
        for x in range(0, side, tile):
            out = np.zeros((tile, tile, 3), np.uint8)
            part = row[:, x:x + tile]
            out[:, :part.shape[1]] = part
            yield out


class DarkPixelMaps:
    """A stand-in network for memory runs: nuclei = dark blobs of each window's centre with their exact hv maps."""

    def __init__(self, output_shape: int):
        self.output_shape = output_shape

    def __hash__(self):
        return hash(("DarkPixelMaps", self.output_shape))

    def __eq__(self, other):
        return isinstance(other, DarkPixelMaps) and other.output_shape == self.output_shape

    def __call__(self):
        out = self.output_shape

        from scipy import ndimage

        from src.maps.targets import gen_hv_map

        def predict(batch):
            off = (batch.shape[1] - out) // 2
            fg = batch[:, off:off + out, off:off + out, 0] < 150
            maps = np.zeros((len(batch), out, out, 8), np.float32)
            maps[..., 0] = fg
            maps[..., 4] = fg  # type 1
            maps[..., 3] = ~fg
            for k in range(len(batch)):  # exact hv maps of the dark blobs, so post-processing finds nuclei
                maps[k, ..., 1:3] = gen_hv_map(ndimage.label(fg[k])[0])
            return maps
        return predict


def _rss_mb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kB on Linux


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=6000, help="slide side in level-0 px (default 6000)")
    parser.add_argument("--tissue", type=float, default=0.5, help="fraction of the width that is tissue (0.5)")
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument("--model", default=None,
                        help="trained weights: a bundled model's name (small-consep), a checkpoint or an .npz; "
                             "default: untrained weights")
    parser.add_argument("--crops", default=None,
                        help="folder of square H&E crops (e.g. consep256/test/Images) tiled into the tissue band "
                             "instead of the drawn discs, so a trained model finds real nuclei")
    parser.add_argument("--memory_only", action="store_true",
                        help="fake network (dark pixels = nuclei, instant): memory of the rest")
    parser.add_argument("--workers", type=int, default=1, help="embedded Dask workers (default 1)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)

    from src.infer.cluster import ModelFactory, dask_client
    from src.infer.slides import WsiSettings, plan_slide, run_wsi

    if args.model is not None:
        from src.model.weights_file import open_model

        weights = open_model(args.model, args.config)  # the network recorded with the weights, as infer.py builds it
        args.model, cfg = weights.path, weights.cfg
    else:
        cfg = config_from_args(args.config)
    settings = WsiSettings.from_config(cfg, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        slide = tmp / "synthetic.tif"
        synthetic_slide(slide, args.size, args.tissue, cfg.WSI.MODEL_MPP,
                        crops=load_crops(Path(args.crops)) if args.crops else None)
        make_s = time.perf_counter() - start
        if args.memory_only:
            factory = DarkPixelMaps(cfg.MODEL.OUTPUT_SHAPE)
        else:
            model = args.model
            if model is None:
                from src.model.weights import save_initial_weights

                model = str(tmp / "untrained.npz")
                save_initial_weights(model, cfg, nr_types=5)
            factory = ModelFactory(str(Path(model).resolve()), tuple(args.config))
        plan = plan_slide(slide, settings)
        with dask_client(args.workers) as client:
            # build the model in the worker before timing (one warm-up tile's worth of set-up is not counted)
            if not args.memory_only:
                from src.infer.slides import cached_predictor

                client.run(lambda: cached_predictor(factory) and None)
            start = time.perf_counter()
            report = run_wsi([slide], tmp / "out", factory, default_type_info(cfg.DATA.TYPE_NAMES), settings,
                             client=client, progress=False)
            wall = time.perf_counter() - start
            worker_rss = max(client.run(lambda: _rss_mb(resource.RUSAGE_SELF)).values())
        if not report.ok:
            print(f"failed: {report.failed}")
            return 1
        seconds = report.seconds["synthetic"]
        import json

        n = len(json.loads((tmp / "out" / "synthetic.json").read_text())["nuclei"])
        write_s = seconds["write"]

    mm2 = plan.tissue_mm2
    print(f"slide {args.size}x{args.size} px at {cfg.WSI.MODEL_MPP} um/px ({args.size * cfg.WSI.MODEL_MPP / 1000:.2f} "
          f"mm side; written in {make_s:.0f} s); tissue {mm2:.2f} mm^2; {len(plan.tiles)} tiles of "
          f"{settings.tile_size} px (+{settings.margin} px margin); model {cfg.MODEL.PRESET}/{cfg.MODEL.MODE} "
          f"{cfg.MODEL.INPUT_SHAPE}->{cfg.MODEL.OUTPUT_SHAPE}, batch {args.batch_size}, {args.workers} worker(s)"
          + ("; FAKE network (dark pixels)" if args.memory_only else "; untrained weights" if not args.model
             else f"; weights {args.model}") + (f"; tissue = mosaic of the crops in {args.crops}" if args.crops
                                                 else "; tissue = drawn discs"))
    for stage in ("read", "forward", "postproc"):
        print(f"{stage:9s} {seconds[stage]:9.2f} s  {seconds[stage] / mm2:8.2f} s/mm^2")
    print(f"write     {write_s:9.2f} s  {write_s / mm2:8.2f} s/mm^2  (part files, then the assembly: .json, "
          f".geojson, thumbnail overlay)")
    print(f"wall      {wall:9.2f} s  {wall / mm2:8.2f} s/mm^2  ({n} nuclei)")
    print(f"peak RSS: client {_rss_mb(resource.RUSAGE_SELF):.0f} MB, worker {worker_rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
