"""Scoring folders of CoNSeP-format ``.mat`` labels against the ground truth (paper Sec. IV, Tables II-III): the
library behind ``metrics/compute_stats.py`` and ``scripts/reproduce_tables.py``.

Every ``<name>.mat`` of the prediction folder is compared with ``<name>.mat`` of the truth folder (read with
:func:`misc.io.load_label_mat`): :func:`evaluate_instance` reads ``inst_map``, scores each image and averages over
images; :func:`evaluate_type` reads only ``inst_centroid`` Nx2 (x, y) and ``inst_type`` Nx1 (so point annotations
without ``inst_map`` work, as in the released evaluation), pairs centroids per image and pools the pairs of all
images before scoring, as the paper does. The metrics themselves are :mod:`metrics.stats`'s. Bad input raises
:class:`misc.io.InputError` naming the file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from metrics.stats import INSTANCE_KEYS, UNTYPED_TRUTH, concat_pairings, instance_metrics, pair_types, type_metrics
from misc.io import InputError, load_label_mat

__all__ = ["MatchedFiles", "match_files", "evaluate_instance", "evaluate_type"]

_PROGRESS_MIN_FILES = 10  # a progress bar only where the run takes long enough to wonder
_MAX_NAMES_SHOWN = 10


def _shown(names: list[str]) -> str:
    head = ", ".join(names[:_MAX_NAMES_SHOWN])
    return head + (f" ... ({len(names) - _MAX_NAMES_SHOWN} more)" if len(names) > _MAX_NAMES_SHOWN else "")


class MatchedFiles(NamedTuple):
    """What :func:`match_files` found: ``names`` with a ``.mat`` in both folders (sorted), and ``missing``, the
    truths without a prediction (sorted; empty unless ``allow_missing``)."""

    names: list[str]
    missing: list[str]


def match_files(true_dir: Path, pred_dir: Path, allow_missing: bool = False) -> MatchedFiles:
    """Pair the ``<name>.mat`` files of the two folders.

    Raises :class:`InputError` for a missing folder, a prediction folder without ``.mat`` files, predictions
    without a matching truth, and, unless ``allow_missing``, truths without a prediction (all such names
    listed): a mean over a subset of the images is not the set's score. With ``allow_missing`` those are
    skipped with a warning on stderr and returned in ``missing``.
    """
    for folder, flag in ((true_dir, "--true_dir"), (pred_dir, "--pred_dir")):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such directory ({flag})")
    pred_names = sorted(p.stem for p in pred_dir.glob("*.mat"))
    if not pred_names:
        raise InputError(f"{pred_dir}: no .mat files (--pred_dir)")
    true_names = {p.stem for p in true_dir.glob("*.mat")}
    orphans = [n for n in pred_names if n not in true_names]
    if orphans:
        raise InputError(f"{pred_dir}: {len(orphans)} prediction(s) without a matching truth in {true_dir}: "
                         f"{_shown(orphans)}")
    missing = sorted(true_names.difference(pred_names))
    if missing and not allow_missing:
        raise InputError(f"{pred_dir}: no prediction for {len(missing)} of the {len(true_names)} truth file(s) in "
                         f"{true_dir}: {_shown(missing)} (--allow_missing scores the others and lists these)")
    if missing:
        print(f"warning: {len(missing)} truth file(s) without a prediction are not scored: {_shown(missing)}",
              file=sys.stderr)
    return MatchedFiles(pred_names, missing)


def _load_pair(true_dir: Path, pred_dir: Path, name: str, with_types: bool) -> tuple[dict, dict]:
    true_path, pred_path = true_dir / f"{name}.mat", pred_dir / f"{name}.mat"
    # type mode needs points only: inst_map is read (and shapes compared) only where both files have one
    true = load_label_mat(true_path, with_types=with_types, need_inst_map=not with_types)
    pred = load_label_mat(pred_path, with_types=with_types, need_inst_map=not with_types)
    if "inst_map" not in true or "inst_map" not in pred:
        return true, pred
    t_shape, p_shape = true["inst_map"].shape, pred["inst_map"].shape
    if t_shape != p_shape:
        raise InputError(f"{pred_path}: inst_map shape {p_shape} differs from the truth {true_path} {t_shape}")
    return true, pred


def _progress(names: list[str], desc: str):
    if len(names) <= _PROGRESS_MIN_FILES:
        return names
    from tqdm import tqdm  # only needed for long runs

    return tqdm(names, desc=desc, file=sys.stderr, unit="img")


def evaluate_instance(true_dir: Path, pred_dir: Path, names: list[str], match_iou: float = 0.5) -> dict:
    """Per-image instance metrics and their mean over images (the ``instance`` JSON, see ``--help``)."""
    per_image = {}
    for name in _progress(names, "instance"):
        true, pred = _load_pair(true_dir, pred_dir, name, with_types=False)
        scores = instance_metrics(true["inst_map"], pred["inst_map"], match_iou=match_iou)
        per_image[name] = {k: float(scores[k]) for k in INSTANCE_KEYS}
    mean = {k: sum(s[k] for s in per_image.values()) / len(per_image) for k in INSTANCE_KEYS}
    return {"per_image": per_image, "mean": mean}


def evaluate_type(true_dir: Path, pred_dir: Path, names: list[str], radius: float,
                  type_ids: list[int] | None = None, true_type_merge: dict[int, int] | None = None,
                  exhaustive: bool = True, strict_types: bool = False) -> dict:
    """Detection/classification scores pooled over images (the ``type`` JSON, see ``--help``).

    Centroids are paired per image within ``radius`` pixels, then all pairs are pooled. ``type_ids``
    defaults to the types present in the truth. Keys of ``f1_type`` are type ids as strings.
    ``true_type_merge`` maps the truth's type ids first (CoNSeP's original 7 types -> the paper's 4,
    spec section 4); a truth type it does not cover is an error (untyped -1/0 pass through when not
    ``exhaustive``). ``exhaustive=False``: see :func:`metrics.stats.type_metrics`. ``strict_types``: a
    predicted type id outside ``type_ids`` is an error; otherwise it counts as "not t" for every scored t.
    """
    pairings = []
    for name in _progress(names, "type"):
        true, pred = _load_pair(true_dir, pred_dir, name, with_types=True)
        if strict_types and type_ids is not None:
            outside = sorted(set(pred["inst_type"].tolist()) - set(type_ids))
            if outside:
                raise InputError(f"{pred_dir / (name + '.mat')}: predicted type id(s) {outside} are not in "
                                 f"--types {','.join(map(str, type_ids))} (--strict_types)")
        if true_type_merge is not None:
            if not exhaustive:  # untyped truths stay untyped
                true_type_merge = {**{t: t for t in UNTYPED_TRUTH}, **true_type_merge}
            unknown = sorted(set(true["inst_type"].tolist()) - set(true_type_merge))
            if unknown:
                raise InputError(f"{true_dir / (name + '.mat')}: type id(s) {unknown} are not covered by the "
                                 f"merge {true_type_merge}")
            true["inst_type"] = np.array([true_type_merge[t] for t in true["inst_type"].tolist()], np.int32)
        pairings.append(pair_types(true["inst_centroid"], true["inst_type"],
                                   pred["inst_centroid"], pred["inst_type"], radius))
    pooled = concat_pairings(pairings)
    scores = type_metrics(pooled, type_ids, exhaustive=exhaustive)
    seen = set(pooled.paired_true.tolist() + pooled.paired_pred.tolist() + pooled.unpaired_true.tolist()
               + pooled.unpaired_pred.tolist())
    absent = [t for t in scores["f1_type"] if t not in seen]
    if absent:
        print(f"warning: type(s) {absent} occur in neither truth nor prediction; their F1 is reported as 1.0",
              file=sys.stderr)
    if np.isnan(scores["acc"]):
        print(f"warning: no predicted nucleus lies within {radius:g} px of a true one (no matched pairs); the type "
              "accuracy is undefined (NaN in the JSON, n/a in the table)", file=sys.stderr)
    return {"f1_d": float(scores["f1_d"]), "acc": float(scores["acc"]),
            "f1_type": {str(t): float(v) for t, v in scores["f1_type"].items()}}
