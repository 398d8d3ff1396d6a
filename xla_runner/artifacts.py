"""Loading exported artifacts, compiling them with XLA (through jax) and their state as named numpy arrays.

:class:`Artifacts` reads ``manifest.json`` (written by ``src.model.export``); :class:`Executable` compiles one
portable StableHLO artifact for one device and runs it on positional arguments in the manifest's order.
:class:`XlaPredictor` is the drop-in for ``src.infer.predictor.HoVerNetPredictor``: windows -> maps in the channel
order ``src.infer.tiles.split_channels`` expects. :func:`initial_state` builds every variable a graph reads from
an ``.npz`` and/or the published initialisers recomputed in numpy. No TensorFlow.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from misc.io import InputError
from src.config import config_from_args
from src.model.weights_file import ModelWeights, detect_nr_types, read_npz

log = logging.getLogger(__name__)

__all__ = ["Artifacts", "Executable", "XlaPredictor", "initial_state", "MANIFEST_NAME", "CACHE_ENV"]

MANIFEST_NAME = "manifest.json"
CACHE_ENV = "XLA_RUNNER_CACHE"  # folder of compiled executables, reused across processes (see _compile)
_COMPILED: dict[tuple[str, str], object] = {}  # (artifact path, device) -> loaded executable, per process


class Artifacts:
    """An export folder: ``manifest.json`` plus one ``.mlirbc`` per artifact.

    ``cfg`` is the config the graph was built with (the manifest's overrides, then ``overrides`` for what does
    not change the graph, e.g. post-processing); overriding a ``MODEL`` key is refused.
    """

    def __init__(self, folder, overrides=()):
        self.folder = Path(folder)
        path = self.folder / MANIFEST_NAME
        if not path.is_file():
            raise InputError(f"{self.folder}: no {MANIFEST_NAME} (export with python -m src.model.export)")
        self.manifest = json.loads(path.read_text())
        self.cfg = config_from_args(list(self.manifest["config_overrides"]) + list(overrides))
        built = self.manifest["config"]["MODEL"]
        now = json.loads(json.dumps(self.cfg.to_dict(), default=str))["MODEL"]
        if now != built:
            changed = sorted(k for k in set(built) | set(now) if built.get(k) != now.get(k))
            raise InputError(f"MODEL settings {changed} differ from the exported graph's; re-export instead")
        self.nr_types = self.manifest["nr_types"]
        self.input_shape = int(self.manifest["input_shape"])
        self.output_shape = int(self.manifest["output_shape"])

    @property
    def entries(self) -> dict[str, dict]:
        return self.manifest["artifacts"]

    def find(self, kind: str, batch_size: int | None = None, phase: int | None = None) -> dict:
        """The manifest entry of ``kind`` ('forward' / 'train_step') with that batch size and phase.

        Without ``batch_size``: the largest forward, or the one training step of the phase.
        """
        found = [dict(e, name=n) for n, e in self.entries.items()
                 if e["kind"] == kind and (batch_size is None or e["batch_size"] == batch_size)
                 and (phase is None or e.get("phase") == phase)]
        if not found:
            what = f"{kind}" + (f" batch {batch_size}" if batch_size else "") + (f" phase {phase}" if phase else "")
            have = ", ".join(sorted(self.entries)) or "none"
            raise InputError(f"{self.folder} has no {what} artifact (it has: {have}); export it")
        if kind == "train_step" and batch_size is None and len(found) > 1:
            raise InputError(f"{self.folder} has several phase-{phase} steps; choose one with --batch_size")
        return max(found, key=lambda e: e["batch_size"])

    def executable(self, entry: dict, device=None) -> Executable:
        return Executable(self.folder / entry["file"], entry, device)


def _device(device=None):
    import jax

    return device if device is not None else jax.devices()[0]


def _compile(blob: bytes, device, path):
    """Compile a portable artifact for ``device``; with ``$XLA_RUNNER_CACHE`` set, through a cache there.

    The cache holds serialised executables keyed by the artifact's bytes, jax/jaxlib versions, platform and
    device kind, so each artifact compiles once per machine (XLA compilation is most of a short run's time on
    a CPU). Only point it at a folder you created: loading a serialised executable runs its code.
    """
    import hashlib

    import jax
    from jax._src import xla_bridge
    from jax._src.lib import version_str as jaxlib_version
    from jax._src.lib import xla_client

    backend = xla_bridge.get_backend(device.platform)
    devices = xla_client.DeviceList((device,))
    folder = os.environ.get(CACHE_ENV)
    cached = None
    if folder:
        digest = hashlib.sha256(blob)
        for part in (jax.__version__, jaxlib_version, backend.platform_version,
                     device.device_kind, str(device.id)):
            digest.update(b"\0" + str(part).encode())
        cached = Path(folder) / f"{digest.hexdigest()}.xlaexe"
        if cached.is_file():
            try:
                exe = backend.deserialize_executable(cached.read_bytes(), devices, xla_client.CompileOptions())
                log.info("loaded the compiled %s from %s", path, cached)
                return exe
            except Exception as exc:  # a stale or truncated entry: compile afresh and replace it
                log.warning("could not load %s (%s); compiling", cached, exc)
    start = time.perf_counter()
    exe = backend.compile_and_load(blob, devices, xla_client.CompileOptions())
    log.info("compiled %s for %s in %.1f s", path, device, time.perf_counter() - start)
    if cached is not None:
        from misc.io import atomic_path

        with atomic_path(cached) as tmp:
            tmp.write_bytes(backend.serialize_executable(exe))
    return exe


class Executable:
    """One artifact compiled for one device (cached per process); call with arrays in manifest order.

    ``__call__`` takes numpy or jax arrays (``inputs`` of the entry, in order) and returns a list of jax
    arrays on the device (``outputs`` in order); nothing is copied back to the host until asked.
    """

    def __init__(self, path, entry: dict, device=None):
        import jax

        self.entry = entry
        self.device = _device(device)
        self.inputs = entry["inputs"]
        self.outputs = entry["outputs"]
        key = (os.fspath(path), str(self.device))
        if key not in _COMPILED:
            _COMPILED[key] = _compile(Path(path).read_bytes(), self.device, path)
        self._exe = _COMPILED[key]
        self.put = lambda array: jax.device_put(array, self.device)  # one array onto this device
        self._array_type = jax.Array

    def __call__(self, *arrays):
        if len(arrays) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} arguments, got {len(arrays)}")
        args = []
        for spec, array in zip(self.inputs, arrays, strict=True):
            if tuple(np.shape(array)) != tuple(spec["shape"]):
                raise ValueError(f"{spec['name']}: shape {np.shape(array)}, the graph takes {spec['shape']}")
            if not isinstance(array, self._array_type):
                array = np.asarray(array, dtype=spec["dtype"])
            args.append(self.put(array))
        results = self._exe.execute_sharded(args).disassemble_into_single_device_arrays()
        return [r[0] for r in results]


def _he_fan_out(shape, scale: float, rng: np.random.Generator) -> np.ndarray:
    """TF1 ``variance_scaling_initializer(scale, mode='fan_out')``: truncated normal (2 sigma), HWIO kernel."""
    fan_out = float(np.prod(shape[:-2])) * shape[-1]
    stddev = np.sqrt(scale / fan_out) / 0.87962566103423978  # std of a unit normal truncated at +-2
    values = rng.standard_normal(size=shape)
    bad = np.abs(values) > 2.0
    while bad.any():  # redraw outside two standard deviations, as TF's truncated normal does
        values[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(values) > 2.0
    return (values * stddev).astype(np.float32)


def initial_state(entry: dict, weights: dict[str, np.ndarray] | None = None, seed: int = 0,
                  strict: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every ``state`` input of an artifact: from ``weights`` by name where present, else its initialiser.

    Returns ``(state, missing)``: {name: array} and the names that took their initialiser. ``strict`` raises
    :class:`InputError` listing missing and wrongly shaped variables (inference). Training state (Adam slots,
    ``beta1_power``...) is never reported missing.
    """
    weights = weights or {}
    rng = np.random.default_rng(seed)
    state, missing, wrong = {}, [], []
    for spec in entry["inputs"]:
        if spec["role"] != "state":
            continue
        name, shape = spec["name"], tuple(spec["shape"])
        if name in weights and name != "learning_rate":
            value = np.asarray(weights[name])
            if value.shape == shape:
                state[name] = value.astype(spec["dtype"])
                continue
            wrong.append((name, value.shape, shape))
        init = spec["init"]
        if init["kind"] == "constant":
            state[name] = np.full(shape, init["value"], dtype=spec["dtype"])
        elif init["kind"] == "he_fan_out_truncated_normal":
            state[name] = _he_fan_out(shape, init["scale"], rng)
        else:
            raise ValueError(f"{name}: unknown initialiser {init}")
        if not _is_training_state(name):
            missing.append(name)
    if strict and (missing or wrong):
        raise InputError(f"weights do not fit the graph: {len(missing)} missing ({', '.join(missing[:20])}), "
                         f"{len(wrong)} of another shape ({wrong[:5]})")
    if wrong:
        log.warning("%d variables have another shape in the file and start from their initialiser: %s",
                    len(wrong), wrong[:10])
    return state, missing


