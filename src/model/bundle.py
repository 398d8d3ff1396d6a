"""Packing a training run into a bundled model (``models/<name>.npz``; found by name by
:func:`src.model.weights_file.locate_weights`).

A bundled model is ``models/<name>.npz``: every inference variable of the network (training state dropped),
as float32 or float16 (half the size; :func:`src.model.weights.read_weights` casts back to float32), plus JSON
metadata under :data:`src.model.weights_file.METADATA_KEY`: the ``MODEL`` config values the graph needs (mode,
preset, widths, type count), so ``infer.py --model <name>`` rebuilds the right network without flags, and a
one-line description. ``models/<name>.json`` beside it is the training record (data, split, schedule, steps,
wall time, validation curve, scores) and ``models/<name>-curves.png`` the training curves.

    python -m src.model.bundle --checkpoint data/small/run/phase1/model-best --run_dir data/small/run/phase1 \\
        --output models/small-consep.npz --description "..."
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from misc.io import InputError, write_json_atomic
from src.config import config_from_args
from src.model.weights_file import INIT_RECORD, UNRECORDED_MODEL_KEYS, read_npz, write_npz

__all__ = ["write_bundle", "record_postproc", "chained_history", "main"]

_FP16_MAX = float(np.finfo(np.float16).max)


def write_bundle(checkpoint, model_cfg: dict, output, description: str, postproc: dict | None = None,
                 dtype: str = "float16") -> dict:
    """Write the inference variables of ``checkpoint`` as a float16 ``.npz`` with metadata; returns the metadata.

    ``model_cfg``: the ``MODEL`` section the run trained with (from its ``run.json``). ``postproc``:
    ``POSTPROC`` values chosen for this model on its validation set (``scripts/select_postproc.py``), applied
    by ``infer.py`` before ``--config``. ``dtype``: 'float16' halves the file (outputs then differ from the
    checkpoint's by float16 rounding; a variable whose values overflow float16 is kept in float32) or
    'float32' (the checkpoint's values exactly).
    """
    from src.model.weights import is_training_state, read_weights

    weights = {k: v for k, v in read_weights(checkpoint).items() if not is_training_state(k)}
    packed = {}
    for name, value in weights.items():
        value = np.asarray(value)
        if dtype == "float16" and value.dtype == np.float32 and np.abs(value).max(initial=0) < _FP16_MAX:
            value = value.astype(np.float16)
        packed[name] = value
    model = {k: v for k, v in model_cfg.items() if k not in UNRECORDED_MODEL_KEYS}
    metadata = {"MODEL": model, "description": description,
                "source": str(checkpoint), "parameters": int(sum(v.size for v in weights.values())),
                "created": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}
    if postproc:
        metadata["POSTPROC"] = dict(postproc)
    write_npz(output, packed, metadata, compress=True)
    return metadata


def record_postproc(bundle, postproc: dict, selection: dict | None = None) -> dict:
    """Record ``postproc`` (``POSTPROC`` key -> value, chosen on the model's validation set) in the bundle
    ``models/<name>.npz``, its weights unchanged (stored dtype kept), and in its training record
    ``<name>.json`` when there is one, with ``selection`` (how they were chosen) under ``postproc_selection``.
    Returns the bundle's new metadata."""
    bundle = Path(bundle)
    defaults = config_from_args().POSTPROC
    unknown = sorted(set(postproc) - set(defaults))
    if unknown:
        raise InputError(f"no such POSTPROC key(s): {', '.join(unknown)}")
    arrays, metadata = read_npz(bundle, as_stored=True)
    if not isinstance(metadata.get("MODEL"), dict):
        raise InputError(f"{bundle}: not a bundled model (no MODEL record)")
    metadata["POSTPROC"] = {**metadata.get("POSTPROC", {}), **postproc}
    write_npz(bundle, arrays, metadata, compress=True)
    record_path = bundle.with_suffix(".json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        record["bundle"] = metadata
        if selection is not None:
            record["postproc_selection"] = selection
        write_json_atomic(record_path, record, indent=1)
    return metadata


def _training_record(run_dir: Path) -> dict:
    """Settings, split, history and wall time of a training run folder (run.json, stats.json, history)."""
    run = json.loads((run_dir / "run.json").read_text())
    stats = json.loads((run_dir / "stats.json").read_text()) if (run_dir / "stats.json").is_file() else []
    starts = [json.loads(line) for line in (run_dir / "run_history.jsonl").read_text().splitlines() if line]
    split_file = Path(run["train_dir"]) / "split.json"
    record = {
        "settings": {k: v for k, v in run.items() if k != "config"}, "config": run["config"],
        "starts": [{"time": s["time"], "start": s["start"]} for s in starts],
        "split": json.loads(split_file.read_text()) if split_file.is_file() else None,
        "history": stats,
    }
    if (run_dir / INIT_RECORD).is_file():  # fine-tuned from a bundle: the record of the weights it started from
        record["init_record"] = json.loads((run_dir / INIT_RECORD).read_text())
    finished = run_dir / "finished.json"
    if finished.is_file() and starts:
        begin = datetime.strptime(starts[0]["time"], "%Y-%m-%d %H:%M:%S")
        end = datetime.strptime(json.loads(finished.read_text())["finished"], "%Y-%m-%d %H:%M:%S")
        record["wall_seconds"] = (end - begin).total_seconds()
    return record


def chained_history(record: dict) -> list[dict]:
    """The epoch records of a training record and of every record it was fine-tuned from (``init_record``), oldest
    first, numbered on from the earlier run's last epoch: the whole training of the weights, for one curve."""
    earlier = chained_history(record["init_record"]) if isinstance(record.get("init_record"), dict) else []
    offset = earlier[-1]["epoch_num"] if earlier else 0
    return earlier + [{**r, "epoch_num": r["epoch_num"] + offset} for r in record.get("history", [])
                      if "epoch_num" in r]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.model.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix, e.g. <run>/phase1/model-best")
    parser.add_argument("--run_dir", required=True, help="the phase folder that wrote it (run.json, stats.json)")
    parser.add_argument("--output", required=True, help="models/<name>.npz")
    parser.add_argument("--description", default="", help="one line shown by infer.py --list-models")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage of the weights: float16 (half the size, float16 rounding) or float32 (exact)")
    parser.add_argument("--postproc", nargs="*", default=[], metavar="KEY=VALUE",
                        help="POSTPROC values chosen on the validation set (scripts/select_postproc.py), e.g. "
                             "MARKER_THRESHOLD=0.7; recorded in the file and used by infer.py")
    args = parser.parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)  # TensorFlow's start-up lines and the restored-variable list stay off the console
    run_dir, output = Path(args.run_dir), Path(args.output)
    try:
        record = _training_record(run_dir)
        postproc = {}
        for item in args.postproc:
            key, _, value = item.partition("=")
            if key not in config_from_args().POSTPROC:
                raise InputError(f"--postproc {item}: no such POSTPROC key")
            postproc[key] = ast.literal_eval(value)
        metadata = write_bundle(args.checkpoint, record["config"]["MODEL"], output, args.description, postproc,
                                args.dtype)
    except (OSError, KeyError, ValueError, SyntaxError, json.JSONDecodeError, InputError) as exc:
        print(f"bundle: error: {exc}", file=sys.stderr)
        return 2
    record["bundle"] = metadata
    write_json_atomic(output.with_suffix(".json"), record, indent=1)
    curves = output.with_name(f"{output.stem}-curves.png")
    if "init_record" in record:  # one curve from the random start: the earlier run's epochs, then this one's
        from misc.viz import plot_training_curves

        plot_training_curves(chained_history(record), curves)
    elif (run_dir / "curves.png").is_file():
        shutil.copyfile(run_dir / "curves.png", curves)
    print(f"{output}: {metadata['parameters']:,} parameters, {os.path.getsize(output) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
