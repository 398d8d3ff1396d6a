"""Export the exact TensorFlow graph to portable StableHLO for machines without TensorFlow (``xla_runner``).

Two kinds of artifact, each a StableHLO *portable artifact* (versioned MLIR bytecode that any later XLA,
e.g. a ``jaxlib`` on a GPU machine, reads) with the network's variables as explicit arguments:

* ``forward_b<N>``: the inference graph (``HoVerNet.build_outputs`` in a ``PredictTowerContext``, BatchNorm
  on its moving statistics) for a batch of N windows: ``images`` then every variable -> ``np_prob``,
  ``hv``(, ``tp_prob``).
* ``train_step_phase<k>_b<N>``: one whole tensorpack training step of phase k, built by tensorpack's own
  ``SimpleTrainer.setup_graph`` (``TrainTowerContext``, ``build_graph``, ``optimizer()``,
  ``compute_gradients`` + ``apply_gradients``) with ``UPDATE_OPS`` (BatchNorm moving averages) run
  alongside, as tensorpack's ``RunUpdateOps`` does: data (``images``, ``np_target``, ``hv_target``,
  ``tp_target``) then every variable it reads (weights, BatchNorm statistics, Adam slots, ``beta1_power``,
  ``beta2_power`` and ``learning_rate``, so the schedule is driven from outside) -> the loss terms,
  ``overall_cost`` and ``np_dice``, then the new value of every variable it writes.

How: the graph is built inside ``tf.compat.v1.wrap_function``, whose variables are captured resources (it
needs TF1 tensor hashing, which importing ``src.model.graph`` turns on: tensorpack keeps variables in sets);
``tf.function(jit_compile=True)`` around it lowers to StableHLO with each captured variable an extra
argument and each written one an extra output (``mhlo.input_output_alias`` says which argument it
replaces). TensorFlow emits ``mhlo.copy`` ops that the portable serialiser rejects; each becomes an identity
``stablehlo.reshape`` (same shape, bitwise the same value). Batch sizes are static: one artifact per size.
The graph is built NHWC (XLA chooses its own layouts on a GPU).

``manifest.json`` lists, per artifact, its file, its arguments and outputs in order with the project's
variable names, shapes, dtypes, roles and aliasing, how each variable is initialised (for a start from
scratch without TensorFlow), plus the config overrides the graph was built with, the finalised config,
and the TensorFlow and StableHLO versions.

Run: ``python -m src.model.export --out_dir xla/ [--batch_sizes 8,16,32] [--config KEY=VALUE ...]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from unittest import mock

import tensorflow as tf
from tensorflow.compiler.mlir.stablehlo import stablehlo as shlo
from tensorpack import SimpleTrainer
from tensorpack.input_source import InputSource
from tensorpack.tfutils.tower import PredictTowerContext

from misc.io import atomic_path, write_json_atomic
from opt.schedules import get_phase, get_schedule
from src.config import config_from_args
from src.model import graph as graph_module
from src.model.graph import COST_NAME, LOSS_TENSOR_PREFIX, NP_DICE_NAME, HoVerNet, inference_output_names
from src.model.weights import model_metadata

log = logging.getLogger(__name__)

__all__ = ["export_forward", "export_train_step", "export_all", "to_portable", "variable_init", "MANIFEST_NAME",
           "MANIFEST_FORMAT", "PUBLISHED_TOWERS", "main"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# The published run trained on 2 GPUs; one XLA step takes their global batch (batch per GPU x 2).
PUBLISHED_TOWERS = 2
_EXPORT_OVERRIDES = ["MODEL.DATA_FORMAT=NHWC"]  # channels-last graph; XLA picks device layouts itself

_COPY_OP = re.compile(r"mhlo\.copy (%[\w.#]+) : (tensor<[^>]*>)")
_ALIAS = re.compile(r"parameter_number = (\d+) : i64\}, output_index = array<i64: (\d+)>")


def to_portable(mlir_text: str, target: str | None = None) -> tuple[bytes, str]:
    """Pretty-printed StableHLO from TensorFlow -> (portable artifact bytes, target version used).

    ``mhlo.copy`` (an identity copy TF inserts around variable updates) is rewritten to an identity
    ``stablehlo.reshape``; any other op still in the ``mhlo`` dialect is an error.
    """
    text = _COPY_OP.sub(r"stablehlo.reshape \1 : (\2) -> \2", mlir_text)
    leftover = sorted(set(re.findall(r"= (mhlo\.[a-z_]+)[ (]", text)))
    if leftover:
        raise ValueError(f"the lowered graph still holds non-portable ops {leftover}")
    target = target or shlo.get_current_version()
    return shlo.serialize_portable_artifact_str(text, target), target


def _aliases(mlir_text: str) -> dict[int, int]:
    """{output index: argument number} from the module's ``mhlo.input_output_alias`` attribute."""
    head = mlir_text[:mlir_text.index("func.func")]
    return {int(out): int(arg) for arg, out in _ALIAS.findall(head)}


