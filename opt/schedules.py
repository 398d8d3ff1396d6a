"""Training schedules as data: the published two-phase schedule (spec section 4) and one from scratch.

``published``: phase 1 trains the decoders and heads on top of a frozen ImageNet Preact-ResNet50 encoder; phase 2
starts from the phase-1 checkpoint with the largest global step (``TRAIN.PHASE2_INIT``) and trains every
layer with half the per-GPU batch. Each phase runs 50 epochs with Adam: 1e-4 for epochs 1-25, 1e-5 for
epochs 26-50. The released schedule ``(1e-4, [(25, 1e-5)])`` goes to tensorpack's
``ScheduledHyperParamSetter``, which sets a value *after* the completion of the epoch it names, so the
drop takes effect from epoch 26 (both the tensorpack the authors used and the current one do this).
``train.py`` turns a :class:`Phase` into tensorpack callbacks; nothing here imports TensorFlow.

``scratch``: for training without pretrained weights, where freezing a random encoder makes no sense: one
phase of 36 epochs, every variable trainable, the published optimiser (Adam), loss and augmentation, and a
larger learning rate because a randomly initialised network has everything to learn: 1e-3 for epochs 1-30,
1e-4 for epochs 31-36. It trains the bundled small models (models/README.md); their validation PQ was still
rising after 18 epochs of an earlier 18-epoch version (1e-3 for 1-15), which is why it is this long.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Phase", "SCHEDULES", "get_schedule", "get_phase", "lr_for_epoch", "valid_lr_schedule"]


@dataclass(frozen=True)
class Phase:
    """One training phase.

    ``lr_schedule`` is ``((epoch, lr), ...)`` in tensorpack's ``ScheduledHyperParamSetter`` form: the
    value is set after the completion of that epoch (epochs are 1-based; 0 = before the first), i.e. it
    holds from epoch ``epoch + 1`` on (:func:`lr_for_epoch`). ``init`` says where the weights come from:
    ``'imagenet'`` (an ``.npz`` given with ``--pretrained``, random with a warning if none), ``'previous'`` (a
    checkpoint of the previous phase, chosen by ``TRAIN.PHASE2_INIT``: published the last) or ``'scratch'``
    (random unless ``--pretrained``).
    """

    name: str
    freeze_encoder: bool
    batch_size_per_gpu: int
    epochs: int
    lr_schedule: tuple[tuple[int, float], ...]
    init: str


PUBLISHED = (
    Phase("phase1", freeze_encoder=True, batch_size_per_gpu=8, epochs=50,
          lr_schedule=((0, 1.0e-4), (25, 1.0e-5)), init="imagenet"),
    Phase("phase2", freeze_encoder=False, batch_size_per_gpu=4, epochs=50,
          lr_schedule=((0, 1.0e-4), (25, 1.0e-5)), init="previous"),
)

SCRATCH = (
    Phase("phase1", freeze_encoder=False, batch_size_per_gpu=8, epochs=36,
          lr_schedule=((0, 1.0e-3), (30, 1.0e-4)), init="scratch"),
)

SCHEDULES: dict[str, tuple[Phase, ...]] = {"published": PUBLISHED, "scratch": SCRATCH}


def get_schedule(name: str) -> tuple[Phase, ...]:
    """The phases of the named schedule; an unknown name is an error listing the known ones."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}") from None


def get_phase(schedule: str, phase: int, lr_schedule=None) -> Phase:
    """Phase ``phase`` (1-based) of the named schedule; with ``lr_schedule`` (``TRAIN.LR_SCHEDULE``) its learning
    rates replaced by those."""
    phases = get_schedule(schedule)
    if not 1 <= phase <= len(phases):
        raise ValueError(f"schedule {schedule!r} has phases 1..{len(phases)}, not {phase}")
    if lr_schedule is None:
        return phases[phase - 1]
    return replace(phases[phase - 1], lr_schedule=tuple((int(e), float(lr)) for e, lr in lr_schedule))


def valid_lr_schedule(value) -> bool:
    """Whether ``value`` is ``((0, lr), (epoch, lr), ...)``: epochs integers increasing from 0, rates > 0."""
    try:
        epochs = [e for e, _ in value]
        rates = [lr for _, lr in value]
    except (TypeError, ValueError):
        return False
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    increasing = all(a < b for a, b in zip(epochs, epochs[1:], strict=False))
    return (bool(epochs) and epochs[0] == 0 and all(number(e) and e == int(e) for e in epochs) and increasing
            and all(number(r) and r > 0 for r in rates))


def lr_for_epoch(phase: Phase, epoch: int) -> float:
    """The learning rate in force during (1-based) ``epoch`` of ``phase``: that of the last schedule entry
    whose epoch is before it, as tensorpack applies it (published: 1e-4 for epochs 1-25, 1e-5 from 26)."""
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    values = [lr for ep, lr in sorted(phase.lr_schedule) if ep < epoch]
    if not values:
        raise ValueError(f"phase {phase.name!r} sets no learning rate before epoch {epoch}")
    return values[-1]