def _is_training_state(name: str) -> bool:
    return name in ("learning_rate", "beta1_power", "beta2_power") or name.endswith(("/Adam", "/Adam_1"))


class XlaPredictor:
    """``batch (N x in x in x 3 RGB 0..255) -> N x out x out x C float32`` through the exported forward.

    Same contract as ``src.infer.predictor.HoVerNetPredictor``: channels nuclear probability, hv x, hv y, then the
    type probabilities. Batches of any size are cut into / padded up to the artifact's static batch.
    """

    def __init__(self, artifacts: Artifacts, weights: ModelWeights | str | os.PathLike, batch_size: int | None = None,
                 device=None):
        self.entry = artifacts.find("forward", batch_size)
        self.batch_size = int(self.entry["batch_size"])
        self.input_shape = artifacts.input_shape
        self.nr_types = artifacts.nr_types
        weights_path = weights.path if isinstance(weights, ModelWeights) else weights
        if isinstance(weights, ModelWeights) and weights.arrays is None:
            raise InputError(f"{weights_path}: the XLA runner reads .npz weights, not TensorFlow checkpoints "
                             "(python -m src.model.bundle packs one)")
        weights = weights.arrays if isinstance(weights, ModelWeights) else read_npz(weights_path)[0]
        stored = detect_nr_types({name: value.shape for name, value in weights.items()})
        if stored != self.nr_types:
            raise InputError(f"{weights_path} has {stored or 'no'} type channels; the exported graph has "
                             f"{self.nr_types}")
        state, _ = initial_state(self.entry, weights, strict=True)
        self._exe = artifacts.executable(self.entry, device)
        names = [s["name"] for s in self.entry["inputs"] if s["role"] == "state"]
        self._state = [self._exe.put(state[n]) for n in names]  # on the device once
        self.output_names = [s["name"] for s in self.entry["outputs"]]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (self.input_shape, self.input_shape, 3):
            raise ValueError(f"expected N x {self.input_shape} x {self.input_shape} x 3 windows, got {batch.shape}")
        maps = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], np.float32)])
            outputs = dict(zip(self.output_names, (np.asarray(o) for o in self._exe(chunk, *self._state)),
                               strict=True))
            parts = [outputs["np_prob"][:n, ..., 1:2], outputs["hv"][:n]]
            if self.nr_types is not None:
                parts.append(outputs["tp_prob"][:n])
            maps.append(np.concatenate(parts, axis=-1).astype(np.float32, copy=False))
        return np.concatenate(maps) if maps else np.zeros((0,), np.float32)
