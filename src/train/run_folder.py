"""The training run folder: what a phase folder holds, what a new start does with it, and where phase 2 starts.

One owner for both trainers, ``train.py`` (:mod:`src.train.trainer`, TensorFlow checkpoints ``model-<step>.index``)
and ``python -m xla_runner train`` (``model-epoch<e>.npz``), so that they refuse, resume, record and chain phases
alike. A run folder holds ``phase<k>/`` folders; each phase folder holds

* ``run.json``: the settings of its first start (key ``"config"``: the finalised config, which
  :mod:`src.model.weights_file` reads to rebuild the network); ``run_history.jsonl``: one line per start;
* ``init_record.json``, when the phase started from a bundled model (``--pretrained models/<name>.npz``): that
  bundle's training record (``<name>.json``) as it was then, so that a model fine-tuned from a bundle keeps the
  history of the weights it started from even after the bundle is replaced;
* ``stats.json``: one record per finished epoch (``epoch_num``, ``global_step``, losses, validation);
* its checkpoints and ``model-best`` (``.index`` / ``.npz``), and the trainer's resume marker (``checkpoint``,
  TensorFlow's, or ``checkpoint.json``);
* ``finished.json`` once every epoch ran (``{"epochs": N, "finished": time}``).

No TensorFlow here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from misc.io import InputError, move_aside, write_json_atomic
from src.config import check_value
from src.model.weights_file import BEST_CHECKPOINT, INIT_RECORD, RUN_RECORD, best_checkpoint

log = logging.getLogger(__name__)

__all__ = ["RunState", "inspect_run_dir", "check_run_dir", "prepare_run_dir", "last_epoch", "stats_records",
           "record_run", "mark_finished", "phase_dir", "phase_checkpoints", "phase_init_checkpoint", "phase_start",
           "BEST_CHECKPOINT", "FINISHED_MARKER", "RUN_HISTORY", "RUN_RECORD", "RESUME_MARKERS", "INIT_RECORD"]

FINISHED_MARKER = "finished.json"  # written when a phase has run all its epochs ({"epochs": N, ...})
RUN_HISTORY = "run_history.jsonl"  # one JSON line per start of a phase
# What each trainer reads to resume: TensorFlow's checkpoint list (train.py), the XLA runner's position.
RESUME_MARKERS = ("checkpoint", "checkpoint.json")
# What a start that failed before training leaves behind (tensorpack's log, our settings): not a run yet.
_STARTUP_FILES = {"log.log", RUN_RECORD, RUN_HISTORY}
# Checkpoints of one phase, ordered by training progress: train.py's global step, the XLA runner's epoch.
_CHECKPOINT_NAMES = (re.compile(r"^model-(\d+)\.index$"), re.compile(r"^model-epoch(\d+)\.npz$"))


@dataclass(frozen=True)
class RunState:
    """What a phase directory holds: nothing, an interrupted run (resumable) or a finished run."""

    kind: str  # 'new' | 'resume' | 'finished' | 'foreign'
    last_epoch: int | None = None


def phase_dir(out_dir: str | os.PathLike, phase_index: int) -> Path:
    """The folder of phase ``phase_index`` (1-based) of the run in ``out_dir``."""
    return Path(out_dir) / f"phase{phase_index}"


def stats_records(path: str | os.PathLike) -> list:
    """The epoch records of a phase folder's ``stats.json``; [] when it is missing or unreadable."""
    try:
        records = json.loads((Path(path) / "stats.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return records if isinstance(records, list) else []


def last_epoch(path: str | os.PathLike) -> int | None:
    """The last epoch ``stats.json`` records, None when it records none."""
    records = stats_records(path)
    return records[-1]["epoch_num"] if records else None


def _finished_epochs(path: Path, last: int | None) -> int | None:
    """Epochs a finished phase ran: its marker's "epochs", else the last epoch in stats.json."""
    try:
        epochs = json.loads((path / FINISHED_MARKER).read_text()).get("epochs")
    except (json.JSONDecodeError, AttributeError, OSError):
        epochs = None
    return epochs if isinstance(epochs, int) else last


def inspect_run_dir(path: str | os.PathLike, epochs: int | None = None) -> RunState:
    """Classify a phase folder without touching it. 'foreign' = non-empty but not a run of ours.

    With ``epochs`` (the number now requested), a phase that finished with fewer epochs counts as
    'resume': it continues from its last checkpoint up to ``epochs``. A folder holding only what a
    failed start leaves (``log.log``, ``run.json``) is 'new'.
    """
    path = Path(path)
    if not path.exists():
        return RunState("new")
    if not path.is_dir():
        return RunState("foreign")
    entries = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if entries <= _STARTUP_FILES:
        return RunState("new")
    last = last_epoch(path)
    has_checkpoint = any((path / marker).is_file() for marker in RESUME_MARKERS)
    if (path / FINISHED_MARKER).is_file():
        done = _finished_epochs(path, last)
        if epochs is not None and has_checkpoint and (done is None or done < epochs):
            return RunState("resume", last)
        return RunState("finished", last)
    if has_checkpoint:
        return RunState("resume", last)
    if (path / RUN_RECORD).is_file():  # started, died before the first checkpoint: nothing to keep
        return RunState("new")
    return RunState("foreign")


def _refusal(path: Path, state: RunState) -> InputError:
    what = "a finished run" if state.kind == "finished" else "files that are not a training run"
    return InputError(f"{path} already holds {what}; choose another --out_dir or pass --overwrite "
                      "(the old directory is kept as <dir>.old-<time>)")


def check_run_dir(path: str | os.PathLike, overwrite: bool, epochs: int | None = None,
                  skip_finished: bool = False) -> RunState:
    """Inspect a phase directory (:func:`inspect_run_dir`) and refuse what must not be touched; changes nothing.

    The one place that decides the refusal: without ``overwrite``, a directory that is not a run, and a finished
    run unless ``skip_finished`` (a run of several phases skips its finished ones), raise :class:`InputError`.
    """
    path = Path(path)
    state = inspect_run_dir(path, epochs)
    refused = ("foreign",) if skip_finished else ("finished", "foreign")
    if not overwrite and state.kind in refused:
        raise _refusal(path, state)
    return state


def prepare_run_dir(path: str | os.PathLike, overwrite: bool, epochs: int | None = None) -> RunState:
    """Decide what to do with a phase directory; never destroys a previous run.

    A new or half-started directory is used as is; an interrupted run, or one that finished with
    fewer than ``epochs`` epochs, is resumed from its last checkpoint (the same command simply
    continues; the finished marker of a shorter run is removed); a finished run, or a non-empty
    directory that is not a run, is refused (:func:`check_run_dir`). With ``overwrite`` every directory that
    is not new (finished, interrupted or foreign) is moved aside to ``<path>.old-<timestamp>``, never deleted,
    so the phase starts afresh.
    """
    path = Path(path)
    state = check_run_dir(path, overwrite, epochs)
    if overwrite and state.kind != "new":
        log.warning("moved the existing %s to %s", path, move_aside(path))
        state = RunState("new")
    if state.kind == "resume" and (path / FINISHED_MARKER).is_file():
        log.info("%s finished after epoch %s; continuing to epoch %s", path, state.last_epoch, epochs)
        (path / FINISHED_MARKER).unlink()
    path.mkdir(parents=True, exist_ok=True)
    return state


def record_run(path: str | os.PathLike, state: RunState, settings: dict) -> None:
    """Keep the settings of every start: ``run.json`` holds the first, ``run_history.jsonl`` one line per start.

    On a resume, settings that differ from ``run.json`` (towers, batch size, config) are logged as a warning.
    A new start from a bundled model (``settings["init"]`` an ``.npz`` with its training record ``.json`` beside it)
    copies that record to ``init_record.json``.
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings, default=str))
    first = path / RUN_RECORD
    if state.kind == "new" or not first.is_file():
        write_json_atomic(first, settings, indent=1)
        _keep_init_record(path, settings.get("init"))
    else:
        try:
            original = json.loads(first.read_text())
        except json.JSONDecodeError:
            original = {}
        changed = [key for key in ("towers", "batch_size_per_tower", "steps_per_epoch", "config")
                   if key in original and key in settings and original[key] != settings[key]]
        if changed:
            log.warning("resuming %s with different %s than it started with (see %s and %s)", path,
                        ", ".join(changed), first, path / RUN_HISTORY)
    record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "start": state.kind, "argv": sys.argv, **settings}
    with open(path / RUN_HISTORY, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _keep_init_record(path: Path, init) -> None:
    if not init or not str(init).endswith(".npz"):
        return
    source = Path(init).with_suffix(".json")
    try:
        record = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError):
        return  # an ImageNet .npz, or a bundle without its record: nothing to chain
    if isinstance(record, dict) and "history" in record:
        write_json_atomic(path / INIT_RECORD, {"path": str(source), **record}, indent=1)


def mark_finished(path: str | os.PathLike, epochs: int) -> None:
    """Write ``finished.json`` (atomically): the phase ran all its ``epochs``."""
    write_json_atomic(Path(path) / FINISHED_MARKER,
                      {"epochs": epochs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1, newline=True)


def phase_checkpoints(path: str | os.PathLike) -> list[Path]:
    """The checkpoints of a phase folder, oldest first: ``model-<step>`` prefixes (``train.py``) and
    ``model-epoch<e>.npz`` files (``xla_runner train``); ``model-best`` is not among them."""
    found = []
    for entry in Path(path).glob("model-*"):
        for pattern in _CHECKPOINT_NAMES:
            if match := pattern.match(entry.name):
                found.append((int(match.group(1)), entry.with_suffix("") if entry.suffix == ".index" else entry))
    return [p for _, p in sorted(found)]


def phase_init_checkpoint(out_dir: str | os.PathLike, phase_index: int, init: str = "last") -> Path | None:
    """The checkpoint a phase starts from when its init is 'previous' (``cfg.TRAIN.PHASE2_INIT``), for both trainers.

    ``init='last'`` (published: the released ``train.py`` loads ``model-<max global_step>``): the previous
    phase's checkpoint of its last step or epoch; ``'best'``: its ``model-best`` (highest validation score).
    Either falls back to the other when it is missing; None when the previous phase has neither.
    """
    check_value("TRAIN.PHASE2_INIT", init)
    previous = phase_dir(out_dir, phase_index - 1)
    checkpoints = phase_checkpoints(previous)
    last = checkpoints[-1] if checkpoints else None
    best = best_checkpoint(previous)
    return (last or best) if init == "last" else (best or last)


def phase_start(out_dir: str | os.PathLike, phase_index: int, phase_init: str, rule: str,
                pretrained: str | os.PathLike | None = None) -> str | os.PathLike | Path | None:
    """The weights a (new) phase starts from, for both trainers: ``pretrained`` when given; else, for a phase whose
    init is ``'previous'``, the previous phase's checkpoint chosen by ``rule`` (``TRAIN.PHASE2_INIT``,
    :func:`phase_init_checkpoint`), refused in one :class:`InputError` when that phase left none; else None (the
    initialisers: random, or ImageNet weights the caller warns are missing)."""
    if pretrained is not None or phase_init != "previous":
        return pretrained
    start = phase_init_checkpoint(out_dir, phase_index, rule)
    if start is None:
        raise InputError(f"phase {phase_index} starts from phase {phase_index - 1}, but "
                         f"{phase_dir(out_dir, phase_index - 1)} has no checkpoint; train that phase first or pass "
                         "--pretrained")
    return start
