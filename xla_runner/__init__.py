"""Run the exported HoVer-Net graph (``python -m src.model.export``) with jax/XLA, without TensorFlow.

``python -m xla_runner infer|train|bench --artifacts DIR ...``: the same per-image outputs as ``infer.py``,
the published training schedule, and speed measurements, on any machine with jax (a GPU machine whose
image has no TensorFlow). Only numpy, jax and the project's numpy cores are imported; importing ``src``
loads no TensorFlow (it only sets an environment variable).
"""
