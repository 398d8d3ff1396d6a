"""The weights file: what ``--model`` names, what it holds, and the config its network was trained with.

One TensorFlow-free module owns the format so that ``infer.py``, ``xla_runner``, the Dask workers, ``train.py``,
``benchmarks/`` and ``scripts/`` read and write it the same way:

* **where**: :func:`locate_weights` turns ``--model`` into a file: a bundled model's name (``models/<name>.npz``),
  a run or phase folder (its ``model-best``), a checkpoint prefix / ``.index`` / ``checkpoint`` file, or an ``.npz``;
* **the .npz format**: tensorpack's ``varmanip`` dict of variable name -> array, plus JSON under
  :data:`METADATA_KEY` (the ``MODEL`` values the graph needs, optionally the ``POSTPROC`` values chosen for the
  model, a bundle's description). :func:`read_npz` and :func:`write_npz` are its one reader and writer;
* **the settings record**: inside an ``.npz``, else ``run.json`` beside a ``train.py`` checkpoint (key
  ``"config"``). :func:`model_config` builds the finalised config from it, so a model trained with
  ``--config MODEL.X=...`` loads without the user repeating them;
* **identity**: :func:`weights_digest`, by content, so new weights at an old path are another model.

:func:`open_model` does all of it once per process and returns a :class:`ModelWeights` (path, config, digest,
record and, for an ``.npz``, the arrays themselves, read from one pass over the file).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from misc.io import InputError
from src.config import AttrDict, apply_preset, finalize_config, make_config

log = logging.getLogger(__name__)

__all__ = ["ModelWeights", "open_model", "locate_weights", "bundled_models", "checkpoint_prefix", "read_npz",
           "read_npz_metadata", "write_npz", "weights_digest", "resolve_model_path", "recorded_config",
           "recorded_overrides", "model_config", "is_npz", "RECORDED_SECTIONS", "METADATA_KEY",
           "UNRECORDED_MODEL_KEYS", "MODELS_DIR", "NOT_WEIGHTS", "TP_HEAD_BIAS", "detect_nr_types", "best_checkpoint",
           "BEST_CHECKPOINT", "RUN_RECORD", "INIT_RECORD"]

NOT_WEIGHTS = "not a weights file (.npz of arrays or a checkpoint)"  # the one message for any other file
TP_HEAD_BIAS = "conv_out_tp/b"  # the type head's bias: its length is the number of types
# The folder of the bundled models, found from this file (the repository layout), never an absolute path.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
_BUNDLED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What of the recorded config inference takes over: the network, the type names of its classes and the
# post-processing it was validated with (a bundled model may record thresholds chosen on its validation set).
RECORDED_SECTIONS = {"MODEL": None, "DATA": ("TYPE_NAMES",), "POSTPROC": None}
_PHASE = re.compile(r"^phase(\d+)$")
# What a training run folder holds that --model reads (src/train/run_folder.py writes them):
BEST_CHECKPOINT = "model-best"  # the best checkpoint's name (+ '.index' / '.npz') by the run's best metric
RUN_RECORD = "run.json"  # the settings of a phase's first start, "config" among them
INIT_RECORD = "init_record.json"  # the training record of the bundle a phase started from (--pretrained)
METADATA_KEY = "__hovernet__"  # .npz entry holding JSON metadata ({"MODEL": {...}, ...}), never a variable
# MODEL keys a metadata record never holds: derived by finalize_config, or a choice of the machine running it.
UNRECORDED_MODEL_KEYS = ("DATA_FORMAT", "INPUT_SHAPE", "OUTPUT_SHAPE", "CROP_GROUP0", "CROP_GROUP1")
_CHECKPOINT_LINE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.MULTILINE)


def is_npz(path) -> bool:
    return os.fspath(path).endswith(".npz")


def _clean(name: str) -> str:
    """Variable name without the ':0' output suffix."""
    return name[:-2] if name.endswith(":0") else name


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """The checkpoint prefix for ``path``: a prefix, its ``.index``/``.data-*`` file, a ``checkpoint`` file, or a
    folder with a ``checkpoint`` file (the latest it names, read as TensorFlow writes it). FileNotFoundError when
    there is none, ValueError ``NOT_WEIGHTS`` for another file."""
    path = os.fspath(path)
    if os.path.isdir(path) or os.path.basename(path) == "checkpoint":
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        try:
            found = _CHECKPOINT_LINE.search(Path(directory, "checkpoint").read_text())
        except OSError:
            found = None
        if found is None:
            raise FileNotFoundError(f"{directory} has no 'checkpoint' file naming a checkpoint")
        prefix = found.group(1)
        return prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
    prefix = re.sub(r"\.(index|data-\d+-of-\d+)$", "", path)
    if os.path.isfile(path) and not os.path.isfile(prefix + ".index"):
        raise ValueError(f"{path}: {NOT_WEIGHTS}")
    if not os.path.isfile(prefix + ".index"):
        raise FileNotFoundError(f"no checkpoint at {path} (expected {prefix}.index)")
    return prefix


def detect_nr_types(weight_shapes: dict[str, tuple]) -> int | None:
    """Number of type channels of the network stored in a weights file; None when it has no tp branch."""
    shape = weight_shapes.get(TP_HEAD_BIAS)
    return int(shape[0]) if shape else None


def _parse_metadata(raw: str, path) -> dict:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        log.warning("%s: %s is not a JSON object; ignored", path, METADATA_KEY)
        return {}
    return record


def read_npz(source: str | os.PathLike | bytes, name=None, as_stored: bool = False
             ) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, metadata) of an ``.npz`` of weights: the one reader.

    ``source``: a path, or the file's bytes (``name`` then labels messages). Arrays are keyed by variable name
    without ':0'; entries starting with ``__`` are not variables (:data:`METADATA_KEY` is parsed into
    ``metadata``, ``{}`` without it); float16 arrays (a bundle may be stored in half precision) come back as the
    graph's float32 unless ``as_stored`` (for rewriting the file as it was). ValueError ``NOT_WEIGHTS`` for
    anything that is not an ``.npz`` of plain arrays: numpy's own message for object arrays suggests
    allow_pickle, which would run code from the file, so it is never passed on. FileNotFoundError for a missing
    file.
    """
    name = os.fspath(source) if name is None and not isinstance(source, bytes) else name
    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False) as data:
            arrays = {_clean(k): data[k].astype(np.float32) if data[k].dtype == np.float16 and not as_stored
                      else data[k] for k in data.files if not k.startswith("__")}
            raw = str(data[METADATA_KEY]) if METADATA_KEY in data.files else None
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{name}: {NOT_WEIGHTS}") from exc
    return arrays, ({} if raw is None else _parse_metadata(raw, name))


