"""The shrunk networks the tests build instead of the published one, defined once as config overrides.

A graph build costs about a millisecond of Python per TensorFlow operation on this CPU, whatever the widths,
and each BatchNorm layer is about 40 operations: the suite's time is mostly the number of layers it builds.

``TINY``
    The published layer list and geometry (270 -> 80, dense units (8, 4), the same crops and shapes) with
    every width shrunk: group outputs (16, 16, 32, 64); the decoder sums need conv_bot = group2 output,
    2*u3 = group1 output, 2*u2 = group0 output. conv0 has 8 channels: at 64, its 7x7 on the 264x264 input
    was most of a training step's arithmetic. The base of the two below.
``MICRO``
    ``TINY`` with one dense unit per decoder stage and an ungrouped dense convolution: 270 -> 216 (src/geometry.py
    derives it), under half of ``TINY``'s operations. For every test that is not about the published sizes
    (those use the session's full-size graph, conftest.py, or the converter's full-depth graphs). The ungrouped
    convolution also keeps multi-tower training on the CPU: TensorFlow's CPU kernel lacks the weight gradient
    of grouped convolutions under the replicated trainer.
(The XLA tests' network, tests/xla_fixtures.py, is ``TINY`` with one dense unit per stage, grouped as published.)
"""
from __future__ import annotations

TINY = ("MODEL.CONV0_CHANNELS=8", "MODEL.ENCODER_UNITS=(1,1,1,1)", "MODEL.ENCODER_CHANNELS=(4,4,8,16)",
        "MODEL.BOTTLENECK_CHANNELS=32", "MODEL.DECODER_CHANNELS=(8,8,8)", "MODEL.DENSE_BOTTLENECK=8",
        "MODEL.DENSE_GROWTH=4")
MICRO = (*TINY, "MODEL.DENSE_UNITS=(1,1)", "MODEL.DENSE_SPLIT=1")
