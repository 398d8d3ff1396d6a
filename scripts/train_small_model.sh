#!/usr/bin/env bash
# Re-trains the bundled small model (models/small-consep.npz) from scratch on this project's own pipeline:
# the exact commands that produced it. CPU only; about 2 hours on 2 cores. Run from the repository root with
# the shared data beside the checkout (../shared) and the environment of `make venv`.
#   bash scripts/train_small_model.sh [SHARED] [WORK]
set -euo pipefail
SHARED=${1:-../shared}
WORK=${2:-data/small}
PY=${PY:-.venv/bin/python}
# LOSS.MSGE_FOCUS=binary: the bundled file was trained before the published id-weighted focus existed
CONFIG=(MODEL.MODE=fast MODEL.PRESET=small TRAIN.SCHEDULE=scratch TARGETS.HV_PUBLISHED_OFFSET=True LOSS.MSGE_FOCUS=binary)

# 1. Compact patches; the crops of 3 of the 27 CoNSeP training tiles are held out for validation (by tile).
"$PY" extract_patches.py --input_dir "$SHARED/data/consep256/train" --output_dir "$WORK/train" \
    --holdout 3 --holdout_dir "$WORK/valid" --format npz --config "${CONFIG[@]}"
# 2. One phase from scratch, 18 epochs of 70 steps of 8 patches, best checkpoint by validation NP Dice.
"$PY" train.py --gpu '' --data_dir "$WORK/train" --valid_dir "$WORK/valid" --out_dir "$WORK/run" \
    --steps_per_epoch 70 --config "${CONFIG[@]}"
# 3. The best checkpoint as an fp16 .npz carrying its config and training record.
"$PY" -m src.model.bundle --checkpoint "$WORK/run/phase1/model-best" --run_dir "$WORK/run/phase1" \
    --output models/small-consep.npz
# 4. Scores on the held-out test split (never used for training or selection) and on CPM-15 (another lab and
#    organ, instance labels only), written into the training record models/small-consep.json.
for SET in consep256/test cpm15; do
    OUT="output/small-consep-eval/${SET//\//-}"
    "$PY" infer.py --input "$SHARED/data/$SET/Images" --output "$OUT" --model models/small-consep.npz \
        --formats mat --quiet
    "$PY" metrics/compute_stats.py --mode instance --true_dir "$SHARED/data/$SET/Labels" --pred_dir "$OUT" \
        --json "$OUT/instance.json"
done
"$PY" metrics/compute_stats.py --mode type --true_dir "$SHARED/data/consep256/test/Labels" \
    --pred_dir output/small-consep-eval/consep256-test --json output/small-consep-eval/consep256-test/type.json
"$PY" - <<'PY'
import json
from pathlib import Path

root = Path("output/small-consep-eval")
record_path = Path("models/small-consep.json")
record = json.loads(record_path.read_text())
record["scores"] = {
    "consep256_test": {"instance_mean": json.loads((root / "consep256-test/instance.json").read_text())["mean"],
                       "type": json.loads((root / "consep256-test/type.json").read_text())},
    "cpm15": {"instance_mean": json.loads((root / "cpm15/instance.json").read_text())["mean"]},
}
record_path.write_text(json.dumps(record, indent=1))
print(json.dumps(record["scores"], indent=1))
PY
