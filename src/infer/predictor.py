"""The TensorFlow side of inference: a HoVer-Net forward pass as a plain batch -> maps callable.

:class:`HoVerNetPredictor` builds the inference graph, loads a checkpoint or ``.npz`` *strictly* (every
network variable must be in the file with the right shape, or :class:`WeightsMismatchError` lists the
missing, unexpected and wrongly-shaped ones: a partly random network must never run silently) and
returns, for a batch of N x 270 x 270 x 3 RGB windows, N x 80 x 80 x C float32 maps in the channel
order :func:`src.infer.tiles.split_channels` expects: nuclear probability, hv x, hv y, then the type
probabilities when the model has a type branch. The tensors it feeds and fetches are the ones
:mod:`src.model.graph` declares, checked by :func:`src.model.graph.check_inference_tensors` right after the
graph is built, so a graph that does not provide them fails with one message naming them.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
from tensorpack.predict import OfflinePredictor, PredictConfig
from tensorpack.tfutils import sesscreate

from misc.io import InputError
from src.model.graph import INFERENCE_INPUTS, HoVerNet, check_inference_tensors, inference_output_names
from src.model.weights import NonFiniteWeightsError, WeightsMismatchError, make_session_init, stored_nr_types
from src.model.weights_file import ModelWeights

log = logging.getLogger(__name__)

__all__ = ["HoVerNetPredictor", "session_config", "stack_outputs"]


def session_config():
    """tensorpack's session config with TensorFlow's own thread count for each operation: every core, or
    ``$TF_NUM_INTRAOP_THREADS``. tensorpack's default of one thread per operation suits GPU training (the
    operations run on the GPU) but ran a CPU forward pass on one core (the small model's 8 windows: 1.00 s on
    one core, 0.72 s on two)."""
    config = sesscreate.get_default_sess_config()
    config.intra_op_parallelism_threads = 0
    return config


class HoVerNetPredictor:
    """Callable ``batch (N x in x in x 3, RGB 0..255) -> N x out x out x C float32`` for one weights file.

    Args:
        weights: an opened :class:`src.model.weights_file.ModelWeights` (``open_model``: its arrays are not read
            again), or the path of a ``train.py`` checkpoint (prefix, ``.index`` file or run directory) or ``.npz``.
        cfg: finalised config (geometry, data format); default: the ``ModelWeights``' own. The number of types
            is read from the file.

    Raises :class:`misc.io.InputError` when the file is missing or unreadable and when its variables do
    not fit the network (the message lists them); ``KeyError`` from
    :func:`src.model.graph.check_inference_tensors` when the built graph lacks a tensor the predictor feeds or
    fetches (a code mismatch, not a bad file).
    """

    def __init__(self, weights: ModelWeights | str | os.PathLike, cfg=None):
        if cfg is None:
            if not isinstance(weights, ModelWeights):
                raise TypeError("a weights path needs its cfg; open_model() gives both")
            cfg = weights.cfg
        model_path = weights.path if isinstance(weights, ModelWeights) else os.fspath(weights)
        self.nr_types = stored_nr_types(weights)
        self.input_shape = cfg.MODEL.INPUT_SHAPE
        self.output_names = inference_output_names(self.nr_types)
        model = HoVerNet(nr_types=self.nr_types, freeze=False, cfg=cfg)
        nr_types = self.nr_types

        def build_and_check(*inputs):
            # the tower tensorpack builds, then the name contract, before tensorpack looks the names up
            model.build_graph(*inputs)
            check_inference_tensors(tf.compat.v1.get_default_graph(), nr_types)

        predict_config = PredictConfig(
            tower_func=build_and_check, input_signature=model.get_input_signature(),
            input_names=list(INFERENCE_INPUTS), output_names=self.output_names,
            session_init=make_session_init(weights, strict=True),
            session_creator=sesscreate.NewSessionCreator(config=session_config()))
        try:
            self._predict = OfflinePredictor(predict_config)
        except (WeightsMismatchError, NonFiniteWeightsError) as exc:
            raise InputError(f"--model {model_path}: {exc}") from exc
        log.info("loaded %s (%s)", model_path,
                 f"{self.nr_types} type channels" if self.nr_types else "no type branch")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (self.input_shape, self.input_shape, 3):
            raise ValueError(f"expected N x {self.input_shape} x {self.input_shape} x 3 windows, got {batch.shape}")
        return stack_outputs(dict(zip(self.output_names, self._predict(batch), strict=True)))


def stack_outputs(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The graph's named outputs (``np_prob``, ``hv``, optional ``tp_prob``; N x out x out x C each) as one
    N x out x out x C float32 array in :func:`src.infer.tiles.split_channels` order: nuclear probability, hv x,
    hv y, then the type probabilities."""
    maps = [outputs["np_prob"][..., 1:2], outputs["hv"]]
    if "tp_prob" in outputs:
        maps.append(outputs["tp_prob"])
    return np.concatenate(maps, axis=-1).astype(np.float32, copy=False)
