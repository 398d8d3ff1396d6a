"""Shared set-up of the XLA tests (tests/test_export.py, tests/test_xla_runner.py): one export per test run.

The shrunk network keeps every layer type of the published graph (encoder units with shortcuts, the
three decoder branches with dense units, BatchNorm, the type branch) with tiny widths and one unit per
stage, so tracing, lowering and XLA compilation take seconds. Its geometry is derived as usual
(``src/geometry.py``): 270 -> 216 with one dense unit per decoder stage.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from shrunk_networks import TINY

# TINY with one dense unit per stage (tests/shrunk_networks.py), its dense convolutions grouped as published
XLA_TINY = [*TINY, "MODEL.DENSE_UNITS=(1,1)"]
BATCH = 2  # the exported forward and phase-2 training step take batches of 2

ROOT = Path(__file__).resolve().parents[1]
CROP = ROOT / ".." / "shared" / "data" / "consep256" / "test" / "Images" / "test_1_000.jpg"


def exported(tmp_path_factory) -> Path:
    """The export folder of the tiny network (forward and phase-2 step, batch 2), made once per test run.

    Exported by ``python -m src.model.export`` in a process of its own, as a user does: the export needs
    TensorFlow's eager mode, which any tensorpack training earlier in a test process has switched off. Then
    every artifact is compiled here, into this process's executables and ``$XLA_RUNNER_CACHE``
    (``xla_runner.artifacts._compile``), which the processes the tests start read, so each compiles once per run.
    Under pytest-xdist the workers share both folders: the first one makes them while the others wait on a lock.
    """
    from xla_runner.artifacts import CACHE_ENV, MANIFEST_NAME, Artifacts

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / "xla-export"
    os.environ[CACHE_ENV] = str(root / "xla-cache")
    with open(root / "xla-export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / MANIFEST_NAME).is_file():
            export = [sys.executable, "-m", "src.model.export", "--out_dir", str(folder), "--batch_sizes", str(BATCH),
                      "--phases", "2", "--train_batch_size", str(BATCH), "--config", *XLA_TINY]
            done = subprocess.run(export, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"exporting the tests' network failed ({done.returncode}):\n{done.stderr[-4000:]}")
        artifacts = Artifacts(folder)
        for entry in artifacts.entries.values():
            artifacts.executable(entry)
    return folder


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
