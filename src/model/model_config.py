"""Which weights ``--model`` names, and the config the network in them was trained with.

A checkpoint written by ``train.py`` sits in a phase folder whose ``run.json`` records the finalised
training config (key ``"config"``). Inference rebuilds the network from it, so a model trained with
``--config MODEL.X=...`` overrides loads without the user repeating them (otherwise the graph differs and
hundreds of variables mismatch). An ``.npz`` may carry the same record inside it: JSON under
:data:`METADATA_KEY` (the bundled models, src/model/bundle.py). :func:`model_config` is the one place that
turns a weights path into a finalised config. No TensorFlow here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from src.config import AttrDict, apply_preset, finalize_config, make_config

log = logging.getLogger(__name__)

__all__ = ["resolve_model_path", "recorded_config", "recorded_overrides", "model_config", "read_npz_metadata",
           "BEST_CHECKPOINT", "RECORDED_SECTIONS", "METADATA_KEY", "UNRECORDED_MODEL_KEYS"]

BEST_CHECKPOINT = "model-best"  # src.training.BEST_CHECKPOINT (not imported: that module loads TensorFlow)
RUN_RECORD = "run.json"  # src.training writes the phase's settings and "config" there
# What of the recorded config inference takes over: the network, the type names of its classes and the
# post-processing it was validated with (a bundled model may record thresholds chosen on its validation set).
RECORDED_SECTIONS = {"MODEL": None, "DATA": ("TYPE_NAMES",), "POSTPROC": None}
_PHASE = re.compile(r"^phase(\d+)$")
METADATA_KEY = "__hovernet__"  # .npz entry holding JSON metadata ({"MODEL": {...}, ...}), never a variable
# MODEL keys a metadata record never holds: derived by finalize_config, or a choice of the machine running it.
UNRECORDED_MODEL_KEYS = ("DATA_FORMAT", "INPUT_SHAPE", "OUTPUT_SHAPE", "CROP_GROUP0", "CROP_GROUP1")


def read_npz_metadata(path: str | os.PathLike) -> dict:
    """The JSON object stored under :data:`METADATA_KEY` in an ``.npz``: ``{"SECTION": {"KEY": value}}`` for the
    config sections (:data:`RECORDED_SECTIONS`), beside a bundle's own entries (``description``, ...).

    ``{}`` for a checkpoint, a missing file, an ``.npz`` without the record, or a file that is not an ``.npz``
    (the weights loader reports that one). A record that is not a JSON object is reported as a warning and ignored:
    the network is then built from the published config and ``--config``.
    """
    if not os.fspath(path).endswith(".npz") or not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if METADATA_KEY not in data.files:
                return {}
            raw = str(data[METADATA_KEY])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        log.warning("%s: %s is not a JSON object; ignored", path, METADATA_KEY)
        return {}
    return record


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` with folders resolved to a best checkpoint; files and checkpoint prefixes pass unchanged.

    A phase folder (``runs/x/phase2``) gives its ``model-best``; a run folder (``runs/x``, holding
    ``phase<k>/``) the ``model-best`` of its last phase that has one. A folder without ``model-best``
    passes unchanged (its latest checkpoint is then loaded).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / f"{BEST_CHECKPOINT}.index").is_file():
        return path / BEST_CHECKPOINT
    phases = sorted((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _PHASE.match(p.name)))
    for _, phase in reversed(phases):
        if (phase / f"{BEST_CHECKPOINT}.index").is_file():
            return phase / BEST_CHECKPOINT
    return path


def recorded_config(model_path: str | os.PathLike) -> tuple[dict, Path] | None:
    """(the training config recorded with the weights, where it was found), or None when there is none:
    inside an ``.npz`` (:func:`read_npz_metadata`), else ``run.json`` beside a checkpoint."""
    model_path = Path(model_path)
    metadata = read_npz_metadata(model_path)
    if isinstance(metadata.get("MODEL"), dict):
        return {k: metadata[k] for k in RECORDED_SECTIONS if isinstance(metadata.get(k), dict)}, model_path
    folder = model_path if model_path.is_dir() else model_path.parent
    record = folder / RUN_RECORD
    if not record.is_file():
        return None
    try:
        config = json.loads(record.read_text()).get("config")
    except (OSError, json.JSONDecodeError, AttributeError):
        log.warning("%s is unreadable; the network is built from the published config and --config", record)
        return None
    return (config, record) if isinstance(config, dict) else None


def _like(default, value):
    """A JSON value in the type of the config's default: JSON has no tuples nor integer dict keys."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, dict) and isinstance(value, dict) and all(isinstance(k, int) for k in default):
        return {int(k): v for k, v in value.items()}
    return value


def _apply_recorded(C: AttrDict, config: dict) -> list[str]:
    """Copy the recorded values of RECORDED_SECTIONS into ``C``; returns the keys that differ from the defaults."""
    changed = []
    preset = (config.get("MODEL") or {}).get("PRESET")
    if preset is not None and preset != C.MODEL.PRESET:  # a record may list only what differs from its preset
        apply_preset(C, preset)
        changed.append(f"MODEL.PRESET={preset!r}")
    for section, keys in RECORDED_SECTIONS.items():
        recorded = config.get(section) or {}
        for key in keys or recorded:
            if key not in C[section] or key not in recorded:  # derived (INPUT_SHAPE) or since-removed keys
                continue
            value = _like(C[section][key], recorded[key])
            if value != C[section][key]:
                changed.append(f"{section}.{key}={value!r}")
                C[section][key] = value
    return changed


def recorded_overrides(model_path: str | os.PathLike) -> list[str]:
    """The settings recorded with the weights that do not shape the graph (``POSTPROC``, ``DATA.TYPE_NAMES``) as
    ``KEY=VALUE`` overrides, for a runner whose graph is fixed elsewhere (``xla_runner infer``'s export): put before
    the user's ``--config``, they give it the same post-processing ``infer.py`` applies to that file."""
    found = recorded_config(model_path)
    if found is None:
        return []
    C = make_config()
    overrides = []
    for section, keys in RECORDED_SECTIONS.items():
        if section == "MODEL":
            continue
        recorded = found[0].get(section) or {}
        for key in keys or recorded:
            if key in C[section] and key in recorded:
                overrides.append(f"{section}.{key}={_like(C[section][key], recorded[key])!r}")
    return overrides


def model_config(model_path: str | os.PathLike, overrides: list[str] | None = None) -> AttrDict:
    """The finalised config to build the network stored at ``model_path`` (resolve it first).

    Published defaults, then the training config recorded beside the weights (:func:`recorded_config`;
    sections in RECORDED_SECTIONS), then ``overrides`` (``--config KEY=VALUE``, which win).
    """
    C = make_config()
    found = recorded_config(model_path)
    if found is not None:
        changed = _apply_recorded(C, found[0])
        if changed:
            log.info("network settings from %s: %s", found[1], ", ".join(changed))
    C.update_args(list(overrides or []))
    return finalize_config(C)
