"""HoVer-Net: the config (``config``, ``geometry``), the numpy cores (``maps``: training targets, post-processing),
the network and its weights file (``model``), tile and slide inference (``infer``) and training (``train``); each
part imports only those before it (ARCHITECTURE.md).

Importing this package is the one place that prepares the environment for TensorFlow: tensorpack's
layers are written against Keras 2, which TensorFlow >= 2.16 only provides through ``tf-keras`` when
``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is first imported. Every entry point, the
``dataset`` package (tensorpack imports TensorFlow) and the test suite import ``src`` first.
Nothing here imports TensorFlow itself, so the numpy-only modules stay light.

``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow's own CPU kernels have no gradient for grouped convolutions
(the dense units' ``split=4`` conv fails with "filter_size does not have enough elements"); the oneDNN
kernels have one. TensorFlow turns oneDNN on by default only on some x86 CPUs (not on this project's AMD
CI machines), so it is requested here; a user's explicit setting is kept.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
