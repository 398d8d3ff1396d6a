"""Shared set-up of the XLA tests (tests/test_export.py, tests/test_xla_runner.py): one export per session.

The shrunk network keeps every layer type of the published graph (encoder units with shortcuts, the
three decoder branches with dense units, BatchNorm, the type branch) with tiny widths and one unit per
stage, so tracing, lowering and XLA compilation take seconds. Its geometry is derived as usual
(``src/geometry.py``): 270 -> 216 with one dense unit per decoder stage.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

XLA_TINY = ["MODEL.CONV0_CHANNELS=8", "MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)",
            "MODEL.BOTTLENECK_CHANNELS=32", "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_UNITS=(1,1)",
            "MODEL.DENSE_BOTTLENECK=8", "MODEL.DENSE_GROWTH=4"]
BATCH = 2  # the exported forward and phase-2 training step take batches of 2

ROOT = Path(__file__).resolve().parents[1]
CROP = ROOT / ".." / "shared" / "data" / "consep256" / "test" / "Images" / "test_1_000.jpg"

_SESSION: dict[str, Path] = {}


def exported(tmp_path_factory) -> Path:
    """The export folder of the tiny network (forward and phase-2 step, batch 2), made once per process.

    Also points ``$XLA_RUNNER_CACHE`` at a session folder, so every process the tests start reuses the
    executables compiled once (``xla_runner.artifacts._compile``).
    """
    if "folder" not in _SESSION:
        from src.model.export import export_all
        from xla_runner.artifacts import CACHE_ENV

        os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("xla-cache"))
        folder = tmp_path_factory.mktemp("xla")
        export_all(folder, XLA_TINY, batch_sizes=(BATCH,), phases=(2,), train_batch_sizes={2: BATCH})
        _SESSION["folder"] = folder
    return _SESSION["folder"]


def disc_patch(rng: np.random.Generator, size: int, margin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB uint8, instance ids, type ids 1..4) of ~40 dark discs on a light background, ``margin`` px free."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.int32)
    types = np.zeros_like(inst)
    for i in range(1, 40):
        cy, cx = rng.integers(margin, size - margin, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(5, 10) ** 2) & (inst == 0)
        inst[disc], types[disc] = i, rng.integers(1, 5)
    image = rng.integers(150, 240, (size, size, 3)).astype(np.uint8)
    image[inst > 0] = (90, 40, 140)
    return image, inst, types
