"""Training orchestration: run directories, trainer choice, callbacks, one phase of the schedule.

``train.py`` parses arguments and calls :func:`train`; everything that decides *how* HoVer-Net is
trained lives here, so it is testable and the CLI stays thin (tensorpack ``examples/FasterRCNN``).
Published setting (spec section 4): synchronous data-parallel towers, Adam, two phases (opt/),
validation Dice of the NP output every epoch, best checkpoint by that Dice.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from tensorpack import (
    AutoResumeTrainConfig,
    DataParallelInferenceRunner,
    InferenceRunner,
    MaxSaver,
    ModelSaver,
    QueueInput,
    ScalarStats,
    ScheduledHyperParamSetter,
    SimpleTrainer,
    SyncMultiGPUTrainerReplicated,
    launch_train_with_config,
)
from tensorpack.utils import logger as tp_logger

from dataset.dataflow import get_train_dataflow, get_valid_dataflow
from misc.io import InputError
from opt.schedules import Phase, get_phase, get_schedule
from src.model.graph import HoVerNet
from src.model.weights import make_session_init

log = logging.getLogger(__name__)

__all__ = ["RunState", "inspect_run_dir", "prepare_run_dir", "select_trainer", "make_callbacks", "train_phase",
           "train", "VALID_STAT", "BEST_CHECKPOINT", "FINISHED_MARKER"]

# The validation statistic (ScalarStats prefixes 'validation_') and the name of its best checkpoint.
VALID_TENSOR = "np_dice"
VALID_STAT = f"validation_{VALID_TENSOR}"
BEST_CHECKPOINT = "model-best"
FINISHED_MARKER = "finished.json"  # written when a phase has run all its epochs


@dataclass(frozen=True)
class RunState:
    """What a phase directory holds: nothing, an interrupted run (resumable) or a finished run."""

    kind: str  # 'new' | 'resume' | 'finished' | 'foreign'
    last_epoch: int | None = None


def inspect_run_dir(path: str | os.PathLike) -> RunState:
    """Classify ``path`` without touching it. 'foreign' = non-empty but not a run of ours."""
    path = Path(path)
    if not path.exists() or not any(p for p in path.iterdir() if not p.name.startswith(".")):
        return RunState("new")
    if (path / FINISHED_MARKER).is_file():
        return RunState("finished", _last_epoch(path))
    if (path / "checkpoint").is_file():
        return RunState("resume", _last_epoch(path))
    if (path / "run.json").is_file():  # started, died before the first checkpoint: nothing to keep
        return RunState("new")
    return RunState("foreign")


def _last_epoch(path: Path) -> int | None:
    stats = path / "stats.json"
    if not stats.is_file():
        return None
    try:
        records = json.loads(stats.read_text())
    except json.JSONDecodeError:
        return None
    return records[-1]["epoch_num"] if records else None


def prepare_run_dir(path: str | os.PathLike, overwrite: bool) -> RunState:
    """Decide what to do with a phase directory; never destroys a previous run.

    A new or half-started directory is used as is; an interrupted run is resumed from its last
    checkpoint (the same command simply continues); a finished run, or a non-empty directory that
    is not a run, is refused unless ``overwrite``, in which case it is moved aside to
    ``<path>.old-<timestamp>`` rather than deleted.
    """
    path = Path(path)
    state = inspect_run_dir(path)
    if state.kind in ("finished", "foreign"):
        what = "a finished run" if state.kind == "finished" else "files that are not a training run"
        if not overwrite:
            raise InputError(f"{path} already holds {what}; choose another --out_dir or pass --overwrite "
                             "(the old directory is kept as <dir>.old-<time>)")
        backup = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(path), str(backup))
        log.warning("moved the existing %s to %s", path, backup)
        state = RunState("new")
    path.mkdir(parents=True, exist_ok=True)
    return state


def select_trainer(num_towers: int):
    """The one place choosing the trainer from the tower count (STYLE item 8).

    One tower: a plain single-cost trainer. Several: synchronous replicated data parallelism, the
    published multi-GPU setting; without GPUs TensorFlow's soft placement puts every tower on the
    CPU, which keeps the multi-tower path testable in CI.
    """
    if num_towers < 1:
        raise ValueError("need at least one tower")
    if num_towers == 1:
        return SimpleTrainer()
    return SyncMultiGPUTrainerReplicated(num_towers, average=True)


class _ResumableMaxSaver(MaxSaver):
    """MaxSaver that remembers the best value of earlier epochs when a run resumes.

    tensorpack's MaxSaver starts from no best value, so after a resume the first validation would
    replace a better checkpoint from before the interruption.
    """

    def _setup_graph(self):
        super()._setup_graph()
        stats = Path(self.checkpoint_dir) / "stats.json"
        if stats.is_file() and (Path(self.checkpoint_dir) / f"{BEST_CHECKPOINT}.index").is_file():
            history = [(r["global_step"], r[self.monitor_stat]) for r in json.loads(stats.read_text())
                       if self.monitor_stat in r]
            if history:
                self.best = max(history, key=lambda item: item[1])


def make_callbacks(phase: Phase, valid_df, num_towers: int, use_gpu: bool, max_to_keep: int = 2) -> list:
    """Schedule, validation and saving callbacks for one phase (order matters: save, validate, keep best)."""
    callbacks = [
        ModelSaver(max_to_keep=max_to_keep),
        ScheduledHyperParamSetter("learning_rate", list(phase.lr_schedule)),
    ]
    if valid_df is not None:
        inferencers = [ScalarStats([VALID_TENSOR])]
        if num_towers > 1 and use_gpu:
            callbacks.append(DataParallelInferenceRunner(valid_df, inferencers, list(range(num_towers))))
        else:
            callbacks.append(InferenceRunner(valid_df, inferencers))
        callbacks.append(_ResumableMaxSaver(VALID_STAT, filename=BEST_CHECKPOINT))
    return callbacks


def phase_init_checkpoint(out_dir: Path, phase_index: int) -> Path | None:
    """The checkpoint a phase starts from when its init is 'previous': the previous phase's best, else last."""
    previous = out_dir / f"phase{phase_index - 1}"
    best = previous / BEST_CHECKPOINT
    if (previous / f"{BEST_CHECKPOINT}.index").is_file():
        return best
    if (previous / "checkpoint").is_file():
        return Path(tf.train.latest_checkpoint(str(previous)))
    return None


