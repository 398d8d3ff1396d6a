"""Dataset readers, patch dataflow and augmentation.

``import src`` comes first because tensorpack imports TensorFlow, and ``src`` sets the Keras-2
switch that must precede that import.
"""
import src  # noqa: F401
