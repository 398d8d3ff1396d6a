#!/usr/bin/env bash
# Trains a bundled small model from scratch on this project's own pipeline, on the CPU: the exact commands
# that produced models/small-consep.npz (CoNSeP's 4 types) and models/small-kumar.npz (Kumar, instance only).
#
#   bash scripts/train_small_model.sh consep|kumar [prepare|train|bundle|restart|evaluate|all]
#
# Environment: SHARED (default ../shared), WORK (patches and run folder; default ../runs/small-<model>, outside
# the checkout so that a fresh clone does not lose it), PY (default .venv/bin/python), PRETRAINED (continue
# from a bundle, e.g. models/small-consep.npz, when the run folder is gone: a new machine).
# Every stage is resumable: `train` run again continues the run folder from its last checkpoint (more epochs:
# EPOCHS=N). Run from the repository root with the environment of `make venv`.
set -euo pipefail
MODEL=${1:?usage: train_small_model.sh consep|kumar [prepare|train|bundle|restart|evaluate|all]}
STAGE=${2:-all}
SHARED=${SHARED:-../shared}
WORK=${WORK:-../runs/small-$MODEL}
PY=${PY:-.venv/bin/python}
# The recipe (models/README.md, "How the recipe was found"): the small preset (widths / 8, HV head starting at
# the zero prediction), the fast geometry, the MSGE over every nuclear pixel alike (the paper's focus; the
# released graph weighted each pixel by its instance id when types are trained), one phase from scratch (Adam
# 1e-3 for epochs 1-30, then 1e-4 to 36), model-best by the post-processed PQ of the held-out tiles. CoNSeP then
# gets RESTARTS warm restarts, each from the bundle of the one before (9 epochs: 1e-3 for 6, 1e-4 for 3,
# model-best again by PQ): validation PQ 0.346 -> 0.372 -> 0.387 (models/README.md, "Warm restarts").
CONFIG=(MODEL.MODE=fast MODEL.PRESET=small TRAIN.SCHEDULE=scratch "TRAIN.BEST_METRIC='pq'" "LOSS.MSGE_FOCUS='binary'")
STEPS=${STEPS:-60}
EPOCHS=${EPOCHS:-36}
RESTART_SCHEDULE="TRAIN.LR_SCHEDULE=((0,1e-3),(6,1e-4))"
case "$MODEL" in
  consep)
    DATA="$SHARED/data/consep256/train"; KIND=consep; HOLDOUT=3
    TESTS=("consep256_test:$SHARED/data/consep256/test"); RESTARTS=${RESTARTS:-2}
    DESCRIPTION="small HoVer-Net (fast, widths/8) trained from scratch on CPU on consep256 train; CoNSeP's 4 types" ;;
  kumar)
    DATA="$WORK/kumar/train"; KIND=instance; HOLDOUT=2; CONFIG+=(MODEL.NR_TYPES=None)
    TESTS=("kumar_same_organ:$WORK/kumar/test_same_organ" "kumar_different_organ:$WORK/kumar/test_different_organ"
           "kumar_all:$WORK/kumar/test"); RESTARTS=${RESTARTS:-0}
    DESCRIPTION="small HoVer-Net (fast, widths/8) trained from scratch on CPU on the 16 Kumar training tiles; no types" ;;
  *) echo "unknown model $MODEL (consep or kumar)" >&2; exit 2 ;;
esac
RUN="$WORK/run"
RESTART_EPOCHS=9  # each warm restart's, in its own run folder $WORK/restart<k>

convert() {
  # Kumar's tiles and instance maps in the label format, one folder per set of split.json
  if [ "$MODEL" = kumar ] && [ ! -d "$WORK/kumar/train" ]; then
    "$PY" -m dataset.convert --format kumar --input "$SHARED/data/kumar" --output "$WORK/kumar"
  fi
}

prepare() {
  convert
  # Compact patches; the crops (consep) or tiles (kumar) of HOLDOUT source tiles held out for validation.
  if [ ! -d "$WORK/train" ]; then
    "$PY" extract_patches.py --input_dir "$DATA" --kind "$KIND" --output_dir "$WORK/train" --holdout "$HOLDOUT" \
        --holdout_dir "$WORK/valid" --format npz --config "${CONFIG[@]}"
  fi
}

train() {
  local init=()
  if [ -n "${PRETRAINED:-}" ] && [ ! -f "$RUN/phase1/checkpoint" ]; then init=(--pretrained "$PRETRAINED"); fi
  "$PY" train.py --gpu '' --data_dir "$WORK/train" --valid_dir "$WORK/valid" --valid_images "$DATA" \
      --out_dir "$RUN" --steps_per_epoch "$STEPS" --epochs "$EPOCHS" "${init[@]}" --config "${CONFIG[@]}"
}