def variable_init(name: str, shape, cfg) -> dict:
    """How ``name`` starts in a fresh run (what the graph's initialisers do), for numpy to recompute.

    Conv kernels: He, variance scaling (scale 2, fan out, truncated normal, TF1 defaults); conv biases,
    BatchNorm beta and moving mean, Adam slots: 0; BatchNorm gamma and moving variance: 1; Adam's
    ``beta1_power``/``beta2_power``: 0.9 / 0.999; ``learning_rate``: the schedule's first value.
    """
    if name == "learning_rate":
        return {"kind": "constant",
                "value": float(get_phase(cfg.TRAIN.SCHEDULE, 1, cfg.TRAIN.LR_SCHEDULE).lr_schedule[0][1])}
    if name in ("beta1_power", "beta2_power"):
        return {"kind": "constant", "value": 0.9 if name == "beta1_power" else 0.999}
    if re.search(r"/Adam(_1)?$", name) or name.endswith(("/b", "/beta", "/mean/EMA")):
        return {"kind": "constant", "value": 0.0}
    if name.endswith(("/gamma", "/variance/EMA")):
        return {"kind": "constant", "value": 1.0}
    if name.endswith("/W") and len(shape) == 4:
        return {"kind": "he_fan_out_truncated_normal", "scale": 2.0}
    raise ValueError(f"no known initialiser for variable {name!r}")


def _spec(name, shape, dtype, role, **extra) -> dict:
    return {"name": name, "shape": [int(s) for s in shape], "dtype": str(dtype), "role": role, **extra}


def _lower(wrapped, data_specs, cfg, target):
    """Lower a wrap_function to a portable artifact; returns (bytes, target, arguments, outputs, aliases)."""
    # the graph's variables, lifted out of the wrapped function; optimizer slots are only in its collections
    variables = list(wrapped.variables) + wrapped.graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    handles = {id(v.handle): v for v in variables}
    jitted = tf.function(lambda *args: wrapped(*args), jit_compile=True, autograph=False)
    concrete = jitted.get_concrete_function(*data_specs)
    state = []
    for captured in concrete.captured_inputs:
        var = handles.get(id(captured))
        if var is None:
            raise RuntimeError(f"captured input {captured} is not a variable of the graph")
        state.append(var)
    args = [tf.zeros(s.shape, s.dtype) for s in data_specs]
    text = jitted.experimental_get_compiler_ir(*args)(stage="stablehlo")
    text = text if isinstance(text, str) else text.decode()
    blob, target = to_portable(text, target)
    arguments = [_spec(s.name, s.shape, s.dtype.name, "data") for s in data_specs]
    for var in state:
        name = var.name[:-2] if var.name.endswith(":0") else var.name
        arguments.append(_spec(name, var.shape.as_list(), var.dtype.base_dtype.name, "state",
                               init=variable_init(name, var.shape.as_list(), cfg)))
    signature = re.search(r"func\.func (?:public )?@main\((.*?)\) -> ", text)
    declared = len(re.findall(r"%arg\d+: ", signature.group(1))) if signature else None
    if declared != len(arguments):
        raise RuntimeError(f"lowered main takes {declared} arguments, expected {len(arguments)}")
    return blob, target, arguments, _aliases(text)