def read_npz_metadata(path: str | os.PathLike) -> dict:
    """The :data:`METADATA_KEY` record of an ``.npz`` without reading its arrays (``infer.py --list-models``).

    ``{}`` for a checkpoint, a missing file, an ``.npz`` without the record, or a file that is not an ``.npz``
    (the weights loader reports that one). A record that is not a JSON object is reported as a warning and ignored.
    """
    if not is_npz(path) or not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            if METADATA_KEY not in data.files:
                return {}
            raw = str(data[METADATA_KEY])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return {}
    return _parse_metadata(raw, path)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict | None = None,
              compress: bool = False) -> None:
    """Write ``arrays`` (variable name -> array) and the JSON ``metadata`` under :data:`METADATA_KEY`, atomically:
    the one writer (``train.py``'s initial weights, ``src.model.convert``, bundles, ``xla_runner train``)."""
    from misc.io import atomic_path

    packed = {name: np.asarray(value) for name, value in arrays.items()}
    if metadata is not None:
        packed[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **packed)


def _digest_of_bytes(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


def weights_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` identifying the weights in ``path`` by content, not by name (FileNotFoundError if none).

    An ``.npz`` is hashed whole (about a second for HoVer-Net's 150 MB). A checkpoint's ``.index`` is hashed: it
    records every tensor's name, shape, offset and CRC32C checksum, so it changes whenever a variable does, and
    it is a few hundred kB. ``runs/x/phase2/model-best`` after more training thus gets a new digest, while the
    same weights copied elsewhere keep theirs.
    """
    file = os.fspath(path) if is_npz(path) else checkpoint_prefix(path) + ".index"
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no weights file {file}")
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def bundled_models(models_dir: Path | None = None) -> dict[str, dict]:
    """{name: metadata} of every ``<name>.npz`` in ``models_dir`` (default :data:`MODELS_DIR`), sorted by name."""
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
    if not models_dir.is_dir():
        return {}
    return {p.stem: read_npz_metadata(p) for p in sorted(models_dir.glob("*.npz"))}


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` with folders resolved to a best checkpoint; files and checkpoint prefixes pass unchanged.

    A phase folder (``runs/x/phase2``) gives its ``model-best`` (``.index`` of ``train.py``, ``.npz`` of
    ``xla_runner train``); a run folder (``runs/x``, holding ``phase<k>/``) the ``model-best`` of its last phase
    that has one. A folder without ``model-best`` passes unchanged (its latest checkpoint is then loaded).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    phases = sorted(((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _PHASE.match(p.name))),
                    reverse=True)
    for phase in [path, *(p for _, p in phases)]:
        if (best := best_checkpoint(phase)) is not None:
            return best
    return path


def best_checkpoint(phase: str | os.PathLike) -> Path | None:
    """A phase folder's ``model-best``: the checkpoint prefix of ``train.py``, the ``.npz`` of ``xla_runner train``;
    None when it has neither."""
    phase = Path(phase)
    if (phase / f"{BEST_CHECKPOINT}.index").is_file():
        return phase / BEST_CHECKPOINT
    return phase / f"{BEST_CHECKPOINT}.npz" if (phase / f"{BEST_CHECKPOINT}.npz").is_file() else None


def locate_weights(model: str | os.PathLike, models_dir: Path | None = None) -> str:
    """``--model`` as the path of a weights file: an ``.npz`` or a checkpoint prefix.

    An existing file, folder (:func:`resolve_model_path`) or checkpoint prefix as given, else a bundled model's
    name (``models_dir``, default :data:`MODELS_DIR`). Raises :class:`InputError` naming the bundled models when
    ``model`` is neither.
    """
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)
    model = os.fspath(model)
    if Path(model).exists() or Path(f"{model}.index").is_file():
        return os.fspath(resolve_model_path(model))
    bundled = models_dir / f"{model}.npz"
    if _BUNDLED_NAME.match(model) and bundled.is_file():
        return str(bundled)
    names = ", ".join(bundled_models(models_dir)) or "none"
    raise InputError(f"--model {model}: no such file, checkpoint or bundled model (bundled: {names})")


