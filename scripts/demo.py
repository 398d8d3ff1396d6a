"""The README's first command (`make demo`): HoVer-Net's evaluation and inference on the bundled samples.

1. Evaluation: the paper's Fig. 4 instance maps (``<shared>/data/metrics_sample``) scored with
   ``metrics/compute_stats.py``, printed beside the published Table I.
2. Inference: ``infer.py`` on CoNSeP test crops (``<shared>/data/consep256/test``) with the bundled small
   model ``small-consep`` (models/README.md), or the weights given by ``--model`` (``make demo MODEL=path``),
   then scored against their labels and printed beside the paper's CoNSeP numbers (a different model, and
   crops instead of whole tiles: a sanity check, not a reproduction). ``--model untrained`` runs randomly
   initialised weights (valid files, meaningless nuclei).

Outputs go to ``output/demo/``, predictions to one folder per model and weights; a second run reuses what is
complete.
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
# The paper's CoNSeP rows (Table III instance, Table V Fd), for orientation next to the demo's scores.
PAPER_CONSEP = {"dice": 0.853, "aji": 0.571, "dq": 0.702, "sq": 0.778, "pq": 0.547, "f1_d": 0.748}
DEFAULT_MODEL = "small-consep"


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
    print("\nThe same maps through the CLI users run (prediction B). Its 'dice' is DICE1, the Dice of the foreground "
          "pixels; Table I above reports DICE2, the per-nucleus version (metrics.stats.dice2):")
    return compute_stats(["--mode", "instance", "--true_dir", str(out / "fig4" / "true"),
                          "--pred_dir", str(out / "fig4" / "B")])


def run_name(model: str) -> str:
    """The name of a model's prediction folder: its name and the start of its weights' digest, so that new weights
    under the same name (an updated bundle, a run trained further) get a folder of their own instead of meeting
    infer.py's refusal to mix outputs of different weights. Weights that cannot be found keep the bare name
    (infer.py then says what is wrong)."""
    from misc.io import InputError
    from src.model.weights_file import locate_weights, weights_digest

    try:
        digest = weights_digest(locate_weights(model)).partition(":")[2]
    except (InputError, OSError):
        return Path(model).stem
    return f"{Path(model).stem}-{digest[:8]}"


def inference_demo(shared: Path, out: Path, model: str, count: int) -> int:
    from src.model.weights_file import bundled_models

    test = shared / "data" / "consep256" / "test"
    tiles = sorted((test / "Images").glob("*.jpg"))[::max(1, 224 // max(count, 1))][:count]  # spread over tiles
    inputs = out / "tiles"
    truths = out / "labels"
    for folder in (inputs, truths):
        folder.mkdir(parents=True, exist_ok=True)
    for tile in tiles:  # a small, fixed sample of the bundled test set, as links (nothing copied)
        for source, target in ((tile, inputs / tile.name), (test / "Labels" / f"{tile.stem}.mat",
                                                              truths / f"{tile.stem}.mat")):
            if not target.exists():
                target.symlink_to(source.resolve())
    print(f"\n== 2. Inference: infer.py on {len(tiles)} CoNSeP test crops (256x256) ==")
    if model == DEFAULT_MODEL and model not in bundled_models():
        print(f"the bundled model {model!r} is missing from models/; running untrained weights instead")
        model = "untrained"
    if model == "untrained":
        path = out / "untrained.npz"
        if not path.exists():
            from src.config import config_from_args
            from src.model.weights import save_initial_weights

            cfg = config_from_args()
            save_initial_weights(path, cfg, nr_types=cfg.MODEL.NR_TYPES)
        print("Running with UNTRAINED, randomly initialised weights: every output below is produced and valid,\n"
              "but the nuclei are meaningless.")
        model = str(path)
    run = run_name(model)
    predictions = out / f"predictions_{run}"
    # The CLI exactly as a user runs it.
    command = [sys.executable, str(REPO_ROOT / "infer.py"), "--input", str(inputs), "--output", str(predictions),
               "--model", model]
    print("$", " ".join(command[1:]), flush=True)
    code = subprocess.run(command).returncode
    if code != 0:
        return code
    print(f"\nOutputs per crop in {predictions}/: <name>.mat .json .png .geojson, and summary.csv")
    scores = {mode: out / f"scores_{run}_{mode}.json" for mode in ("instance", "type")}
    for mode, path in scores.items():
        code = compute_stats(["--mode", mode, "--true_dir", str(truths), "--pred_dir", str(predictions),
                              "--json", str(path)])
        if code != 0:
            return code
    ours = json.loads(scores["instance"].read_text())["mean"]
    ours["f1_d"] = json.loads(scores["type"].read_text())["f1_d"]
    print(f"\n{'':<34}" + "".join(f"{k.upper():>8}" for k in PAPER_CONSEP))
    print(f"{'this model, ' + str(len(tiles)) + ' test crops':<34}" + "".join(f"{ours[k]:>8.3f}" for k in PAPER_CONSEP))
    print(f"{'paper (full model, 14 test tiles)':<34}" + "".join(f"{v:>8.3f}" for v in PAPER_CONSEP.values()))
    print("(a different, much smaller model scored on 256x256 crops: a sanity check, not a reproduction)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a bundled model's name, weights (.npz or checkpoint) or 'untrained' (default "
                             f"{DEFAULT_MODEL})")
    parser.add_argument("--tiles", type=int, default=8, help="CoNSeP test crops to run (default 8)")
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