def export_forward(cfg, nr_types: int | None, batch_size: int, out_dir, target: str | None = None) -> dict:
    """Write ``forward_b<batch_size>.mlirbc`` into ``out_dir``; returns its manifest entry."""
    size = cfg.MODEL.INPUT_SHAPE
    out_names = inference_output_names(nr_types)
    specs = [tf.TensorSpec([batch_size, size, size, 3], tf.float32, graph_module.INFERENCE_INPUTS[0])]

    def forward(images):
        with PredictTowerContext(""):
            outputs = HoVerNet(nr_types=nr_types, freeze=False, cfg=cfg).build_outputs(images)
        return [outputs[n] for n in out_names]

    wrapped = tf.compat.v1.wrap_function(forward, specs)
    blob, target, arguments, aliases = _lower(wrapped, specs, cfg, target)
    if aliases:
        raise RuntimeError(f"the forward graph writes variables (outputs {sorted(aliases)})")
    outputs = [_spec(n, t.shape.as_list(), t.dtype.name, "output") for n, t in zip(out_names, wrapped.outputs,
                                                                                   strict=True)]
    name = f"forward_b{batch_size}"
    return _write(out_dir, name, blob, {"kind": "forward", "batch_size": batch_size, "target": target,
                                        "inputs": arguments, "outputs": outputs})


class _TensorInput(InputSource):
    """A tensorpack InputSource handing given tensors to the trainer (the wrap_function's arguments)."""

    def __init__(self, tensors):
        self._tensors = list(tensors)

    def _setup(self, inputs):
        pass

    def _get_input_tensors(self):
        return list(self._tensors)


def build_train_step(model, inputs):
    """tensorpack's single-tower step on ``inputs``: (train_op, update ops, {output name: tensor}).

    Uses ``SimpleTrainer.setup_graph`` itself, so the step is the one ``train.py`` runs with one tower.
    Reports the loss terms, ``overall_cost`` and ``np_dice`` (named tensors of the graph).
    """

    trainer = SimpleTrainer()
    trainer.setup_graph(model.get_input_signature(), _TensorInput(inputs), model.build_graph, model.get_optimizer)
    graph = tf.compat.v1.get_default_graph()
    names = [LOSS_TENSOR_PREFIX + t for t in model.cfg.LOSS.WEIGHTS
             if not (t.startswith("tp_") and model.nr_types is None)] + [COST_NAME, NP_DICE_NAME]
    tensors = {n: graph.get_tensor_by_name(f"{n}:0") for n in names}
    return trainer.train_op, tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS), tensors


def export_train_step(cfg, nr_types: int | None, phase: int, batch_size: int, out_dir,
                      target: str | None = None) -> dict:
    """Write ``train_step_phase<phase>_b<batch_size>.mlirbc`` (encoder frozen as the schedule's phase says)."""
    freeze = get_phase(cfg.TRAIN.SCHEDULE, phase).freeze_encoder
    model = HoVerNet(nr_types=nr_types, freeze=freeze, cfg=cfg)
    specs = [tf.TensorSpec([batch_size] + s.shape.as_list()[1:], s.dtype, s.name) for s in model.inputs()]
    out_names = []

    def step(*inputs):
        train_op, updates, tensors = build_train_step(model, inputs)
        out_names.extend(tensors)
        with tf.control_dependencies([train_op] + updates):
            return [tf.identity(t) for t in tensors.values()]

    # tensorpack's moving-average loss summaries (EMA/* variables, updated by a callback for TensorBoard) are
    # not part of the training step: without them the step takes no variables it does not need
    with mock.patch.object(graph_module, "add_moving_summary", lambda *args, **kwargs: []):
        wrapped = tf.compat.v1.wrap_function(step, specs)
    blob, target, arguments, aliases = _lower(wrapped, specs, cfg, target)
    outputs = [_spec(n, [], "float32", "metric") for n in out_names]
    for index in range(len(out_names), len(out_names) + len(aliases)):
        source = arguments[aliases[index]]
        outputs.append(_spec(source["name"], source["shape"], source["dtype"], "state", aliases_input=aliases[index]))
    if sorted(aliases) != list(range(len(out_names), len(outputs))):
        raise RuntimeError("updated variables are not the trailing outputs of the step")
    name = f"train_step_phase{phase}_b{batch_size}"
    return _write(out_dir, name, blob, {"kind": "train_step", "phase": phase, "freeze_encoder": freeze,
                                        "batch_size": batch_size, "target": target, "inputs": arguments,
                                        "outputs": outputs})