bundle() {
  # model-best (highest validation PQ) of the last warm restart that has one, else of the run, as a float32 .npz
  # with its config and training record (a restart's record holds the one it started from under "init_record")
  local phase="$RUN/phase1" k
  for k in $(seq 1 "$RESTARTS"); do
    if [ -f "$WORK/restart$k/phase1/model-best.index" ]; then phase="$WORK/restart$k/phase1"; fi
  done
  "$PY" -m src.model.bundle --checkpoint "$phase/model-best" --run_dir "$phase" \
      --output "models/small-$MODEL.npz" --dtype float32 --description "$DESCRIPTION"
}

restart() {
  # Restart k starts from the bundle of what came before (bundled here first, so a crash between a restart and
  # its bundle loses nothing) or resumes its own last checkpoint; a finished one is skipped. Ends with the
  # last restart's model-best bundled. Nothing for a model without restarts (RESTARTS=0: kumar).
  local k folder init
  for k in $(seq 1 "$RESTARTS"); do
    folder="$WORK/restart$k"; init=()
    if [ -f "$folder/phase1/finished.json" ]; then continue; fi
    if [ ! -f "$folder/phase1/checkpoint" ]; then bundle; init=(--pretrained "models/small-$MODEL.npz"); fi
    "$PY" train.py --gpu '' --data_dir "$WORK/train" --valid_dir "$WORK/valid" --valid_images "$DATA" \
        --out_dir "$folder" --steps_per_epoch "$STEPS" --epochs "$RESTART_EPOCHS" "${init[@]}" \
        --config "${CONFIG[@]}" "$RESTART_SCHEDULE"
  done
  if [ "$RESTARTS" -gt 0 ]; then bundle; fi
}

evaluate() {
  # Scores on the test sets, never used for training, checkpoint selection or choosing post-processing settings
  # (the published ones: settings chosen on the 3 validation tiles scored worse on test, models/README.md).
  for entry in "${TESTS[@]}"; do
    local name=${entry%%:*} folder=${entry#*:} out="$WORK/eval/${entry%%:*}"
    "$PY" infer.py --input "$folder/Images" --output "$out" --model "models/small-$MODEL.npz" --formats mat \
        --quiet --overwrite
    "$PY" metrics/compute_stats.py --mode instance --true_dir "$folder/Labels" --pred_dir "$out" \
        --json "$out/instance.json"
    if [ "$MODEL" = consep ]; then
      "$PY" metrics/compute_stats.py --mode type --true_dir "$folder/Labels" --pred_dir "$out" \
          --json "$out/type.json"
    fi
  done
  # this model's rows beside the paper's (Table III; Table V for types); rows without published values print alone
  if [ "$MODEL" = consep ]; then
    ROWS=(--row III CoNSeP "$SHARED/data/consep256/test/Labels" "$WORK/eval/consep256_test"
          --row V CoNSeP "$SHARED/data/consep256/test/Labels" "$WORK/eval/consep256_test")
  else
    ROWS=(--row III Kumar "$WORK/kumar/test/Labels" "$WORK/eval/kumar_all"
          --row III "Kumar same organ" "$WORK/kumar/test_same_organ/Labels" "$WORK/eval/kumar_same_organ"
          --row III "Kumar different organ" "$WORK/kumar/test_different_organ/Labels" "$WORK/eval/kumar_different_organ")
  fi
  "$PY" scripts/reproduce_tables.py "${ROWS[@]}" --json "$WORK/eval/tables.json"
  "$PY" - "$MODEL" "$WORK/eval" <<'PY'
import json
import sys
from pathlib import Path

model, root = sys.argv[1], Path(sys.argv[2])
record_path = Path(f"models/small-{model}.json")
record = json.loads(record_path.read_text())
record["scores"] = {}
record["tables"] = json.loads((root / "tables.json").read_text())
for folder in sorted(p for p in root.iterdir() if p.is_dir()):
    scores = {"instance_mean": json.loads((folder / "instance.json").read_text())["mean"]}
    if (folder / "type.json").is_file():
        scores["type"] = json.loads((folder / "type.json").read_text())
    record["scores"][folder.name] = scores
record_path.write_text(json.dumps(record, indent=1))
print(json.dumps(record["scores"], indent=1))
PY
}

case "$STAGE" in
  prepare) prepare ;;
  train) prepare; train ;;
  bundle) bundle ;;
  restart) restart ;;
  evaluate) convert; evaluate ;;
  all) prepare; train; bundle; restart; evaluate ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
