"""Turn a checkpoint released by the HoVer-Net authors (PyTorch state dict) into this project's ``.npz``.

Usage (from the repository root)::

    python -m src.model.convert hovernet_fast_pannuke_type_tf2pytorch.tar hovernet_fast_pannuke.npz
    python infer.py --model hovernet_fast_pannuke.npz --types misc/type_info/pannuke.json ...

The released checkpoints (vqdang/hover_net, master README: CoNSeP, Kumar, CPM17 in the 'original' mode;
PanNuke, MoNuSAC in the 'fast' mode) were trained with the TensorFlow code and converted to PyTorch with a
published one-to-one table of variable names, shipped here as ``hovernet_tf_pytorch_names.csv`` (a copy of
``variables_tf2pytorch.csv`` of vqdang/hover_net, MIT licence, Copyright (c) 2020 vqdang; see
``hovernet_tf_pytorch_names.NOTICE``). This project's graph uses the TensorFlow names, so the conversion is
the table read backwards:

* names: PyTorch -> TensorFlow by the table (without ':0'); a ``module.`` prefix (``nn.DataParallel``) and
  the ``desc`` wrapper (``{"desc": state_dict}`` in the ``.tar``, or a ``desc.`` name prefix) are removed;
  ``upsample2x.unpool_mat`` (a constant 2x2 of ones, no variable here) and BatchNorm's
  ``num_batches_tracked`` counter are dropped;
* layouts: 4-d convolution kernels PyTorch OIHW -> TensorFlow HWIO (``transpose(2, 3, 1, 0)``); BatchNorm
  ``running_mean`` / ``running_var`` become ``bn/mean/EMA`` / ``bn/variance/EMA`` (by the table); everything
  else (gamma, beta, the heads' biases) is copied;
* the mode is read from the decoder kernels (5x5 original, 3x3 fast; ``src.geometry.MODES``), the number of
  types from the ``tp`` head (none: an np + hv model), and both are recorded in the ``.npz``
  (``src.model.weights.METADATA_KEY``), so ``infer.py`` needs no flag for them.

A name the table does not know is *extra*, a name the table expects for the branches present is *missing*;
either stops the conversion with the names listed. With ``--check`` (default) the result is then matched
strictly against the graph built for the detected mode (every variable present, with its shape).

torch is needed only to read a ``.tar``/``.pth`` (``pip install -r requirements-convert.txt``); a ``.npz`` of
the state dict (PyTorch name -> array) is read with numpy alone. The released networks have the published
widths (``MODEL.PRESET='full'``); for a state dict of other widths pass them with ``--config`` (recorded too).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from pathlib import Path

import numpy as np

from src.geometry import MODES

log = logging.getLogger(__name__)

__all__ = ["NAME_TABLE", "ConversionError", "read_name_table", "load_state_dict", "clean_state_dict",
           "detect_mode", "detect_nr_types", "convert_state_dict", "inference_variable_shapes", "check_against_graph",
           "main"]

NAME_TABLE = Path(__file__).with_name("hovernet_tf_pytorch_names.csv")
IGNORED = ("upsample2x.unpool_mat",)  # buffers of the PyTorch model with no variable here
IGNORED_SUFFIXES = (".num_batches_tracked",)  # BatchNorm step counters, written by PyTorch >= 0.4.1
# PyTorch names whose kernel sizes tell the mode, and the type head (its output channels = nr_types)
MODE_KERNELS = ("decoder.np.u3.conva.weight", "decoder.np.u2.conva.weight", "decoder.np.u1.conva.weight",
                "decoder.np.u3.dense.units.0.conv2.weight")
TP_HEAD = "decoder.tp.u0.conv.weight"


class ConversionError(ValueError):
    """The state dict does not match the published table (missing/extra names) or is ambiguous."""


def read_name_table(path: str | os.PathLike = NAME_TABLE) -> dict[str, str]:
    """{PyTorch name: TensorFlow name without ':0'} from the published two-column CSV (Pytorch, Tensorflow)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    table = {row["Pytorch"]: row["Tensorflow"].removesuffix(":0") for row in rows}
    if len(table) != len(rows) or len(set(table.values())) != len(rows):
        raise ValueError(f"{path}: the name table is not one-to-one")
    return table


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: ndarray} of a released ``.tar``/``.pth`` (torch) or of an ``.npz`` state dict (numpy only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint {path}")
    if path.endswith(".npz"):
        from src.model.weights_file import read_npz

        return read_npz(path)[0]
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"reading {path} needs PyTorch (pip install -r requirements-convert.txt), or convert "
                          "the state dict to an .npz of name -> array first") from exc
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "desc" in state and isinstance(state["desc"], dict):
        state = state["desc"]
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in state.items()}


