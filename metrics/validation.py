"""Scores of network maps on labelled tiles the way a user sees them: post-processed instances (DICE, AJI, PQ) and
the HV maps themselves (correlation with the target on nuclear pixels, MSE beside the all-zero prediction).

Used by ``train.py``'s per-epoch validation on held-out tiles (:class:`TileScorer`, driven by
``src.train.trainer.TileValidation``) and by ``python -m benchmarks.overfit``. Pure numpy: the maps come from any
forward pass, stitched by ``src.infer.windows.predict_tile`` in the channel order of ``src.infer.tiles.split_channels``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metrics.stats import dice1, instance_metrics
from misc.io import InputError
from src.infer.tiles import split_channels
from src.maps.postproc import PostprocParams, instances_from_np_hv
from src.maps.targets import gen_targets

__all__ = ["TILE_SCORE_KEYS", "hv_scores", "tile_scores", "mean_tile_scores", "LabelledTile", "TileScorer",
           "held_out_names", "split_holdout"]

# Every score of tile_scores, in report order; train.py's validation records each as 'tiles_<key>'.
TILE_SCORE_KEYS = ("np_dice", "hv_corr_x", "hv_corr_y", "hv_mse", "hv_mse_zero", "dice", "aji", "pq")


def hv_scores(hv_pred: np.ndarray, hv_true: np.ndarray, nuclei: np.ndarray) -> dict[str, float]:
    """Pearson correlation per channel on the nuclear pixels, MSE over all pixels, and the MSE of predicting 0.

    ``hv_pred`` / ``hv_true``: HxWx2 float (channel 0 x, 1 y); ``nuclei``: HxW bool (true nuclear pixels). A
    correlation is NaN when there are fewer than two nuclear pixels or either side is constant on them.
    """
    hv_pred = np.asarray(hv_pred, np.float64)
    hv_true = np.asarray(hv_true, np.float64)
    if hv_pred.shape != hv_true.shape or hv_pred.shape[:2] != nuclei.shape or hv_pred.shape[2:] != (2,):
        raise ValueError(f"expected HxWx2 hv maps and an HxW mask, got {hv_pred.shape}, {hv_true.shape}, "
                         f"{nuclei.shape}")
    out = {}
    for channel, axis in enumerate("xy"):
        pred, true = hv_pred[..., channel][nuclei], hv_true[..., channel][nuclei]
        ok = pred.size > 1 and pred.std() > 0 and true.std() > 0
        out[f"hv_corr_{axis}"] = float(np.corrcoef(pred, true)[0, 1]) if ok else float("nan")
    out["hv_mse"] = float(np.mean((hv_pred - hv_true) ** 2))
    out["hv_mse_zero"] = float(np.mean(hv_true ** 2))
    return out


def tile_scores(maps: np.ndarray, inst_true: np.ndarray, hv_true: np.ndarray,
                postproc: PostprocParams) -> tuple[dict, np.ndarray]:
    """Every score of :data:`TILE_SCORE_KEYS` for one tile, plus ``nuclei_true`` / ``nuclei_pred``.

    Args:
        maps: HxWxC float32 stitched network maps (NP probability, hv x, hv y, then type probabilities).
        inst_true: HxW int instance map (0 background).
        hv_true: HxWx2 float HV target of ``inst_true`` (``src.maps.targets.gen_targets``).
        postproc: the post-processing settings.

    Returns:
        ``(scores, inst_pred)``: ``np_dice`` is the Dice of ``np_prob >= np_threshold`` against the true nuclear
        pixels (1.0 when both are empty); ``dice``, ``aji``, ``pq``... are :func:`metrics.stats.instance_metrics`
        of the post-processed instances ``inst_pred`` (HxW int32).
    """
    np_prob, hv, _ = split_channels(maps)
    inst_true = np.asarray(inst_true)
    if np_prob.shape != inst_true.shape:
        raise ValueError(f"maps {maps.shape[:2]} and truth {inst_true.shape} differ in size")
    scores = {"np_dice": dice1(inst_true, (np_prob >= postproc.np_threshold).astype(np.uint8))}
    scores.update(hv_scores(hv, hv_true, inst_true > 0))
    inst_pred = instances_from_np_hv(np_prob, hv, postproc)
    scores.update(instance_metrics(inst_true, inst_pred))
    scores["nuclei_true"] = int(np.count_nonzero(np.unique(inst_true)))
    scores["nuclei_pred"] = int(inst_pred.max(initial=0))
    return scores, inst_pred


def mean_tile_scores(per_tile: Sequence[Mapping]) -> dict[str, float]:
    """Mean of each :data:`TILE_SCORE_KEYS` score over the tiles with nuclei (NaN correlations skipped); NaN for a
    score no such tile has."""
    rows = [s for s in per_tile if s["nuclei_true"] > 0]
    out = {}
    for key in TILE_SCORE_KEYS:
        values = np.array([r[key] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else float("nan")
    return out


@dataclass(frozen=True)
class LabelledTile:
    """One validation tile: ``image`` HxWx3 uint8 RGB, ``inst_map`` HxW int32 and its ``hv_target`` HxWx2 float32."""

    name: str
    image: np.ndarray
    inst_map: np.ndarray
    hv_target: np.ndarray


class TileScorer:
    """The held-out tiles and how their maps are scored: what ``src.train.trainer.TileValidation`` needs from the
    numpy side (``tiles``, ``score(tile, maps)``, ``mean(rows)``), built by the caller so that ``src`` never
    imports ``metrics``.

    Args:
        tiles: ``(name, image HxWx3 uint8, inst_map HxW int)`` triples.
        postproc: the run's post-processing settings.
        min_instance_size, published_offset: the config's ``TARGETS`` settings, for the HV targets.
    """

    def __init__(self, tiles, postproc: PostprocParams, min_instance_size: int, published_offset: bool):
        self.postproc = postproc
        self.tiles = []
        for name, image, inst_map in tiles:
            inst_map = np.asarray(inst_map, np.int32)
            hv = gen_targets(inst_map, None, inst_map.shape, min_instance_size=min_instance_size,
                             published_offset=published_offset)["hv"]
            self.tiles.append(LabelledTile(name, image, inst_map, hv))
        if not self.tiles:
            raise InputError("no validation tiles")

    @classmethod
    def from_config(cls, cfg, tiles) -> TileScorer:
        return cls(tiles, PostprocParams.from_config(cfg), cfg.TARGETS.MIN_INSTANCE_SIZE,
                   cfg.TARGETS.HV_PUBLISHED_OFFSET)

    def score(self, tile: LabelledTile, maps: np.ndarray) -> dict:
        return tile_scores(maps, tile.inst_map, tile.hv_target, self.postproc)[0]

    @staticmethod
    def mean(rows: Sequence[Mapping]) -> dict[str, float]:
        return mean_tile_scores(rows)


def held_out_names(valid_dir: str | Path) -> list[str] | None:
    """The held-out image names recorded in ``<valid_dir>/split.json`` by ``extract_patches.py --holdout``, or None
    when there is no such record."""
    record = Path(valid_dir) / "split.json"
    return split_holdout(record) if record.is_file() else None


def split_holdout(record: str | Path) -> list[str]:
    """The held-out image names of a split record: the ``split.json`` of ``extract_patches.py --holdout``, or a
    bundle's training record (``models/<name>.json``), which holds that split under ``split``. :class:`InputError`
    for a missing file or a record without a ``holdout`` list."""
    record = Path(record)
    if not record.is_file():
        raise InputError(f"{record}: no such file")
    try:
        content = json.loads(record.read_text())
        if isinstance(content.get("split"), dict):
            content = content["split"]
        names = list(content["holdout"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{record}: not a split record of extract_patches.py ({exc!r})") from None
    return names
