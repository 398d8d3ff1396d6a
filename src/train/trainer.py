"""Training orchestration: run directories, trainer choice, callbacks, one phase of the schedule.

``train.py`` parses arguments and calls :func:`train`; everything that decides *how* HoVer-Net is
trained lives here, so it is testable and the CLI stays thin (tensorpack ``examples/FasterRCNN``).
Published setting (spec section 4): synchronous data-parallel towers, Adam, two phases (opt/),
validation Dice of the NP output every epoch, best checkpoint by that Dice.

What a run is asked to do is one :class:`TrainOptions`; the towers (GPU awareness) one :class:`Towers`; the
data arrives through :class:`Dataflows`, factories the caller passes in (``train.py`` passes
``dataset.dataflow``'s), so that ``src`` never imports ``dataset`` (which imports ``src``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorpack import (
    DataParallelInferenceRunner,
    InferenceRunner,
    MaxSaver,
    ModelSaver,
    QueueInput,
    ScheduledHyperParamSetter,
    SimpleTrainer,
    SyncMultiGPUTrainerReplicated,
    TrainConfig,
    launch_train_with_config,
)
from tensorpack.callbacks import Callback, Inferencer
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.utils import logger as tp_logger

from misc.io import InputError
from misc.viz import plot_training_curves
from opt.schedules import Phase, get_phase, get_schedule
from src.config import check_value
from src.infer.predictor import stack_outputs
from src.infer.windows import predict_tile
from src.model.graph import INFERENCE_INPUTS, NP_DICE_NAME, NP_DICE_SUMS, HoVerNet, inference_output_names
from src.model.weights import make_session_init
from src.model.weights_file import checkpoint_prefix
from src.train.run_folder import (
    BEST_CHECKPOINT,
    check_run_dir,
    last_epoch,
    mark_finished,
    phase_start,
    prepare_run_dir,
    record_run,
    stats_records,
)
from src.train.run_folder import (
    phase_dir as phase_dir_of,
)

log = logging.getLogger(__name__)

__all__ = ["select_trainer", "make_callbacks", "train_phase", "train", "resume_point", "TrainingIncompleteError",
           "PooledDice", "Towers", "TrainOptions", "Dataflows", "VALID_STAT", "TileValidation", "TILE_STAT_PREFIX",
           "best_stat"]

# The validation statistic and the name of its best checkpoint.
VALID_STAT = f"validation_{NP_DICE_NAME}"
# Scores of the post-processed held-out tiles (TileValidation) are recorded as 'tiles_<score>', e.g. 'tiles_pq'.
TILE_STAT_PREFIX = "tiles_"


class TrainingIncompleteError(RuntimeError):
    """Training ended (tensorpack stopped its main loop) before the phase ran all its epochs."""


@dataclass(frozen=True)
class Towers:
    """The synchronous data-parallel towers of a run: the one place that knows about GPUs.

    ``count``: towers (one per GPU asked for with ``--gpu``, at least 1); ``on_gpu``: whether TensorFlow sees a
    GPU (without one every tower shares the CPU through soft placement).
    """

    count: int = 1
    on_gpu: bool = False

    @classmethod
    def detect(cls, gpu_ids: Sequence[str]) -> Towers:
        """One tower per id in ``gpu_ids`` (already set as ``CUDA_VISIBLE_DEVICES``), one when empty; warns when
        GPUs were asked for but TensorFlow sees none."""
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        if gpu_ids and not on_gpu:
            log.warning("no GPU visible: the %d tower(s) will run on the CPU", len(gpu_ids))
        return cls(max(1, len(gpu_ids)), on_gpu)

    @property
    def parallel_validation(self) -> bool:
        """Validate on every tower's GPU at once (tensorpack's DataParallelInferenceRunner needs real GPUs)."""
        return self.count > 1 and self.on_gpu


@dataclass(frozen=True)
class Dataflows:
    """Where a phase's batches come from: factories passed in by the caller (``train.py`` passes
    ``dataset.dataflow.get_train_dataflow`` / ``get_valid_dataflow``; tests may pass fakes).

    ``train(cfg, data_dir, batch_size=, num_workers=)``: shuffled, augmented batches, ``len()`` = batches per
    epoch; ``valid(cfg, data_dir, batch_size=)``: every validation patch once per pass; ``tiles(cfg)``: None or
    the held-out tiles scored after post-processing every epoch (:class:`TileValidation`; ``train.py`` passes a
    ``metrics.validation.TileScorer``).
    """

    train: Callable
    valid: Callable | None = None
    tiles: Callable | None = None


@dataclass(frozen=True)
class TrainOptions:
    """What one ``train.py`` run asks for, beside the config (built from its arguments).

    ``train_dir`` / ``valid_dir``: patch folders (``valid_dir`` None: no validation, only the last checkpoints
    kept); ``out_dir``: the run folder, one ``phase<k>`` sub-folder per phase; ``phases``: the schedule's phases
    to run (None: all, in order); ``pretrained``: weights for the first phase run (ImageNet ``.npz`` or a
    checkpoint); ``epochs`` / ``steps_per_epoch`` / ``batch_size`` (patches per tower per step): None for the
    schedule's / one pass over the patches; ``num_workers``: augmentation processes (None: cfg.DATA.NUM_WORKERS,
    0 in-process); ``overwrite``: move earlier phase folders aside and start afresh.
    """

    train_dir: str | os.PathLike
    out_dir: str | os.PathLike
    valid_dir: str | os.PathLike | None = None
    towers: Towers = field(default_factory=Towers)
    phases: tuple[int, ...] | None = None
    pretrained: str | os.PathLike | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    num_workers: int | str | None = None
    overwrite: bool = False


def resume_point(path: str | os.PathLike, steps_per_epoch: int) -> tuple[Path | None, int]:
    """(checkpoint prefix to restore or None, first epoch to run) for resuming the phase in ``path``.

    tensorpack saves an epoch's checkpoint (ModelSaver) before validation and before stats.json gets the
    epoch's record (monitors trigger last), so a run killed in between holds a checkpoint one epoch ahead of
    stats.json. Restoring that one while counting epochs from stats.json (tensorpack's
    AutoResumeTrainConfig) ran that epoch twice. We restore the checkpoint saved at the global step of the
    last recorded epoch (ModelSaver keeps the two latest, so it is there), so the step counter, the epoch
    number and stats.json agree; without any recorded epoch the phase starts again from its init. Only if
    that checkpoint is gone is the latest one used, its epoch derived from its step.
    """
    path = Path(path)
    records = stats_records(path)
    epoch, step = (records[-1]["epoch_num"], records[-1]["global_step"]) if records else (0, 0)
    if (path / f"model-{step}.index").is_file():
        return path / f"model-{step}", epoch + 1
    if epoch == 0:
        return None, 1
    try:
        latest = checkpoint_prefix(path)
    except FileNotFoundError:
        raise InputError(f"{path}: stats.json records epoch {epoch} but no checkpoint is left to resume from") from None
    latest_step = int(latest.rsplit("-", 1)[1])
    log.warning("%s: no checkpoint at the step of epoch %d (%d); resuming from %s", path, epoch, step, latest)
    return Path(latest), latest_step // steps_per_epoch + 1


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


class PooledDice(Inferencer):
    """Validation NP Dice over the whole validation set: ``2 * sum(inter) / sum(|pred| + |true|)``.

    The released code collected every validation prediction and computed one Dice; averaging per-batch
    Dice instead would weigh a short last batch like a full one and score a batch without nuclei 1.0,
    which changes the checkpoint chosen as best.
    """

    def _before_inference(self):
        self.inter = 0.0
        self.total = 0.0

    def _get_fetches(self):
        return list(NP_DICE_SUMS)

    def _on_fetches(self, outputs):
        self.inter += float(outputs[0])
        self.total += float(outputs[1])

    def _after_inference(self):
        return {VALID_STAT: 2.0 * self.inter / self.total if self.total > 0 else 1.0}


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


class CurvesPlot(Callback):
    """Keeps ``curves.png`` in the run folder up to date: loss terms and validation NP Dice per epoch.

    Drawn from ``stats.json`` at the start of each epoch and at the end of training: tensorpack's monitors
    write an epoch's record after every user callback has triggered, so the start of the next epoch is the
    first moment the record is complete; reading the file (not the in-memory history) keeps the epochs
    from before a resume in the plot.
    """

    def _plot(self):
        stats = Path(tp_logger.get_logger_dir()) / "stats.json"
        try:
            records = json.loads(stats.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if records:
            plot_training_curves(records, stats.with_name("curves.png"))

    def _before_epoch(self):
        self._plot()

    def _after_train(self):
        self._plot()


class TileValidation(Callback):
    """After every epoch: the held-out tiles through the inference graph, stitched and post-processed as ``infer.py``
    does, scored by ``scorer``; each mean score goes to the monitors as ``tiles_<score>`` (stats.json, curves).

    The forward pass is a predict tower of the trainer (tensorpack ``get_predictor``): the training variables,
    BatchNorm in inference mode, as a saved checkpoint would run. ``scorer``: ``tiles`` (each with ``image`` HxWx3
    uint8), ``score(tile, maps) -> {name: float}`` and ``mean(rows) -> {name: float}`` (NaN = not measurable,
    not recorded): ``metrics.validation.TileScorer``, passed in because ``src`` does not import ``metrics``.
    """

    def __init__(self, scorer, nr_types: int | None, input_shape: int, output_shape: int, batch_size: int):
        self.scorer = scorer
        self.output_names = inference_output_names(nr_types)
        self.geometry = {"input_shape": int(input_shape), "output_shape": int(output_shape)}
        self.batch_size = int(batch_size)

    def _setup_graph(self):
        self._predictor = self.trainer.get_predictor(list(INFERENCE_INPUTS), self.output_names)

    def _forward(self, batch):
        outputs = self._predictor(np.asarray(batch, np.float32))
        return stack_outputs(dict(zip(self.output_names, outputs, strict=True)))

    def _trigger(self):
        start = time.perf_counter()
        rows = [self.scorer.score(tile, predict_tile(tile.image, self._forward, self.batch_size, **self.geometry))
                for tile in self.scorer.tiles]
        means = self.scorer.mean(rows)
        for key, value in means.items():
            if not np.isnan(value):
                self.trainer.monitors.put_scalar(TILE_STAT_PREFIX + key, float(value))
        log.info("validation on %d tiles in %.0f s: %s", len(rows), time.perf_counter() - start,
                 ", ".join(f"{k} {v:.3f}" for k, v in means.items()))


def best_stat(best_metric: str) -> str:
    """The monitor name of ``TRAIN.BEST_METRIC``: 'np_dice' -> the pooled patch Dice, others -> 'tiles_<metric>'."""
    check_value("TRAIN.BEST_METRIC", best_metric)
    return VALID_STAT if best_metric == "np_dice" else TILE_STAT_PREFIX + best_metric


def make_callbacks(phase: Phase, valid_df, towers: Towers, max_to_keep: int = 2, tile_validation=None,
                   best_metric: str = "np_dice") -> list:
    """Schedule, validation and saving callbacks for one phase (order matters: save, validate, keep best).

    ``tile_validation``: a :class:`TileValidation` or None. ``model-best`` follows ``best_metric``
    (``TRAIN.BEST_METRIC``) when that statistic is measured: the patch Dice needs ``valid_df``, the others
    ``tile_validation`` (:func:`train_phase` refuses the combination before training).
    """
    callbacks = [
        ModelSaver(max_to_keep=max_to_keep),
        ScheduledHyperParamSetter("learning_rate", list(phase.lr_schedule)),
        CurvesPlot(),
    ]
    if valid_df is not None:
        inferencers = [PooledDice()]
        if towers.parallel_validation:
            callbacks.append(DataParallelInferenceRunner(valid_df, inferencers, list(range(towers.count))))
        else:
            callbacks.append(InferenceRunner(valid_df, inferencers))
    if tile_validation is not None:
        callbacks.append(tile_validation)
    stat = best_stat(best_metric)
    if (valid_df is not None and stat == VALID_STAT) or (tile_validation is not None and stat != VALID_STAT):
        callbacks.append(_ResumableMaxSaver(stat, filename=BEST_CHECKPOINT))
    return callbacks


def train_phase(cfg, phase: Phase, phase_index: int, options: TrainOptions, dataflows: Dataflows) -> Path:
    """Train one phase into ``options.out_dir/phase<k>``; returns that directory.

    ``options.pretrained`` (an ImageNet ``.npz`` or a checkpoint) is loaded by variable name, reporting what was and
    was not loaded; without it a phase whose init is 'previous' starts from the previous phase's checkpoint
    chosen by ``cfg.TRAIN.PHASE2_INIT`` (published: the last), and phase 1 from random weights (with a
    warning: the published phase 1 starts from ImageNet Preact-ResNet50). An interrupted phase, or one
    finished with fewer epochs than now requested, resumes from its last checkpoint. Weights and data are
    checked before the phase directory is touched. Raises :class:`TrainingIncompleteError` when tensorpack's loop
    ends before the last epoch; ``finished.json`` is written (atomically) only after all epochs ran.
    ``dataflows`` builds the phase's training (and, with ``options.valid_dir``, validation) batches.
    """
    out_dir = Path(options.out_dir)
    phase_dir = phase_dir_of(out_dir, phase_index)
    towers, train_dir, valid_dir = options.towers, options.train_dir, options.valid_dir
    max_epoch = options.epochs if options.epochs is not None else phase.epochs
    check_run_dir(phase_dir, options.overwrite, max_epoch)

    # Weights and data first: a bad --pretrained or patch folder fails before anything is written.
    init_path = phase_start(out_dir, phase_index, phase.init, cfg.TRAIN.PHASE2_INIT, options.pretrained)
    if init_path is None and phase.init != "scratch":
        log.warning("phase %d starts from random weights: no --pretrained ImageNet .npz was given", phase_index)
    session_init = make_session_init(str(init_path), strict=False) if init_path is not None else None

    batch_size = options.batch_size or phase.batch_size_per_gpu
    scorer = dataflows.tiles(cfg) if dataflows.tiles is not None else None
    if cfg.TRAIN.BEST_METRIC != "np_dice" and scorer is None:
        raise InputError(f"TRAIN.BEST_METRIC={cfg.TRAIN.BEST_METRIC!r} scores post-processed held-out tiles: "
                         "give them with --valid_images")
    train_df = dataflows.train(cfg, train_dir, batch_size=batch_size, num_workers=options.num_workers)
    valid_df = dataflows.valid(cfg, valid_dir, batch_size=cfg.TRAIN.VALID_BATCH_SIZE) if valid_dir else None
    tile_validation = None if scorer is None else TileValidation(
        scorer, cfg.MODEL.NR_TYPES, cfg.MODEL.INPUT_SHAPE, cfg.MODEL.OUTPUT_SHAPE, cfg.INFER.BATCH_SIZE)
    steps_per_epoch = options.steps_per_epoch
    if steps_per_epoch is None:
        # One epoch = every training patch once, split across the towers.
        steps_per_epoch = max(1, len(train_df) // towers.count)

    state = prepare_run_dir(phase_dir, options.overwrite, max_epoch)
    if state.kind == "resume":
        log.info("resuming %s after epoch %s", phase_dir, state.last_epoch)
    tp_logger.set_logger_dir(str(phase_dir), action="k")
    record_run(phase_dir, state, {
        "phase": phase.name, "towers": towers.count, "batch_size_per_tower": batch_size, "epochs": max_epoch,
        "steps_per_epoch": steps_per_epoch, "init": str(init_path), "train_dir": str(train_dir),
        "valid_dir": str(valid_dir) if valid_dir else None, "config": cfg.to_dict()})

    model = HoVerNet(nr_types=cfg.MODEL.NR_TYPES, freeze=phase.freeze_encoder, cfg=cfg)
    kwargs = {}
    if state.kind == "resume":
        checkpoint, kwargs["starting_epoch"] = resume_point(phase_dir, steps_per_epoch)
        if checkpoint is not None:  # the whole training state, as tensorpack's own resume restores it
            session_init = SaverRestore(str(checkpoint))
            log.info("restoring %s; next epoch %d", checkpoint, kwargs["starting_epoch"])
    if session_init is not None:
        kwargs["session_init"] = session_init
    train_config = TrainConfig(
        model=model, data=QueueInput(train_df),
        callbacks=make_callbacks(phase, valid_df, towers, tile_validation=tile_validation,
                                 best_metric=cfg.TRAIN.BEST_METRIC),
        steps_per_epoch=steps_per_epoch, max_epoch=max_epoch, **kwargs)
    if train_config.starting_epoch > max_epoch:
        log.info("%s already ran %d epochs", phase_dir, max_epoch)
    else:
        launch_train_with_config(train_config, select_trainer(towers.count))
    # tensorpack returns normally when its loop ends early (StopTraining, OutOfRangeError from the data),
    # so only the epoch history says whether the phase is complete.
    ran = last_epoch(phase_dir) or 0
    if ran < max_epoch:
        raise TrainingIncompleteError(f"training stopped after epoch {ran} of {max_epoch}; "
                                      f"see {phase_dir / 'log.log'}")
    mark_finished(phase_dir, max_epoch)
    return phase_dir


def train(cfg, options: TrainOptions, dataflows: Dataflows) -> list[Path]:
    """Run ``options.phases`` (default all) of ``cfg.TRAIN.SCHEDULE`` in order; phase k>1 starts from phase k-1.

    Every requested phase directory is checked before any phase runs: a foreign one is refused up front, finished
    ones are skipped (all finished: refused), unless ``options.overwrite``.
    """
    schedule = get_schedule(cfg.TRAIN.SCHEDULE)  # fail on an unknown schedule before any work
    phases = tuple(range(1, len(schedule) + 1)) if options.phases is None else tuple(options.phases)
    for index in phases:
        get_phase(cfg.TRAIN.SCHEDULE, index)
    out_dir = Path(options.out_dir)
    first_phase = phases[0]
    epochs = options.epochs
    # Epochs now asked of each phase: a phase finished with fewer continues to this many.
    requested = {i: epochs if epochs is not None else get_phase(cfg.TRAIN.SCHEDULE, i).epochs for i in phases}
    # Refuse before any phase runs, not at the foreign phase's turn; with --overwrite every requested phase is
    # moved aside and run afresh.
    states = {i: check_run_dir(out_dir / f"phase{i}", options.overwrite, requested[i], skip_finished=True)
              for i in phases}
    if not options.overwrite:
        finished = [i for i in phases if states[i].kind == "finished"]
        if len(finished) == len(phases):
            raise InputError(f"{out_dir} already holds finished phase(s) {finished} with the requested epochs; "
                             "choose another --out_dir, ask for more --epochs or pass --overwrite (the old "
                             "directories are kept as <dir>.old-<time>)")
        if finished:
            # Re-running the command after an interruption continues where it stopped.
            log.info("phase(s) %s already finished in %s; continuing with the rest", finished, out_dir)
            phases = [i for i in phases if i not in finished]
    done = []
    for index in phases:
        phase = get_phase(cfg.TRAIN.SCHEDULE, index, cfg.TRAIN.LR_SCHEDULE)
        # An explicit --pretrained initialises the first phase run; later phases chain from it.
        phase_options = replace(options, pretrained=options.pretrained if index == first_phase else None)
        tf.compat.v1.reset_default_graph()  # also after a phase that raised (e.g. Ctrl-C) in this process
        done.append(train_phase(cfg, phase, index, phase_options, dataflows))
        tf.compat.v1.reset_default_graph()
    return done
