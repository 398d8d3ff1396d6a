"""Repository-root conftest: makes the packages importable from the root and prepares TensorFlow.

``import src`` sets TF_USE_LEGACY_KERAS before any test imports TensorFlow (see src/__init__.py).
Tests marked ``gpu`` are skipped unless TensorFlow sees a GPU.
"""
import pytest

import src  # noqa: F401


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a GPU visible to TensorFlow")
        for item in gpu_items:
            item.add_marker(skip)


# The shrunk network of the XLA export tests (tests/test_export.py, tests/test_xla_runner.py): the published
# geometry (270 -> 80) with tiny widths, exported once per session (compiling it is what takes the time).
XLA_TINY = ["MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)", "MODEL.BOTTLENECK_CHANNELS=32",
            "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_BOTTLENECK=8", "MODEL.DENSE_GROWTH=4"]


@pytest.fixture(scope="session")
def xla_artifacts(tmp_path_factory):
    """Folder holding the tiny network's forward (batch 2) and phase-2 training step (batch 2) artifacts."""
    from src.model.export import export_all

    folder = tmp_path_factory.mktemp("xla")
    export_all(folder, XLA_TINY, batch_sizes=(2,), phases=(2,), train_batch_sizes={2: 2})
    return folder
