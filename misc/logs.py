"""Quiet console by default, everything with ``--verbose`` and in a log file (train.py, infer.py).

Building the network makes tensorpack log every layer's shapes (300 lines), one 22 kB line naming every
restored variable and a table of trainable variables, and TensorFlow's C++ side reports a failed
``cuInit`` on machines without a GPU. None of it helps a user; all of it buries the progress and the
results. By default the console keeps our own messages, tensorpack's other messages (epoch statistics,
saved checkpoints) and every warning; ``--verbose`` shows everything. Log files (tensorpack's
``log.log`` in a training phase folder, ``infer.log`` in an inference output folder) always get it all.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

__all__ = ["setup_logging", "attach_log_file", "CHATTY_TENSORPACK_MODULES"]

# tensorpack modules whose INFO messages describe the graph rather than the run.
CHATTY_TENSORPACK_MODULES = frozenset({"registry", "sessinit", "model_utils", "summary", "graph", "tower",
                                       "varmanip", "argtools", "collection", "input_source", "concurrency"})
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_memory: logging.handlers.MemoryHandler | None = None
_file: logging.FileHandler | None = None  # the one log file of this process; a new one replaces it


class _QuietFilter(logging.Filter):
    """Drops INFO (and lower) records of tensorpack's graph-describing modules, its "Building ... tower on device
    /gpu:0" lines (the device name is tensorpack's, whatever runs it), and its 11-line warning about custom GPU
    options of a session (our sessions set CPU thread counts only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.module == "sesscreate":
            return False
        if record.levelno >= logging.WARNING:
            return True
        return record.module not in CHATTY_TENSORPACK_MODULES and not str(record.msg).startswith("Building ")


def setup_logging(verbose: bool = False, buffer: bool = False) -> None:
    """Configure the console before TensorFlow loads (its C++ log level is read once, at import).

    With ``buffer`` everything is also kept in memory until :func:`attach_log_file` names the file (for a
    short run whose output folder is created only once its inputs are checked).
    """
    global _memory
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")  # 3: not even cuInit's error
    logging.basicConfig(level=logging.INFO, format=_FORMAT)
    from tensorpack.utils import logger as tp_logger  # noqa: F401  (creates tensorpack's console handler)

    tp = logging.getLogger("tensorpack")
    for handler in tp.handlers:
        if type(handler) is logging.StreamHandler:  # the console, not the log file
            for old in [f for f in handler.filters if isinstance(f, _QuietFilter)]:
                handler.removeFilter(old)  # a second call (tests) sets the filter anew
            if not verbose:
                handler.addFilter(_QuietFilter())
    logging.getLogger("tensorflow").setLevel(logging.INFO if verbose else logging.ERROR)
    if buffer and _memory is None:
        _memory = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
        _memory.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
        for name in ("", "tensorpack"):
            logging.getLogger(name).addHandler(_memory)


def attach_log_file(path: str | os.PathLike) -> None:
    """Write everything logged so far and from now on to ``path`` (appended)."""
    global _memory, _file
    handler = logging.FileHandler(Path(path), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
    for name in ("", "tensorpack"):
        if _file is not None:
            logging.getLogger(name).removeHandler(_file)
        logging.getLogger(name).addHandler(handler)
    if _file is not None:
        _file.close()
    _file = handler
    if _memory is not None:
        _memory.setTarget(handler)
        _memory.flush()
        for name in ("", "tensorpack"):
            logging.getLogger(name).removeHandler(_memory)
        _memory = None