def _write(out_dir, name: str, blob: bytes, entry: dict) -> dict:
    path = Path(out_dir) / f"{name}.mlirbc"
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    log.info("wrote %s (%.2f MB)", path, len(blob) / 1e6)
    return {"name": name, "file": path.name, **entry}


def export_all(out_dir, overrides=(), batch_sizes=(16,), phases=None, train_batch_size: int | None = None,
               target: str | None = None) -> dict:
    """Export forward artifacts for each batch size and a training step per phase; write the manifest.

    ``phases``: 1-based phases of ``TRAIN.SCHEDULE``; default every phase of it (the published schedule's 2, the
    ``scratch`` schedule's 1). ``train_batch_size``: patches per step of every phase; default the schedule's batch
    per GPU x :data:`PUBLISHED_TOWERS` (the published global batch in one step). An existing manifest's artifacts
    of the same config are kept (so artifacts can be added by later runs); another config is refused.
    """
    if not tf.executing_eagerly():
        raise RuntimeError("the XLA export needs TensorFlow's eager mode, which tensorpack's trainer switches off "
                           "for the whole process: export in a process of its own (python -m src.model.export)")
    overrides = list(overrides) + _EXPORT_OVERRIDES
    cfg = config_from_args(overrides)
    if phases is None:
        phases = range(1, len(get_schedule(cfg.TRAIN.SCHEDULE)) + 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"format": MANIFEST_FORMAT, "tensorflow": tf.__version__, "config_overrides": overrides,
                "config": json.loads(json.dumps(cfg.to_dict(), default=str)), "nr_types": cfg.MODEL.NR_TYPES,
                "input_shape": cfg.MODEL.INPUT_SHAPE, "output_shape": cfg.MODEL.OUTPUT_SHAPE,
                # the record the runner writes into its .npz files, so infer.py/train.py rebuild this graph
                "weights_metadata": model_metadata(cfg, cfg.MODEL.NR_TYPES), "artifacts": {}}
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("config") != manifest["config"]:
            raise ValueError(f"{manifest_path} holds artifacts of another config; use another --out_dir")
        manifest["artifacts"] = old.get("artifacts", {})
    entries = []
    for batch in batch_sizes:
        tf.compat.v1.reset_default_graph()
        entries.append(export_forward(cfg, cfg.MODEL.NR_TYPES, batch, out_dir, target))
    for phase in phases:
        batch = train_batch_size or get_phase(cfg.TRAIN.SCHEDULE, phase).batch_size_per_gpu \
            * PUBLISHED_TOWERS
        tf.compat.v1.reset_default_graph()
        entries.append(export_train_step(cfg, cfg.MODEL.NR_TYPES, phase, batch, out_dir, target))
    for entry in entries:
        manifest["artifacts"][entry.pop("name")] = entry
    manifest["exported"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomic(manifest_path, manifest, indent=1, newline=True)
    return manifest


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.model.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="folder for the .mlirbc artifacts and manifest.json")
    parser.add_argument("--batch_sizes", type=_int_list, default=[16],
                        help="forward batch sizes, one artifact each (default 16), e.g. 8,16,32")
    parser.add_argument("--phases", type=_int_list, default=None,
                        help="training phases to export a step for (default: every phase of TRAIN.SCHEDULE; '' is "
                             "not allowed, use --no_train)")
    parser.add_argument("--no_train", action="store_true", help="export the forward artifacts only")
    parser.add_argument("--train_batch_size", type=int, default=None,
                        help=f"patches per training step (default: the schedule's batch per GPU x {PUBLISHED_TOWERS}, "
                             "the published 2-GPU global batch)")
    parser.add_argument("--target", default=None,
                        help="StableHLO version to write (default: the newest this TensorFlow writes)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. MODEL.MODE=fast (see src/config.py)")
    args = parser.parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)
    phases = [] if args.no_train else args.phases  # None: every phase of the schedule
    try:
        manifest = export_all(args.out_dir, args.config, args.batch_sizes, phases, args.train_batch_size, args.target)
    except (KeyError, ValueError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(manifest['artifacts'])} artifact(s) in {args.out_dir}: {', '.join(sorted(manifest['artifacts']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