def _recorded_sections(metadata: dict) -> dict | None:
    if isinstance(metadata.get("MODEL"), dict):
        return {k: metadata[k] for k in RECORDED_SECTIONS if isinstance(metadata.get(k), dict)}
    return None


def recorded_config(model_path: str | os.PathLike, metadata: dict | None = None) -> tuple[dict, Path] | None:
    """(the training config recorded with the weights, where it was found), or None when there is none: inside an
    ``.npz`` (its ``metadata``, read here unless given), else ``run.json`` beside a checkpoint."""
    model_path = Path(model_path)
    if is_npz(model_path):
        found = _recorded_sections(read_npz_metadata(model_path) if metadata is None else metadata)
        return None if found is None else (found, model_path)
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


def recorded_overrides(model_path: str | os.PathLike, metadata: dict | None = None) -> list[str]:
    """The settings recorded with the weights that do not shape the graph (``POSTPROC``, ``DATA.TYPE_NAMES``) as
    ``KEY=VALUE`` overrides, for a runner whose graph is fixed elsewhere (``xla_runner infer``'s export): put before
    the user's ``--config``, they give it the same post-processing ``infer.py`` applies to that file."""
    found = recorded_config(model_path, metadata)
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


def model_config(model_path: str | os.PathLike, overrides: list[str] | None = None,
                 metadata: dict | None = None) -> AttrDict:
    """The finalised config to build the network stored at ``model_path`` (a located weights file).

    Published defaults, then the training config recorded with the weights (:func:`recorded_config`; sections in
    RECORDED_SECTIONS), then ``overrides`` (``--config KEY=VALUE``, which win).
    """
    C = make_config()
    found = recorded_config(model_path, metadata)
    if found is not None:
        changed = _apply_recorded(C, found[0])
        if changed:
            log.info("network settings from %s: %s", found[1], ", ".join(changed))
    C.update_args(list(overrides or []))
    return finalize_config(C)


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """A weights file opened once: what every entry point passes on instead of a path.

    ``path``: the located file (an ``.npz`` or a checkpoint prefix). ``cfg``: the finalised config its network is
    built with (:func:`model_config`: published values, the record, then the caller's overrides). ``digest``:
    :func:`weights_digest`. ``metadata``: the ``.npz`` record (``{}`` for a checkpoint). ``arrays``: an ``.npz``'s
    variables (None for a checkpoint, which TensorFlow reads variable by variable). ``overrides``: the caller's,
    kept so that a worker process can open the same model (:meth:`reopen_args`).
    """

    path: str
    cfg: AttrDict
    digest: str
    metadata: dict = field(default_factory=dict)
    arrays: dict | None = None
    overrides: tuple = ()

    @property
    def nr_types(self) -> int | None:
        """Type channels of the stored network when the file says (an ``.npz``); else the config's value."""
        if self.arrays is not None:
            return detect_nr_types({k: v.shape for k, v in self.arrays.items()})
        return self.cfg.MODEL.NR_TYPES

    def recorded_overrides(self) -> list[str]:
        """:func:`recorded_overrides` of this file (for a runner whose graph is fixed elsewhere)."""
        return recorded_overrides(self.path, self.metadata)

    def run_identity(self) -> dict:
        """What an output folder records of the weights that made it: content digest and resolved path."""
        return {"weights": self.digest, "model_path": str(Path(self.path).resolve())}


def open_model(model: str | os.PathLike, overrides=(), models_dir: Path | None = None) -> ModelWeights:
    """Locate ``--model`` (:func:`locate_weights`), read it once and build its config.

    An ``.npz`` is read in one pass (its bytes are hashed and parsed from memory); a checkpoint's ``.index`` is
    hashed and its ``run.json`` read. Raises :class:`InputError` (naming ``--model``) for a missing or unreadable
    file; the config's own errors (a bad ``--config``) pass unchanged.
    """
    path = locate_weights(model, models_dir)
    try:
        if is_npz(path):
            content = Path(path).read_bytes()
            arrays, metadata = read_npz(content, name=path)
            digest = _digest_of_bytes(content)
        else:
            path = checkpoint_prefix(path)
            arrays, metadata, digest = None, {}, weights_digest(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"--model {model}: {exc}") from exc
    cfg = model_config(path, list(overrides), metadata)
    return ModelWeights(path=path, cfg=cfg, digest=digest, metadata=metadata, arrays=arrays,
                        overrides=tuple(overrides))
