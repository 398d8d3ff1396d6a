"""HoVer-Net network, training targets, post-processing and inference engine.

Importing this package is the one place that prepares the environment for TensorFlow: tensorpack's
layers are written against Keras 2, which TensorFlow >= 2.16 only provides through ``tf-keras`` when
``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is first imported. Every entry point, the
``dataset`` package (tensorpack imports TensorFlow) and the test suite import ``src`` first.
Nothing here imports TensorFlow itself, so the numpy-only modules stay light.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
