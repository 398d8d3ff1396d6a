"""Loading weights by variable name, with a report of what matched (training and inference).

Two sources are read: a ``.npz`` dict (tensorpack ``varmanip`` format, e.g. the ImageNet
Preact-ResNet50 weights, keys such as ``conv0/W`` or ``conv0/W:0``) and a TensorFlow/tensorpack
checkpoint (a prefix such as ``train_log/model-1000``, its ``.index`` file, or a directory holding a
``checkpoint`` file). :func:`match_weights` compares a file with the graph's variables;
:func:`make_session_init` wraps tensorpack's ``DictRestore`` / ``SaverRestore`` so that

* ``strict=True`` (inference) raises :class:`WeightsMismatchError` listing every missing, unexpected
  and wrongly-shaped model variable before anything is loaded;
* ``strict=False`` (training, e.g. from ImageNet weights) loads the matching variables and logs what
  was and was not loaded.

Training state in a file (optimizer slots, ``global_step``, moving-average summaries) is never
"unexpected"; a checkpoint's training state is restored where the graph has the same variable, as the
published phase-2 start did (``SaverRestore(..., ignore=['learning_rate'])``, vqdang/hover_net
``src/train.py``); ``learning_rate`` is always left to the schedule.
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from tensorpack.tfutils.sessinit import DictRestore, SaverRestore, SessionInit

from misc.io import InputError
from src.model.weights_file import (
    NOT_WEIGHTS,
    UNRECORDED_MODEL_KEYS,
    ModelWeights,
    checkpoint_prefix,
    detect_nr_types,
    is_npz,
    read_npz,
    write_npz,
)

log = logging.getLogger(__name__)
tf1 = tf.compat.v1

__all__ = ["WeightsMismatchError", "WeightMatch", "read_weights", "read_weight_shapes", "is_training_state",
           "match_weights", "graph_variable_shapes", "CheckedSessionInit", "make_session_init", "DEFAULT_IGNORE",
           "inference_graph", "initial_weights", "save_initial_weights", "model_metadata", "NonFiniteWeightsError",
           "format_problems", "stored_nr_types"]

DEFAULT_IGNORE = ("learning_rate",)  # driven by ScheduledHyperParamSetter, never restored
# The .npz format (variables plus the METADATA_KEY record) and checkpoint locations are owned by the
# TensorFlow-free src.model.weights_file; this module matches a file against a graph and restores it.

# Variables that only hold training state: optimizer slots and counters, tensorpack's moving-average
# summaries ('EMA/...'), the step counter and the learning rate.
_TRAINING_STATE = re.compile(
    r"(/(Adam|Adam_\d+|Momentum|RMSProp|RMSProp_\d+|Adagrad|AccumGrad)$)|(^|/)EMA/|"
    r"^(beta1_power|beta2_power|global_step|learning_rate)(_\d+)?$|^apply_gradients")
_TOWER_REPLICA = re.compile(r"^tower\d+/")  # replicated-trainer copies, synced from the main tower


class WeightsMismatchError(ValueError):
    """A weights file does not fit the graph (strict loading)."""


class WeightMatch(NamedTuple):
    """Result of :func:`match_weights`; sorted name lists.

    ``loaded``: in both, same shape. ``missing``: model variables of the graph absent from the file.
    ``unexpected``: model weights of the file absent from the graph. ``shape_mismatch``:
    ``(name, file_shape, graph_shape)`` for names in both with different shapes.
    """

    loaded: list
    missing: list
    unexpected: list
    shape_mismatch: list


def _clean(name: str) -> str:
    """Variable name without the ':0' output suffix."""
    return name[:-2] if name.endswith(":0") else name


def is_training_state(name: str) -> bool:
    """True for optimizer slots/counters, moving-average summaries, global_step and learning_rate."""
    return bool(_TRAINING_STATE.search(_clean(name)))


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` or a checkpoint, keyed by variable name without ':0'.

    In an ``.npz``, entries whose name starts with ``__`` are metadata, not variables, and are skipped;
    float16 arrays (the bundled models are stored in half precision to stay small) come back as float32,
    the graph's dtype.
    """
    if is_npz(path):
        return read_npz(path)[0]
    reader = tf1.train.load_checkpoint(checkpoint_prefix(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def read_weight_shapes(path: str | os.PathLike) -> dict[str, tuple]:
    """Names and shapes only (a checkpoint's tensors are not read)."""
    if is_npz(path):
        return {k: tuple(v.shape) for k, v in read_weights(path).items()}
    reader = tf1.train.load_checkpoint(checkpoint_prefix(path))
    return {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}


def stored_nr_types(weights: ModelWeights | str | os.PathLike) -> int | None:
    """Type channels of the network stored in ``weights`` without building it: an opened ``.npz``'s arrays, else
    the file's variable shapes (a checkpoint's tensors are not read). :class:`misc.io.InputError` naming
    ``--model`` when the file is missing or is not a weights file."""
    if isinstance(weights, ModelWeights) and weights.arrays is not None:
        return weights.nr_types
    path = weights.path if isinstance(weights, ModelWeights) else os.fspath(weights)
    try:
        shapes = read_weight_shapes(path)
    except FileNotFoundError as exc:
        raise InputError(f"--model {path}: {exc}") from exc
    except Exception as exc:  # also TensorFlow's own error types for corrupt checkpoints
        raise InputError(f"--model {path}: {NOT_WEIGHTS}") from exc
    return detect_nr_types(shapes)


def graph_variable_shapes(graph_vars=None) -> dict[str, tuple]:
    """{name without ':0': shape} of the default graph's global variables (or of ``graph_vars``),
    without the replicated-trainer tower copies."""
    if graph_vars is None:
        graph_vars = tf1.global_variables()
    return {_clean(v.name): tuple(v.shape.as_list()) for v in graph_vars if not _TOWER_REPLICA.match(v.name)}


def match_weights(weights: dict, graph_vars, ignore=DEFAULT_IGNORE) -> WeightMatch:
    """Compare a file's weights with the graph's variables by name.

    Args:
        weights: {name: ndarray or shape tuple}, names with or without ':0'.
        graph_vars: a list of ``tf.Variable`` or a dict {name: shape}.
        ignore: names never loaded nor reported.

    Training state (see :func:`is_training_state`) is loaded when both sides have it with the same
    shape but is never reported missing or unexpected.
    """
    file_shapes = {_clean(k): tuple(np.shape(v)) if not isinstance(v, tuple) else v for k, v in weights.items()}
    graph_shapes = dict(graph_vars) if isinstance(graph_vars, dict) else graph_variable_shapes(graph_vars)
    graph_shapes = {_clean(k): tuple(v) for k, v in graph_shapes.items()}
    ignore = {_clean(n) for n in ignore}
    loaded, missing, unexpected, mismatch = [], [], [], []
    for name in sorted(set(file_shapes) | set(graph_shapes)):
        if name in ignore:
            continue
        in_file, in_graph = name in file_shapes, name in graph_shapes
        if in_file and in_graph:
            if file_shapes[name] == graph_shapes[name]:
                loaded.append(name)
            else:
                mismatch.append((name, file_shapes[name], graph_shapes[name]))
        elif not is_training_state(name):
            (missing if in_graph else unexpected).append(name)
    return WeightMatch(loaded, missing, unexpected, mismatch)


def _by_scope(names: list) -> str:
    """'12 under np, 3 under conv0' - a short summary of a long name list by top-level scope."""
    counts = defaultdict(int)
    for name in names:
        counts[name.split("/")[0]] += 1
    return ", ".join(f"{n} under {scope}" for scope, n in sorted(counts.items()))


def format_problems(match: WeightMatch, path, limit: int = 50) -> str:
    lines = [f"weights in {path} do not fit the graph:"]
    for title, items in (("missing from the file", match.missing), ("unexpected in the file", match.unexpected),
                         ("shape mismatch (name, file, graph)", match.shape_mismatch)):
        if items:
            shown = ", ".join(str(i) for i in items[:limit])
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            lines.append(f"  {len(items)} {title}: {shown}{more}")
    return "\n".join(lines)


class NonFiniteWeightsError(ValueError):
    """A weights file holds NaN or infinity in variables the network would load."""


class CheckedSessionInit(SessionInit):
    """A tensorpack ``SessionInit`` that matches a weights file against the graph, reports or raises,
    then restores the matching variables with ``DictRestore`` (npz) or ``SaverRestore`` (checkpoint).

    The match needs the graph, so it happens in ``_setup_graph`` (called by the trainer/predictor
    once the graph is built); ``self.match`` holds the :class:`WeightMatch` afterwards.
    """

    def __init__(self, weights: str | os.PathLike | ModelWeights, strict: bool, ignore=DEFAULT_IGNORE):
        # an opened ModelWeights brings its arrays along: the file is not read again
        self._arrays = weights.arrays if isinstance(weights, ModelWeights) else None
        path = weights.path if isinstance(weights, ModelWeights) else weights
        self.is_npz = is_npz(path)
        if self.is_npz and self._arrays is None and not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file {path}")
        # tensorpack's AutoResumeTrainConfig reads `.path` of a session init
        self.path = os.fspath(path) if self.is_npz else checkpoint_prefix(path)
        self.strict = strict
        self.ignore = tuple(ignore)
        self.match = None
        self._inner = None

    def _setup_graph(self):
        graph_shapes = graph_variable_shapes()
        if self.is_npz:
            values = self._arrays if self._arrays is not None else read_weights(self.path)
            self.match = match_weights(values, graph_shapes, self.ignore)
        else:
            self.match = match_weights(read_weight_shapes(self.path), graph_shapes, self.ignore)
        match = self.match
        if self.strict and (match.missing or match.unexpected or match.shape_mismatch):
            raise WeightsMismatchError(format_problems(match, self.path))
        # the npz is read already; a checkpoint's tensors are read one at a time
        value = values.__getitem__ if self.is_npz else tf1.train.load_checkpoint(self.path).get_tensor
        bad = [n for n in match.loaded if not is_training_state(n) and not np.isfinite(value(n)).all()]
        if bad:  # a NaN network answers NaN, which post-processing turns into "no nuclei" without a word
            shown = ", ".join(bad[:10]) + (f" ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
            raise NonFiniteWeightsError(f"weights in {self.path} hold NaN or infinity in {len(bad)} variable(s): "
                                        f"{shown}")
        log.info("loading %d variables from %s", len(match.loaded), self.path)
        if match.missing:
            log.warning("%d graph variables not in %s keep their initial values: %s",
                        len(match.missing), self.path, _by_scope(match.missing))
            log.debug("not loaded: %s", match.missing)
        if match.unexpected:
            log.warning("%d variables of %s are not in the graph: %s", len(match.unexpected), self.path,
                        ", ".join(match.unexpected[:50]))
        if match.shape_mismatch:
            log.warning("%d variables of %s have another shape in the graph and are not loaded: %s",
                        len(match.shape_mismatch), self.path, match.shape_mismatch)
        if self.is_npz:
            self._inner = DictRestore({name: values[name] for name in match.loaded})
        else:
            skip = list(self.ignore) + [m[0] for m in match.shape_mismatch]
            self._inner = SaverRestore(self.path, ignore=skip)
        self._inner._setup_graph()

    def _run_init(self, sess):
        self._inner._run_init(sess)


def make_session_init(weights: str | os.PathLike | ModelWeights, strict: bool,
                      ignore=DEFAULT_IGNORE) -> CheckedSessionInit:
    """Session init loading ``weights`` (a path to an ``.npz`` or checkpoint, or an opened :class:`ModelWeights`)
    by variable name.

    ``strict=True`` for inference: any missing, unexpected or wrongly-shaped model variable raises
    :class:`WeightsMismatchError` listing them. ``strict=False`` for training: loads what matches and
    logs the rest (ImageNet weights cover only the encoder; the decoders start from He init).
    """
    return CheckedSessionInit(weights, strict=strict, ignore=ignore)


def inference_graph(cfg, nr_types: int | None, seed: int = 0) -> tf.Graph:
    """A new graph holding the inference network of ``cfg`` / ``nr_types`` (input ``images``, N x in x in x 3);
    ``seed`` is its graph-level random seed, so its initial values are the same on every run."""
    from tensorpack.tfutils.tower import PredictTowerContext

    from src.model.graph import INFERENCE_INPUTS, HoVerNet

    graph = tf.Graph()
    with graph.as_default(), PredictTowerContext(""):
        tf1.set_random_seed(seed)
        model = HoVerNet(nr_types=nr_types, cfg=cfg)
        size = cfg.MODEL.INPUT_SHAPE
        model.build_outputs(tf1.placeholder(tf.float32, [None, size, size, 3], INFERENCE_INPUTS[0]))
    return graph


def initial_weights(cfg, nr_types: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """{name: value} of every variable of a freshly initialised inference network (weights and BN stats).

    Untrained: for tests and the demo, which need a complete weights file and have no trained one. The
    graph-level ``seed`` makes the values (and so what such a file predicts) the same on every run.
    """
    graph = inference_graph(cfg, nr_types, seed)
    with graph.as_default():
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            values = sess.run(variables)
    return {_clean(v.name): value for v, value in zip(variables, values, strict=True)}


def save_initial_weights(path: str | os.PathLike, cfg, nr_types: int | None, seed: int = 0) -> None:
    """Write :func:`initial_weights` as an ``.npz`` (atomically) that ``infer.py --model`` accepts, with the
    :func:`model_metadata` record so that the mode and widths need no ``--config``."""
    write_npz(path, initial_weights(cfg, nr_types, seed), model_metadata(cfg, nr_types))


def model_metadata(cfg, nr_types: int | None) -> dict:
    """The :data:`METADATA_KEY` record of a network built from ``cfg`` with ``nr_types``: MODE, PRESET,
    NR_TYPES and every MODEL key that differs from the preset's value (so that the same graph is rebuilt)."""
    from src.config import apply_preset, make_config

    reference = make_config()
    apply_preset(reference, cfg.MODEL.PRESET)
    model = {"MODE": cfg.MODEL.MODE, "PRESET": cfg.MODEL.PRESET, "NR_TYPES": nr_types}
    for key, value in cfg.MODEL.items():
        if key not in model and key not in UNRECORDED_MODEL_KEYS and reference.MODEL.get(key) != value:
            model[key] = list(value) if isinstance(value, tuple) else value
    return {"MODEL": model}
