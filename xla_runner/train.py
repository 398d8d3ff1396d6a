"""``python -m xla_runner train``: the published schedule with the exported tensorpack step (no TensorFlow).

  python -m xla_runner train --artifacts xla/ --data_dir data/consep/train --valid_dir data/consep/valid \\
      --out_dir runs/consep-xla --pretrained ImageNet-ResNet50-Preact.npz

Each step runs the exported ``train_step_phase<k>`` (one whole tensorpack step: forward, loss, Adam update,
BatchNorm moving averages) on the batch it was exported for (default: the published global batch of the phase, batch
per GPU x 2 GPUs, in one tower), the learning rate set from the schedule by epoch. Patches are read and augmented by
the project's numpy code (``dataset/patches.py``: the mapping ``train.py``'s dataflow uses), optionally in
``--workers`` processes; every patch has its own augmentation seed drawn from ``(--seed, epoch)``, so a resumed run
sees exactly the data an uninterrupted one would. After every epoch: validation NP Dice (pooled over the validation
set, forward artifact), ``model-epoch<e>.npz`` (every variable of the step under the project's names, including
Adam's slots; ``infer.py --model``, ``train.py --pretrained`` and ``xla_runner infer`` load it), ``model-best.npz``
(highest validation Dice), ``stats.json``, ``curves.png`` and ``checkpoint.json`` (written last: a killed run
resumes from the epoch it names when the same command runs again). The run folder is ``train.py``'s
(``src.train.run_folder``: the same refusals of a finished or foreign phase, ``run.json`` and ``run_history.jsonl``,
``finished.json``). The phases and the learning rate of each epoch come from ``opt.schedules`` (``TRAIN.SCHEDULE``,
``lr_for_epoch``), as in ``train.py``; phase 2 starts from the checkpoint ``TRAIN.PHASE2_INIT`` names
(``src.train.run_folder.phase_init_checkpoint``; published: phase 1's last epoch), its training state too, as the
published phase-2 start did.
Exit status: 0 done, 1 stopped early, 2 could not start (or the run folder is in use), 130 Ctrl-C, 143 SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from dataset.patches import TrainingDataPreprocessor, list_patches
from misc.io import InputError, folder_lock, write_json_atomic
from misc.proc import exit_status, stop_on_sigterm, stop_word
from misc.viz import plot_training_curves
from opt.schedules import get_phase, get_schedule, lr_for_epoch
from src.model.weights_file import read_npz, write_npz
from src.train.run_folder import (
    BEST_CHECKPOINT,
    check_run_dir,
    mark_finished,
    phase_dir,
    phase_start,
    prepare_run_dir,
    record_run,
)
from xla_runner.artifacts import Artifacts, initial_state

log = logging.getLogger(__name__)

__all__ = ["StepRunner", "epoch_datapoints", "validate", "train_phase", "main"]

CHECKPOINT = "checkpoint.json"  # this trainer's resume marker (src.train.run_folder.RESUME_MARKERS)
BEST = f"{BEST_CHECKPOINT}.npz"
_SEED_RANGE = 2**31 - 1


class StepRunner:
    """The exported training step with its state kept on the device between steps.

    ``state``: {variable name: array} holding every ``state`` input of the step (see
    :func:`xla_runner.artifacts.initial_state`). :meth:`step` runs one step and returns the metrics (loss
    terms, ``overall_cost``, ``np_dice``) as floats.
    """

    def __init__(self, artifacts: Artifacts, entry: dict, state: dict, device=None):
        self.exe = artifacts.executable(entry, device)
        self.data_names = [s["name"] for s in entry["inputs"] if s["role"] == "data"]
        self.state_names = [s["name"] for s in entry["inputs"] if s["role"] == "state"]
        self.metric_names = [s["name"] for s in entry["outputs"] if s["role"] == "metric"]
        self.updated = [s["name"] for s in entry["outputs"] if s["role"] == "state"]
        self.batch_size = int(entry["batch_size"])
        self.state = {name: self.exe.put(np.asarray(state[name])) for name in self.state_names}

    def step(self, batch: list[np.ndarray], lr: float) -> dict[str, float]:
        self.state["learning_rate"] = self.exe.put(np.asarray(lr, np.float32))
        outputs = self.exe(*batch, *(self.state[n] for n in self.state_names))
        metrics = {n: float(v) for n, v in zip(self.metric_names, outputs[:len(self.metric_names)], strict=True)}
        for name, value in zip(self.updated, outputs[len(self.metric_names):], strict=True):
            self.state[name] = value
        return metrics

    def host_state(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.state.items()}


def epoch_datapoints(n_patches: int, count: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(patch indices, augmentation seeds) of ``count`` datapoints of one epoch: shuffled passes over the
    patches drawn from ``RandomState([seed, epoch])``, so an epoch's data depends on nothing else."""
    rng = np.random.RandomState([seed, epoch])
    order = np.concatenate([rng.permutation(n_patches) for _ in range(-(-count // n_patches))])[:count]
    return order, rng.randint(_SEED_RANGE, size=count)


def _map_patch(args):
    mapper, path, seed = args
    return mapper(path, seed)


class _Mapper:
    """Picklable ``(path, seed) -> datapoint`` for worker processes."""

    def __init__(self, cfg, is_training: bool):
        self.pre = TrainingDataPreprocessor(cfg, is_training=is_training)

    def __call__(self, path, seed):
        return self.pre([path, seed])


def _batches(mapper, paths, seeds, batch_size: int, pool=None):
    """Stacked batches of mapped datapoints, in order."""
    jobs = [(mapper, p, int(s)) for p, s in zip(paths, seeds, strict=True)]
    mapped = pool.imap(_map_patch, jobs, chunksize=2) if pool is not None else map(_map_patch, jobs)
    batch = []
    for datapoint in mapped:
        batch.append(datapoint)
        if len(batch) == batch_size:
            yield [np.stack(c) for c in zip(*batch, strict=True)]
            batch = []
    if batch:
        yield [np.stack(c) for c in zip(*batch, strict=True)]


def validate(artifacts: Artifacts, state: dict, valid_paths: list[str], device=None, pool=None) -> float:
    """Pooled NP Dice of ``argmax(np_prob)`` vs the target over every validation patch (centre crop only)."""
    entry = artifacts.find("forward")
    exe = artifacts.executable(entry, device)
    names = [s["name"] for s in entry["inputs"] if s["role"] == "state"]
    weights = [exe.put(np.asarray(state[n])) for n in names]
    np_index = [s["name"] for s in entry["outputs"]].index("np_prob")
    mapper = _Mapper(artifacts.cfg, is_training=False)
    inter = total = 0.0
    size = int(entry["batch_size"])
    for batch in _batches(mapper, valid_paths, np.zeros(len(valid_paths), int), size, pool):
        images, np_target = batch[0], batch[1]
        n = len(images)
        if n < size:  # BatchNorm uses its moving statistics here: padding changes nothing else
            images = np.concatenate([images, np.zeros((size - n,) + images.shape[1:], np.float32)])
        prob = np.asarray(exe(images, *weights)[np_index])[:n]
        pred = np.argmax(prob, axis=-1) > 0
        true = np_target > 0
        inter += float(np.sum(pred & true))
        total += float(pred.sum() + true.sum())
    return 2.0 * inter / total if total > 0 else 1.0


def train_phase(artifacts: Artifacts, phase_index: int, train_dir, valid_dir, out_dir, pretrained=None,
                epochs: int | None = None, steps_per_epoch: int | None = None, batch_size: int | None = None,
                workers: int = 0, seed: int = 0, overwrite: bool = False, device=None, on_epoch_end=None) -> Path:
    """Train one phase into ``out_dir/phase<k>``; resumes from ``checkpoint.json``; returns the phase folder.

    ``on_epoch_end(epoch)`` is called after an epoch's files are written (tests use it to simulate a kill).
    """
    cfg = artifacts.cfg
    phase = get_phase(cfg.TRAIN.SCHEDULE, phase_index, cfg.TRAIN.LR_SCHEDULE)
    entry = artifacts.find("train_step", batch_size, phase=phase_index)
    max_epoch = epochs or phase.epochs
    folder = phase_dir(out_dir, phase_index)
    check_run_dir(folder, overwrite, max_epoch)  # refuse before reading anything, as train.py does
    paths = list_patches(train_dir)
    valid_paths = list_patches(valid_dir) if valid_dir else []
    step_batch = int(entry["batch_size"])
    if len(paths) < step_batch:
        raise InputError(f"{len(paths)} patches in {train_dir} cannot fill one batch of {step_batch}")
    steps = steps_per_epoch or len(paths) // step_batch

    init = phase_start(out_dir, phase_index, phase.init, cfg.TRAIN.PHASE2_INIT, pretrained)
    state = prepare_run_dir(folder, overwrite, max_epoch)
    record_run(folder, state, {
        "phase": phase.name, "trainer": "xla_runner", "batch_size_per_tower": step_batch, "epochs": max_epoch,
        "steps_per_epoch": steps, "init": str(init), "train_dir": str(train_dir),
        "valid_dir": str(valid_dir) if valid_dir else None, "config": cfg.to_dict()})
    checkpoint = folder / CHECKPOINT
    records = []
    if state.kind == "resume" and checkpoint.is_file():
        info = json.loads(checkpoint.read_text())
        start_epoch = info["epoch"] + 1
        weights = read_npz(folder / info["file"])[0]
        variables, missing = initial_state(entry, weights, strict=True)
        records = [r for r in json.loads((folder / "stats.json").read_text()) if r["epoch_num"] <= info["epoch"]]
        log.info("resuming %s after epoch %d", folder, info["epoch"])
    else:
        start_epoch = 1
        weights = read_npz(init)[0] if init is not None else {}
        variables, missing = initial_state(entry, weights, seed=seed)
        log.info("phase %d starts from %s; %d variables from their initialisers%s", phase_index,
                 init or "the published initialisers", len(missing), f" ({missing[:10]} ...)" if missing else "")

    runner = StepRunner(artifacts, entry, variables, device)
    metadata = artifacts.manifest.get("weights_metadata")  # the graph's MODEL settings, for infer.py/train.py
    mapper = _Mapper(cfg, is_training=True)
    pool = None
    if workers > 0:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        for epoch in range(start_epoch, max_epoch + 1):
            lr = lr_for_epoch(phase, epoch)
            order, seeds = epoch_datapoints(len(paths), steps * step_batch, seed, epoch)
            sums: dict[str, float] = {}
            start = time.perf_counter()
            for batch in _batches(mapper, [paths[i] for i in order], seeds, step_batch, pool):
                for key, value in runner.step(batch, lr).items():
                    sums[key] = sums.get(key, 0.0) + value
            seconds = time.perf_counter() - start
            record = {"epoch_num": epoch, "global_step": epoch * steps, "learning_rate": lr,
                      **{k: v / steps for k, v in sums.items()}, "epoch_seconds": seconds,
                      "patches_per_second": steps * step_batch / seconds}
            host = runner.host_state()
            if valid_paths:
                record["validation_np_dice"] = validate(artifacts, host, valid_paths, device, pool)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
            name = f"model-epoch{epoch}.npz"
            write_npz(folder / name, host, metadata)
            best = max((r for r in records if "validation_np_dice" in r), default=None,
                       key=lambda r: r["validation_np_dice"])
            dice = record.get("validation_np_dice")
            if dice is not None and (best is None or dice > best["validation_np_dice"]):
                write_npz(folder / BEST, host, metadata)
            records.append(record)
            write_json_atomic(folder / "stats.json", records, indent=1, newline=True)
            plot_training_curves(records, folder / "curves.png")
            position = {"epoch": epoch, "global_step": epoch * steps, "file": name}
            write_json_atomic(checkpoint, position, indent=1, newline=True)
            for old in range(1, epoch - 1):  # keep the last two epochs' checkpoints
                (folder / f"model-epoch{old}.npz").unlink(missing_ok=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        if pool is not None:
            pool.terminate()
    if not valid_paths:  # no validation: the last epoch stands in for the best
        write_npz(folder / BEST, runner.host_state(), metadata)
    mark_finished(folder, max_epoch)
    return folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xla_runner train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True, help="export folder holding the train_step artifacts")
    parser.add_argument("--data_dir", required=True, help="folder of training .npy patches (extract_patches.py)")
    parser.add_argument("--valid_dir", default=None, help="folder of validation .npy patches")
    parser.add_argument("--out_dir", required=True, help="run folder; one sub-folder per phase")
    parser.add_argument("--pretrained", default=None,
                        help="initial weights .npz of the first phase run (by variable name; the rest from the "
                             "published initialisers)")
    parser.add_argument("--phase", type=int, default=None,
                        help="run only this phase (default: every phase of TRAIN.SCHEDULE in order)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per phase (default: the schedule's)")
    parser.add_argument("--steps_per_epoch", type=int, default=None, help="default: every patch once per epoch")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="choose the exported step by its batch size (default: the one per phase)")
    parser.add_argument("--workers", type=int, default=0, help="augmentation processes (default 0: in-process)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle/augmentation/initialisation seed")
    parser.add_argument("--overwrite", action="store_true", help="start afresh (old folder moved aside)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides that do not change the graph, e.g. AUG.FLIP=False")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        artifacts = Artifacts(args.artifacts, args.config)
        schedule = get_schedule(artifacts.cfg.TRAIN.SCHEDULE)
        phases = (args.phase,) if args.phase else tuple(range(1, len(schedule) + 1))
        for index in phases:
            get_phase(artifacts.cfg.TRAIN.SCHEDULE, index)  # an unknown phase fails before any work
        with folder_lock(args.out_dir, "training run"):  # train.py and xla_runner runs alike: one per run folder
            for index in phases:
                train_phase(artifacts, index, args.data_dir, args.valid_dir, args.out_dir,
                            pretrained=args.pretrained if index == phases[0] else None, epochs=args.epochs,
                            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, workers=args.workers,
                            seed=args.seed, overwrite=args.overwrite)
    except (InputError, KeyError, ValueError, FileNotFoundError) as exc:
        print(f"xla_runner train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        print(f"xla_runner train: {stop_word(exc)}; run the same command to resume", file=sys.stderr)
        return exit_status(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