def clean_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip the ``module.`` (DataParallel) and ``desc.`` prefixes; drop the ignored buffers."""
    out = {}
    for name, value in state.items():
        for prefix in ("desc.", "module."):
            name = name.removeprefix(prefix)
        if name in IGNORED or name.endswith(IGNORED_SUFFIXES):
            continue
        if name in out:
            raise ConversionError(f"{name!r} appears twice once the prefixes are removed")
        out[name] = np.asarray(value)
    return out


def detect_mode(state: dict[str, np.ndarray]) -> str:
    """'original' or 'fast' from the decoder kernel sizes (PyTorch OIHW: the last axis is the width)."""
    sizes = {name: state[name].shape[-1] for name in MODE_KERNELS if name in state}
    if not sizes:
        raise ConversionError(f"cannot tell the mode: none of {list(MODE_KERNELS)} is in the state dict")
    modes = {mode for mode, layers in MODES.items() if set(sizes.values()) == {layers.decoder_ksize}}
    if len(modes) != 1:
        raise ConversionError(f"decoder kernel sizes {sizes} match no single mode of "
                              f"{ {m: layers.decoder_ksize for m, layers in MODES.items()} }")
    return modes.pop()


def detect_nr_types(state: dict[str, np.ndarray]) -> int | None:
    """Output channels of the tp head (background included), or None for a model without a tp branch."""
    return int(state[TP_HEAD].shape[0]) if TP_HEAD in state else None


def convert_state_dict(state: dict[str, np.ndarray], table: dict[str, str] | None = None
                       ) -> tuple[dict[str, np.ndarray], str, int | None]:
    """PyTorch state dict -> ({TensorFlow name: HWIO / 1-d float32 array}, mode, nr_types).

    Raises :class:`ConversionError` listing every missing and extra name.
    """
    table = read_name_table() if table is None else table
    state = clean_state_dict(state)
    nr_types = detect_nr_types(state)
    expected = {name for name in table if nr_types is not None or not name.startswith("decoder.tp.")}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        lines = ["the state dict does not match the published HoVer-Net name table:"]
        if missing:
            lines.append(f"  {len(missing)} missing: {', '.join(missing)}")
        if extra:
            lines.append(f"  {len(extra)} extra: {', '.join(extra)}")
        raise ConversionError("\n".join(lines))
    mode = detect_mode(state)
    weights = {}
    for name, value in state.items():
        value = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if value.ndim == 4 else value
        weights[table[name]] = value.astype(np.float32, copy=False)
    return weights, mode, nr_types


# (MODEL settings, nr_types) -> {variable name: shape} of the inference graph: a build costs seconds, and
# converting several checkpoints of one network in a process (the released ones, a test) needs it once.
_GRAPH_SHAPES: dict[tuple[str, int | None], dict[str, tuple[int, ...]]] = {}


def inference_variable_shapes(cfg, nr_types: int | None) -> dict[str, tuple[int, ...]]:
    """{variable name: shape} of the inference graph of ``cfg`` / ``nr_types``, built once per process."""
    key = (repr(sorted(cfg.MODEL.items())), nr_types)
    if key not in _GRAPH_SHAPES:
        from src.model.weights import graph_variable_shapes, inference_graph

        with inference_graph(cfg, nr_types).as_default():
            _GRAPH_SHAPES[key] = graph_variable_shapes()
    return dict(_GRAPH_SHAPES[key])


def check_against_graph(weights: dict[str, np.ndarray], cfg, nr_types: int | None) -> None:
    """Match ``weights`` strictly against the inference graph of ``cfg`` / ``nr_types`` (the strict loader's
    test: every variable present, nothing extra, every shape equal).

    Raises :class:`src.model.weights.WeightsMismatchError` listing the missing, extra and mis-shaped names.
    """
    from src.model.weights import WeightsMismatchError, format_problems, match_weights

    match = match_weights(weights, inference_variable_shapes(cfg, nr_types), ignore=())
    if match.missing or match.unexpected or match.shape_mismatch:
        raise WeightsMismatchError(format_problems(match, "the converted checkpoint", limit=10_000))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.model.convert",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="released checkpoint: .tar/.pth (needs torch) or .npz of the state dict")
    parser.add_argument("output", help="the .npz to write (TensorFlow names, HWIO kernels, mode and nr_types)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip building the graph to match every variable and shape (faster)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="MODEL widths of a state dict that is not the published size, e.g. "
                             "MODEL.PRESET=small; recorded in the .npz (mode and nr_types are detected)")
    args = parser.parse_args(argv)
    from misc.logs import setup_logging

    setup_logging(False)

    from src.config import config_from_args
    from src.model.weights import WeightsMismatchError, model_metadata
    from src.model.weights_file import write_npz

    try:
        weights, mode, nr_types = convert_state_dict(load_state_dict(args.checkpoint))
        # the detected mode and type count win over --config: they are facts of the file
        cfg = config_from_args(list(args.config) + [f"MODEL.MODE={mode!r}", f"MODEL.NR_TYPES={nr_types!r}"])
        if args.check:
            check_against_graph(weights, cfg, nr_types)
    except (FileNotFoundError, ImportError, KeyError, ConversionError, WeightsMismatchError) as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    write_npz(args.output, weights, model_metadata(cfg, nr_types))
    types = f"{nr_types} type channels" if nr_types else "no type branch"
    print(f"{len(weights)} variables, mode {mode}, {types} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
