"""benchmarks/overfit.py: the training path must teach the network HV maps that split touching nuclei.

A CI-sized overfit check (issue 20.1): the MICRO network (tests/shrunk_networks.py) with the recipe's zero-start HV
head trains through src.train.trainer.train (train.py's code) on the patches of one synthetic tile of touching
nuclei, augmentation off, then the tile goes through inference and post-processing. The bounds are ones a
correct path reaches with margin and a broken one cannot: HV correlation measures the maps against targets
built independently from the tile, and PQ needs the touching nuclei split. Measured once each (2-core CPU,
/work runs of this check with the training target broken on purpose): correct HV correlation 0.97 / 0.98, PQ
0.99, AJI 0.99; HV target channels swapped 0.21 / 0.22, PQ 0.84, AJI 0.88; HV target shifted by 8 px -0.23 /
-0.14, PQ 0.74, AJI 0.74.
"""
import json

import numpy as np
import pytest
from shrunk_networks import MICRO

from benchmarks.overfit import main as overfit_main
from benchmarks.overfit import run_overfit
from dataset.readers import Sample
from misc.io import save_label_mat
from src.config import config_from_args

pytestmark = pytest.mark.slow

RECIPE = ("MODEL.HEAD_ZERO_INIT=('hv',)", "TRAIN.SCHEDULE='scratch'", "MODEL.NR_TYPES=None")


def _touching_nuclei(size=256, seed=0) -> Sample:
    """Rows of touching discs (radius 9-12 px, neighbours overlapping by a few pixels) in two stains on a
    noisy pink background: the only way to split them is the HV maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    next_id = 1
    for cy in range(20, size - 12, 34):
        cx = int(rng.integers(14, 24))
        while cx < size - 14:
            radius = int(rng.integers(9, 13))
            disc = (yy - cy - rng.integers(-3, 4)) ** 2 + (xx - cx) ** 2 <= radius**2
            inst[disc & (inst == 0)] = next_id
            next_id += 1
            cx += 2 * radius - 3 + int(rng.integers(0, 12))
    image = np.empty((size, size, 3), np.float64)
    image[:] = (225, 190, 210)
    stain = np.array([(80, 40, 130), (110, 60, 150)])[inst % 2]
    image[inst > 0] = stain[inst > 0]
    image += rng.normal(0, 8, image.shape)
    return Sample("touching", np.clip(image, 0, 255).astype(np.uint8), inst, None)


def test_overfit_check_learns_hv_maps_that_split_touching_nuclei(tmp_path):
    cfg = config_from_args([*MICRO, *RECIPE])
    sample = _touching_nuclei()
    record = run_overfit(cfg, [sample], steps=120, batch_size=2, steps_per_epoch=40, work_dir=tmp_path)
    mean = record["mean_over_crops_with_nuclei"]
    assert record["patches"] == 4 and record["steps"] == 120
    assert mean["np_dice"] >= 0.95, mean
    assert mean["hv_corr_x"] >= 0.9 and mean["hv_corr_y"] >= 0.9, mean
    assert mean["hv_mse"] < 0.5 * mean["hv_mse_zero"], mean
    assert mean["pq"] >= 0.9 and mean["aji"] >= 0.9, mean
    losses = [e["loss_hv_mse"] for e in record["loss_per_epoch"]]
    assert losses[-1] < losses[0], losses


def test_overfit_cli_writes_json_and_picture_and_refuses_unknown_crops(tmp_path, capsys):
    data = tmp_path / "data"
    sample = _touching_nuclei(size=120, seed=1)
    (data / "Images").mkdir(parents=True)
    import cv2

    assert cv2.imwrite(str(data / "Images" / "t_000.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    save_label_mat(data / "Labels" / "t_000.mat", sample.inst_map, type_map=(sample.inst_map > 0).astype(np.int32))
    assert overfit_main(["--data", str(data), "--crops", "t_000,nope", "--config", *MICRO]) == 2
    assert "nope" in capsys.readouterr().err
    out = tmp_path / "o.json"
    code = overfit_main(["--data", str(data), "--crops", "t_000", "--steps", "2", "--batch_size", "1",
                         "--steps_per_epoch", "2", "--json", str(out), "--picture", str(tmp_path / "o.png"),
                         "--config", *MICRO])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["crops"] == ["t_000"] and record["steps"] == 2 and "t_000" in record["per_crop"]
    assert (tmp_path / "o.png").stat().st_size > 1000