def train_phase(cfg, phase: Phase, phase_index: int, train_dir, valid_dir, out_dir, num_towers: int,
                use_gpu: bool, pretrained=None, epochs: int | None = None, steps_per_epoch: int | None = None,
                batch_size: int | None = None, num_workers=None, overwrite: bool = False) -> Path:
    """Train one phase into ``out_dir/phase<k>``; returns that directory.

    ``pretrained`` (an ImageNet ``.npz`` or a checkpoint) is loaded by variable name, reporting what
    was and was not loaded; without it a phase whose init is 'previous' starts from the previous
    phase's best checkpoint, and phase 1 from random weights (with a warning: the published phase 1
    starts from ImageNet Preact-ResNet50). An interrupted phase resumes from its last checkpoint.
    """
    out_dir = Path(out_dir)
    phase_dir = out_dir / f"phase{phase_index}"
    state = prepare_run_dir(phase_dir, overwrite)
    if state.kind == "resume":
        log.info("resuming %s after epoch %s", phase_dir, state.last_epoch)
    tp_logger.set_logger_dir(str(phase_dir), action="k")

    init_path = pretrained
    if init_path is None and phase.init == "previous":
        init_path = phase_init_checkpoint(out_dir, phase_index)
        if init_path is None:
            raise InputError(f"phase {phase_index} starts from phase {phase_index - 1}, but "
                             f"{out_dir / f'phase{phase_index - 1}'} has no checkpoint; train that phase "
                             "first or pass --pretrained")
    if init_path is None:
        log.warning("phase %d starts from random weights: no --pretrained ImageNet .npz was given", phase_index)
    session_init = make_session_init(str(init_path), strict=False) if init_path is not None else None

    batch_size = batch_size or phase.batch_size_per_gpu
    train_df = get_train_dataflow(cfg, train_dir, batch_size=batch_size, num_workers=num_workers)
    valid_df = get_valid_dataflow(cfg, valid_dir, batch_size=cfg.TRAIN.VALID_BATCH_SIZE) if valid_dir else None
    if steps_per_epoch is None:
        # One epoch = every training patch once, split across the towers.
        steps_per_epoch = max(1, len(train_df) // num_towers)
    max_epoch = epochs if epochs is not None else phase.epochs

    with open(phase_dir / "run.json", "w") as handle:
        json.dump({"phase": phase.name, "towers": num_towers, "batch_size_per_tower": batch_size,
                   "epochs": max_epoch, "steps_per_epoch": steps_per_epoch, "init": str(init_path),
                   "train_dir": str(train_dir), "valid_dir": str(valid_dir) if valid_dir else None,
                   "config": cfg.to_dict()}, handle, indent=1, default=str)

    model = HoVerNet(nr_types=cfg.MODEL.NR_TYPES, freeze=phase.freeze_encoder, cfg=cfg)
    kwargs = {}
    if session_init is not None:
        kwargs["session_init"] = session_init
    train_config = AutoResumeTrainConfig(
        always_resume=True, model=model, data=QueueInput(train_df),
        callbacks=make_callbacks(phase, valid_df, num_towers, use_gpu),
        steps_per_epoch=steps_per_epoch, max_epoch=max_epoch, **kwargs)
    if train_config.starting_epoch > max_epoch:
        log.info("%s already ran %d epochs", phase_dir, max_epoch)
    else:
        launch_train_with_config(train_config, select_trainer(num_towers))
    with open(phase_dir / FINISHED_MARKER, "w") as handle:
        json.dump({"epochs": max_epoch, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)
    return phase_dir


def train(cfg, train_dir, valid_dir, out_dir, num_towers: int, use_gpu: bool, phases=(1, 2), pretrained=None,
          epochs: int | None = None, steps_per_epoch: int | None = None, batch_size: int | None = None,
          num_workers=None, overwrite: bool = False) -> list[Path]:
    """Run the given phases of ``cfg.TRAIN.SCHEDULE`` in order; phase k>1 starts from phase k-1's best."""
    get_schedule(cfg.TRAIN.SCHEDULE)  # fail on an unknown schedule before any work
    out_dir = Path(out_dir)
    first_phase = phases[0]
    finished = [i for i in phases if inspect_run_dir(out_dir / f"phase{i}").kind == "finished"]
    if not overwrite and finished:
        if len(finished) == len(phases):
            raise InputError(f"{out_dir} already holds finished phase(s) {finished}; choose another --out_dir "
                             "or pass --overwrite (the old directories are kept as <dir>.old-<time>)")
        # Re-running the command after an interruption continues where it stopped.
        log.info("phase(s) %s already finished in %s; continuing with the rest", finished, out_dir)
        phases = [i for i in phases if i not in finished]
    done = []
    for index in phases:
        phase = get_phase(cfg.TRAIN.SCHEDULE, index)
        # An explicit --pretrained initialises the first phase run; later phases chain from it.
        init = pretrained if index == first_phase else None
        done.append(train_phase(cfg, phase, index, train_dir, valid_dir, out_dir, num_towers, use_gpu,
                                pretrained=init, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                batch_size=batch_size, num_workers=num_workers, overwrite=overwrite))
        tf.compat.v1.reset_default_graph()
    return done
