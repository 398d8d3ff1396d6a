"""Overfit check: can this training path teach the network HV maps? Train N steps on the patches of K crops with
augmentation off, then score the same crops the way a user sees them (issue 20).

Run from the repository root::

    python -m benchmarks.overfit --steps 400 --json overfit.json \\
        --config MODEL.MODE=fast MODEL.PRESET=small TRAIN.SCHEDULE=scratch MODEL.HEAD_ZERO_INIT="('hv',)"

The crops (default: the issue's probe, four consep256 training crops, two of them with nuclei) are cut into
patches exactly as ``extract_patches.py`` cuts a data set (mirror padding, the mode's patch size and step);
each patch is mapped once by the training mapper with augmentation off (centre crop and targets, the
validation mapping), and tensorpack trains on those fixed datapoints through :func:`src.train.trainer.train`, the
code ``train.py`` runs (towers, callbacks, schedule, checkpoints). The last checkpoint is then run over each
whole crop by the inference path (``src.infer.windows.predict_tile`` with the strict predictor) and
post-processed with the config's ``POSTPROC`` settings. Reported per crop and as the mean over the crops
with nuclei:

``metrics.validation.tile_scores`` (what ``train.py --valid_images`` records every epoch):

* ``np_dice``: Dice of ``np_prob >= POSTPROC.NP_THRESHOLD`` against the true nuclear pixels;
* ``hv_corr_x`` / ``hv_corr_y``: Pearson correlation of predicted and target HV on the true nuclear pixels
  (target: ``src.maps.targets.gen_targets`` on the whole crop, the config's ``TARGETS`` settings);
* ``hv_mse`` beside ``hv_mse_zero`` (the MSE of a network that predicts 0 everywhere);
* ``dice``, ``aji``, ``pq`` (and the rest of :func:`metrics.stats.instance_metrics`) of the post-processed
  instances.

Writes ``--json`` (settings, seconds, the training loss per epoch, the scores) and ``--picture`` (per crop:
image, target and predicted HV x / y, NP probability, predicted instances). Exit status 0 whatever the
scores: the bounds live in ``tests/test_overfit.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from misc.io import InputError, write_json_atomic

# The issue-20 probe: two crops with touching nuclei and two without nuclei (stroma / lumen).
PROBE_CROPS = ("train_1_000", "train_1_005", "train_2_003", "train_4_010")


def _fixed_datapoints(cfg, patch_dir: Path) -> list:
    from dataset.patches import TrainingDataPreprocessor, list_patches

    mapper = TrainingDataPreprocessor(cfg, is_training=False)
    return [mapper([path, 0]) for path in list_patches(patch_dir)]


def _fixed_train_flow(datapoints: list, seed: int):
    """Factory for ``src.train.trainer.Dataflows.train``: the fixed datapoints reshuffled every pass, endless."""
    from tensorpack.dataflow import BatchData, DataFromList, RepeatedData

    class _SeededList(DataFromList):
        def reset_state(self):
            super().reset_state()
            self.rng = np.random.RandomState(seed)

    def make(cfg, data_dir, batch_size, num_workers=None):
        if len(datapoints) < batch_size:
            raise InputError(f"{len(datapoints)} patches cannot fill one batch of {batch_size}")
        return BatchData(RepeatedData(_SeededList(datapoints, shuffle=True), -1), batch_size, remainder=False)

    return make


def _picture(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    from matplotlib.figure import Figure

    from misc.io import atomic_path
    from misc.viz import visualize_instances

    titles = ("image", "target hv x", "target hv y", "predicted hv x", "predicted hv y", "np probability",
              "predicted instances")
    fig = Figure(figsize=(2.2 * len(titles), 2.3 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), len(titles), squeeze=False))
    for r, (name, image, hv_true, maps, inst_pred) in enumerate(rows):
        panels = (image, hv_true[..., 0], hv_true[..., 1], maps[..., 1], maps[..., 2], maps[..., 0],
                  visualize_instances(image, inst_pred))
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if panel.ndim == 3:
                ax.imshow(panel)
            else:
                ax.imshow(panel, cmap="coolwarm" if c in (1, 2, 3, 4) else "gray",
                          vmin=-1 if c in (1, 2, 3, 4) else 0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.08)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def run_overfit(cfg, samples, steps: int, batch_size: int, steps_per_epoch: int, work_dir: Path,
                seed: int = 0) -> dict:
    """Train ``steps`` steps on the patches of ``samples`` (``dataset.readers.Sample``) and score them.

    Returns the record the module docstring describes, without writing it; ``work_dir`` receives the patches
    and the run folder.
    """
    import tensorflow as tf

    from dataset.extraction import sample_patches
    from dataset.patches import save_patch
    from metrics.validation import TileScorer, mean_tile_scores, tile_scores
    from src.infer.predictor import HoVerNetPredictor
    from src.infer.windows import predict_tile
    from src.train.trainer import Dataflows, TrainOptions, train

    patch_dir = work_dir / "patches"
    patch_dir.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        for name, patch in sample_patches(sample.name, sample.image, sample.inst_map, sample.type_map,
                                          cfg.DATA.PATCH_SIZE, cfg.DATA.PATCH_STEP):
            save_patch(patch_dir / name, patch[..., :3].astype(np.uint8), patch[..., 3], patch[..., 4], "npz")
    datapoints = _fixed_datapoints(cfg, patch_dir)

    epochs = max(1, -(-steps // steps_per_epoch))
    options = TrainOptions(train_dir=patch_dir, out_dir=work_dir / "run", epochs=epochs,
                           steps_per_epoch=steps_per_epoch, batch_size=batch_size, num_workers=0)
    start = time.perf_counter()
    phase_dir = train(cfg, options, Dataflows(train=_fixed_train_flow(datapoints, seed)))[-1]
    train_s = time.perf_counter() - start
    stats = json.loads((phase_dir / "stats.json").read_text())
    tf.compat.v1.reset_default_graph()

    predictor = HoVerNetPredictor(phase_dir, cfg)  # its latest checkpoint
    scorer = TileScorer.from_config(cfg, [(s.name, s.image, s.inst_map) for s in samples])
    per_crop, rows = {}, []
    for tile in scorer.tiles:
        maps = predict_tile(tile.image, predictor, batch_size=cfg.INFER.BATCH_SIZE,
                            input_shape=cfg.MODEL.INPUT_SHAPE, output_shape=cfg.MODEL.OUTPUT_SHAPE)
        per_crop[tile.name], inst_pred = tile_scores(maps, tile.inst_map, tile.hv_target, scorer.postproc)
        rows.append((tile.name, tile.image, tile.hv_target, maps, inst_pred))
    return {
        "patches": len(datapoints), "steps": epochs * steps_per_epoch, "batch_size": batch_size,
        "presentations_per_patch": epochs * steps_per_epoch * batch_size / len(datapoints),
        "train_seconds": round(train_s, 1),
        "loss_per_epoch": [{k: v for k, v in r.items() if k.startswith("loss_") or k in ("epoch_num", "overall_cost")}
                           for r in stats],
        "mean_over_crops_with_nuclei": mean_tile_scores(list(per_crop.values())), "per_crop": per_crop, "_rows": rows,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overfit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/consep256/train",
                        help="a labelled folder (Images/ + Labels/, CoNSeP .mat labels); default consep256 train")
    parser.add_argument("--crops", default=",".join(PROBE_CROPS), help="comma-separated image names in --data")
    parser.add_argument("--steps", type=int, default=400, help="training steps (rounded up to whole epochs)")
    parser.add_argument("--batch_size", type=int, default=4, help="patches per step")
    parser.add_argument("--steps_per_epoch", type=int, default=50, help="steps between checkpoints / loss records")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the order of the patches (TensorFlow's initialisers stay unseeded)")
    parser.add_argument("--work_dir", default=None, help="keep patches and the run folder here (default: a "
                                                         "temporary folder, removed afterwards)")
    parser.add_argument("--json", default=None, help="write the record here")
    parser.add_argument("--picture", default=None, help="write the side-by-side picture here (PNG)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides (mode, preset, recipe options, e.g. MODEL.HEAD_ZERO_INIT=\"('hv',)\")")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "steps_per_epoch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)
    from dataset.readers import get_reader
    from metrics.validation import TILE_SCORE_KEYS
    from src.config import config_from_args

    try:
        cfg = config_from_args(args.config)
        names = [n.strip() for n in args.crops.split(",") if n.strip()]
        reader = get_reader("consep", args.data)
        missing = sorted(set(names) - set(reader.names))
        if missing:
            raise InputError(f"{args.data}: no image(s) {missing}")
        samples = list(reader.samples(set(names)))
    except (InputError, KeyError, ValueError) as exc:
        print(f"overfit: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="overfit-") as tmp:
        work_dir = Path(args.work_dir) if args.work_dir else Path(tmp)
        record = run_overfit(cfg, samples, args.steps, args.batch_size, args.steps_per_epoch, work_dir, args.seed)
    rows = record.pop("_rows")
    record = {"config": args.config, "crops": names, **record}
    if args.picture:
        _picture(Path(args.picture), rows)
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    mean = record["mean_over_crops_with_nuclei"]
    print(f"{record['steps']} steps x {record['batch_size']} on {record['patches']} patches "
          f"({record['presentations_per_patch']:.0f} presentations each) in {record['train_seconds']:.0f} s")
    print("crops with nuclei: " + ", ".join(f"{k} {mean[k]:.3f}" for k in TILE_SCORE_KEYS))
    for name, s in record["per_crop"].items():
        print(f"  {name}: " + ", ".join(f"{k} {s[k]:.3f}" for k in TILE_SCORE_KEYS)
              + f", nuclei {s['nuclei_pred']}/{s['nuclei_true']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
