"""The README's first command (`make demo`): HoVer-Net's evaluation and inference on the bundled samples.

1. Evaluation: the paper's Fig. 4 instance maps (``<shared>/data/metrics_sample``) scored with
   ``metrics/compute_stats.py``, printed beside the published Table I.
2. Inference: ``infer.py`` on CoNSeP test tiles (``<shared>/data/consep256/test``) with the weights given
   by ``--model`` (``make demo MODEL=path``), then scored against their labels. Without ``--model`` no
   trained HoVer-Net weights exist on this machine, so the network runs with *untrained* (randomly
   initialised) weights: every output is produced and readable, but the nuclei are meaningless; the
   demo says so.

Outputs go to ``output/demo/``; a second run reuses what is complete.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import src  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from metrics.compute_stats import main as compute_stats
from misc.io import colour_instances_to_ids, read_image_rgb, save_label_mat

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLE_I = {"A": {"dice2": 0.6477, "aji": 0.4790, "pq": 0.6803}, "B": {"dice2": 0.9007, "aji": 0.6414, "pq": 0.6863}}


def evaluation_demo(shared: Path, out: Path) -> int:
    from metrics.stats import instance_metrics

    sample = shared / "data" / "metrics_sample"
    truth = colour_instances_to_ids(read_image_rgb(sample / "true.png"))
    print("\n== 1. Evaluation: the paper's Fig. 4 sample (Table I) ==")
    print(f"{'prediction':<12}{'DICE2':>16}{'AJI':>16}{'PQ':>16}   (ours / published)")
    save_label_mat(out / "fig4" / "true" / "fig4.mat", truth)
    for label, name in (("A", "pred_1.png"), ("B", "pred_2.png")):
        pred = colour_instances_to_ids(read_image_rgb(sample / name))
        save_label_mat(out / "fig4" / label / "fig4.mat", pred)
        ours = instance_metrics(truth, pred)
        cells = "".join(f"{ours[k]:>9.4f}/{TABLE_I[label][k]:.4f}" for k in ("dice2", "aji", "pq"))
        print(f"{label:<12}{cells}")
    print("\nThe same maps through the CLI users run (prediction B):")
    return compute_stats(["--mode", "instance", "--true_dir", str(out / "fig4" / "true"),
                          "--pred_dir", str(out / "fig4" / "B")])


def inference_demo(shared: Path, out: Path, model: Path | None, count: int) -> int:
    test = shared / "data" / "consep256" / "test"
    tiles = sorted((test / "Images").glob("*.jpg"))[:count]
    inputs = out / "tiles"
    truths = out / "labels"
    for folder in (inputs, truths):
        folder.mkdir(parents=True, exist_ok=True)
    for tile in tiles:  # a small, fixed sample of the bundled test set, as links (nothing copied)
        for source, target in ((tile, inputs / tile.name), (test / "Labels" / f"{tile.stem}.mat",
                                                              truths / f"{tile.stem}.mat")):
            if not target.exists():
                target.symlink_to(source.resolve())
    print(f"\n== 2. Inference: infer.py on {len(tiles)} CoNSeP test tiles ==")
    if model is None:
        model = out / "untrained.npz"
        if not model.exists():
            from src.config import config_from_args
            from src.model.weights import save_initial_weights

            cfg = config_from_args()
            save_initial_weights(model, cfg, nr_types=cfg.MODEL.NR_TYPES)
        print("No trained weights were given (make demo MODEL=path/to/weights): running with UNTRAINED, randomly\n"
              "initialised weights. Every output below is produced and valid, but the nuclei are meaningless.")
    predictions = out / f"predictions_{model.stem}"  # one folder per model: results never mix
    # The CLI exactly as a user runs it.
    command = [sys.executable, str(REPO_ROOT / "infer.py"), "--input", str(inputs), "--output", str(predictions),
               "--model", str(model)]
    print("$", " ".join(command[1:]), flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
        return code
    print(f"\nOutputs per tile in {predictions}/: <name>.mat .json .png .geojson, and summary.csv:")
    print((predictions / "summary.csv").read_text())
    scores = out / f"scores_{model.stem}.json"
    for mode in ("instance", "type"):
        code = compute_stats(["--mode", mode, "--true_dir", str(truths), "--pred_dir", str(predictions)]
                             + (["--json", str(scores)] if mode == "instance" else []))
        if code != 0:
            return code
    mean = json.loads(scores.read_text())["mean"]
    print(f"Mean PQ over the sample: {mean['pq']:.4f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    parser.add_argument("--model", type=Path, default=None, help="trained weights (.npz or checkpoint)")
    parser.add_argument("--tiles", type=int, default=2, help="CoNSeP test tiles to run (default 2)")
    parser.add_argument("--output", type=Path, default=Path("output/demo"), help="where the demo writes")
    args = parser.parse_args(argv)
    if not (args.shared / "data").is_dir():
        print(f"demo: {args.shared}/data not found; pass --shared (make demo SHARED=path)", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    code = evaluation_demo(args.shared, args.output)
    if code != 0:
        return code
    return inference_demo(args.shared, args.output, args.model, args.tiles)


if __name__ == "__main__":
    sys.exit(main())
