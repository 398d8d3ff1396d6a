"""Training schedules as data: the published two-phase schedule (spec section 4) and one from scratch.

``published``: phase 1 trains the decoders and heads on top of a frozen ImageNet Preact-ResNet50 encoder;
phase 2 starts from the phase-1 checkpoint and trains every layer with half the per-GPU batch. Each phase
runs 50 epochs with Adam at 1e-4, dropping to 1e-5 from epoch 25. ``train.py`` turns a :class:`Phase` into
tensorpack callbacks; nothing here imports TensorFlow.

``scratch``: for training without pretrained weights, where freezing a random encoder makes no sense: one
phase, every variable trainable, the published optimiser (Adam), loss and augmentation; a larger first
learning rate (1e-3, then 1e-4 for the last four epochs), because a randomly initialised network has everything
to learn. This trained the bundled small model (models/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Phase", "SCHEDULES", "get_schedule", "get_phase"]


@dataclass(frozen=True)
class Phase:
    """One training phase.

    ``lr_schedule`` is ``((epoch, lr), ...)`` in tensorpack's ``ScheduledHyperParamSetter`` form: the
    value holds from the start of that (1-based) epoch. ``init`` says where the weights come from:
    ``'imagenet'`` (an ``.npz`` given with ``--pretrained``, random with a warning if none),
    ``'previous'`` (a checkpoint of the previous phase) or ``'scratch'`` (random unless ``--pretrained``).
    """

    name: str
    freeze_encoder: bool
    batch_size_per_gpu: int
    epochs: int
    lr_schedule: tuple[tuple[int, float], ...]
    init: str


PUBLISHED = (
    Phase("phase1", freeze_encoder=True, batch_size_per_gpu=8, epochs=50,
          lr_schedule=((1, 1.0e-4), (25, 1.0e-5)), init="imagenet"),
    Phase("phase2", freeze_encoder=False, batch_size_per_gpu=4, epochs=50,
          lr_schedule=((1, 1.0e-4), (25, 1.0e-5)), init="previous"),
)

SCRATCH = (
    Phase("phase1", freeze_encoder=False, batch_size_per_gpu=8, epochs=18,
          lr_schedule=((1, 1.0e-3), (15, 1.0e-4)), init="scratch"),
)

SCHEDULES: dict[str, tuple[Phase, ...]] = {"published": PUBLISHED, "scratch": SCRATCH}


def get_schedule(name: str) -> tuple[Phase, ...]:
    """The phases of the named schedule; an unknown name is an error listing the known ones."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}") from None


def get_phase(schedule: str, phase: int) -> Phase:
    """Phase ``phase`` (1-based) of the named schedule."""
    phases = get_schedule(schedule)
    if not 1 <= phase <= len(phases):
        raise ValueError(f"schedule {schedule!r} has phases 1..{len(phases)}, not {phase}")
    return phases[phase - 1]
