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
