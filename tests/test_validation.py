"""metrics/validation.py: the scores of network maps on labelled tiles (train.py --valid_images, benchmarks.overfit),
on two touching discs with exact expectations."""
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from metrics.validation import (
    TILE_SCORE_KEYS,
    TileScorer,
    held_out_names,
    hv_scores,
    mean_tile_scores,
    split_holdout,
    tile_scores,
)
from misc.io import InputError
from src.config import make_config
from src.maps.postproc import PostprocParams
from src.maps.targets import gen_hv_map

SHAPE = (64, 84)
POSTPROC = PostprocParams.from_config(make_config())  # the published values


def _two_touching_discs():
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    inst_map = np.zeros(SHAPE, np.int32)
    inst_map[(yy - 32) ** 2 + (xx - 27) ** 2 <= 14**2] = 1
    inst_map[((yy - 32) ** 2 + (xx - 54) ** 2 <= 14**2) & (inst_map == 0)] = 2
    assert ndi.label(inst_map > 0)[1] == 1  # touching: one blob without the hv maps
    return inst_map


def _maps(np_prob, hv):
    return np.concatenate([np_prob[..., None], hv], axis=-1).astype(np.float32)


def test_hv_scores_of_the_target_itself_zero_and_a_swapped_channel_order():
    inst_map = _two_touching_discs()
    hv = gen_hv_map(inst_map)
    nuclei = inst_map > 0
    perfect = hv_scores(hv, hv, nuclei)
    assert perfect["hv_corr_x"] == pytest.approx(1.0) and perfect["hv_corr_y"] == pytest.approx(1.0)
    assert perfect["hv_mse"] == 0.0
    assert perfect["hv_mse_zero"] == pytest.approx(float(np.mean(hv**2)))
    zero = hv_scores(np.zeros_like(hv), hv, nuclei)
    assert np.isnan(zero["hv_corr_x"]) and zero["hv_mse"] == pytest.approx(zero["hv_mse_zero"])
    swapped = hv_scores(hv[..., ::-1], hv, nuclei)  # x and y exchanged: a channel-order fault shows
    assert abs(swapped["hv_corr_x"]) < 0.2 and abs(swapped["hv_corr_y"]) < 0.2
    with pytest.raises(ValueError, match="HxWx2"):
        hv_scores(hv[..., :1], hv, nuclei)


def test_tile_scores_split_touching_nuclei_only_with_informative_hv():
    inst_map = _two_touching_discs()
    np_prob = (inst_map > 0).astype(np.float32)
    scores, inst_pred = tile_scores(_maps(np_prob, gen_hv_map(inst_map)), inst_map, gen_hv_map(inst_map), POSTPROC)
    assert set(TILE_SCORE_KEYS) <= set(scores)
    assert scores["np_dice"] == 1.0 and scores["nuclei_true"] == 2 and scores["nuclei_pred"] == 2
    assert scores["pq"] > 0.9 and scores["aji"] > 0.9
    assert inst_pred.shape == SHAPE and inst_pred.dtype == np.int32
    # hv that carries nothing: one blob, one nucleus
    blob, _ = tile_scores(_maps(np_prob, np.zeros(SHAPE + (2,))), inst_map, gen_hv_map(inst_map), POSTPROC)
    assert blob["nuclei_pred"] <= 1 and blob["pq"] < 0.5 and blob["np_dice"] == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        tile_scores(_maps(np_prob, gen_hv_map(inst_map))[:10], inst_map, gen_hv_map(inst_map), POSTPROC)


def test_mean_skips_tiles_without_nuclei_and_nan_correlations():
    rows = [dict.fromkeys(TILE_SCORE_KEYS, 0.5) | {"nuclei_true": 3},
            dict.fromkeys(TILE_SCORE_KEYS, 1.0) | {"nuclei_true": 1, "hv_corr_x": float("nan")},
            dict.fromkeys(TILE_SCORE_KEYS, 0.0) | {"nuclei_true": 0}]
    mean = mean_tile_scores(rows)
    assert mean["pq"] == 0.75 and mean["hv_corr_x"] == 0.5
    assert np.isnan(mean_tile_scores(rows[2:])["pq"])


def test_tile_scorer_builds_targets_and_scores(tmp_path):
    inst_map = _two_touching_discs()
    image = np.zeros(SHAPE + (3,), np.uint8)
    scorer = TileScorer([("a", image, inst_map)], POSTPROC, min_instance_size=30, published_offset=False)
    tile = scorer.tiles[0]
    np.testing.assert_array_equal(tile.hv_target, gen_hv_map(inst_map))
    scores = scorer.score(tile, _maps((inst_map > 0).astype(np.float32), tile.hv_target))
    assert scores["hv_mse"] == 0.0
    with pytest.raises(InputError, match="no validation tiles"):
        TileScorer([], POSTPROC, 30, False)


def test_held_out_names_from_split_record(tmp_path):
    assert held_out_names(tmp_path) is None
    (tmp_path / "split.json").write_text(json.dumps({"holdout_sources": 1, "train": ["a_1"], "holdout": ["b_1"]}))
    assert held_out_names(tmp_path) == ["b_1"]
    (tmp_path / "split.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a split record"):
        held_out_names(tmp_path)
    # a bundle's training record holds the split of its run
    (tmp_path / "small.json").write_text(json.dumps({"split": {"train": ["a_1"], "holdout": ["b_1"]}, "history": []}))
    assert split_holdout(tmp_path / "small.json") == ["b_1"]
    with pytest.raises(InputError, match="no such file"):
        split_holdout(tmp_path / "none.json")
