"""Quiet console by default, everything with ``--verbose`` and in a log file (train.py, infer.py).

Building the network makes tensorpack log every layer's shapes (300 lines), one 22 kB line naming every
restored variable and a table of trainable variables, and TensorFlow's C++ side reports a failed
``cuInit`` on machines without a GPU. None of it helps a user; all of it buries the progress and the
results. By default the console keeps our own messages, tensorpack's other messages (epoch statistics,
saved checkpoints) and every warning; ``--verbose`` shows everything. Log files (tensorpack's
``log.log`` in a training phase folder, ``infer.log`` in an inference output folder) always get it all.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["setup_logging", "setup_console", "attach_log_file", "to_log_file_only", "CHATTY_TENSORPACK_MODULES",
           "FILE_ONLY"]

# tensorpack modules whose INFO messages describe the graph rather than the run.
CHATTY_TENSORPACK_MODULES = frozenset({"registry", "sessinit", "model_utils", "summary", "graph", "tower",
                                       "varmanip", "argtools", "collection", "input_source", "concurrency"})
_FORMAT = "%(levelname)s %(name)s: %(message)s"
_memory: logging.handlers.MemoryHandler | None = None
_file: logging.FileHandler | None = None  # the one log file of this process; a new one replaces it
# ``extra=FILE_ONLY``: a record for the log file, not the console, where it would say again what the caller prints
# once (infer.py's "skipped PATH: reason" of a slide that src/infer/slides.py logs with its time and detail).
FILE_ONLY = {"file_only": True}
# TensorFlow's native start-up lines, printed on file descriptor 2 while it is imported whatever TF_CPP_MIN_LOG_LEVEL
# says (TensorFlow 2.21): absl's "WARNING: All log messages before absl::InitializeLog() is called ...", then INFO
# lines ("I0000 ... port.cc ... oneDNN custom operations are on", "cudart_stub.cc ... Could not find cuda drivers",
# the CPU-feature note and its continuation), each set twice. Warnings and errors (W..., E...) stay on the console.
_NATIVE_START_UP = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} |"
                              r"To enable the following instructions: )")
log = logging.getLogger(__name__)
# The loggers that the log file (or the buffer before it) is attached to: the root, and those with a console handler
# of their own that pass nothing on to it (tensorpack; Dask's after to_log_file_only).
_file_loggers = ["", "tensorpack"]


class _FileOnlyFilter(logging.Filter):
    """Keeps the records logged with ``extra=FILE_ONLY`` off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


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
    setup_console(verbose)
    with contextlib.ExitStack() as stack:
        native = None if verbose or "tensorflow" in sys.modules else stack.enter_context(_native_lines())
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
        for name in _file_loggers:
            logging.getLogger(name).addHandler(_memory)
    for line in native or ():
        if _NATIVE_START_UP.match(line):
            log.info("%s", line, extra=FILE_ONLY)
        else:
            print(line, file=sys.stderr)


@contextlib.contextmanager
def _native_lines():
    """Yields a list that receives, when the block ends, the lines written to file descriptor 2 (native code's
    stderr: TensorFlow's C++ logging) inside the block, which the console does not see meanwhile."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode("utf-8", "replace").splitlines())


def setup_console(verbose: bool = False) -> None:
    """The part of :func:`setup_logging` that loads neither tensorpack nor TensorFlow (seconds), for a process that
    may never need them (a Dask worker before its first tile): our console, and TensorFlow's C++ level for later."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")  # 3: not even cuInit's error
    logging.basicConfig(level=logging.INFO, format=_FORMAT)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not any(isinstance(f, _FileOnlyFilter) for f in handler.filters):
            handler.addFilter(_FileOnlyFilter())  # the console (a FileHandler is a StreamHandler's subclass)


def to_log_file_only(name: str) -> None:
    """Send the records of logger ``name`` and its children to the log file only: for a library whose logger has a
    console handler of its own and passes nothing on to the root logger (Dask's, in a worker process). Call it after
    :func:`attach_log_file`: a record without any handler would reach the console through Python's last resort."""
    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
        logger.removeHandler(handler)
    logger.propagate = False
    if name not in _file_loggers:
        _file_loggers.append(name)
        for handler in (_memory, _file):
            if handler is not None:
                logger.addHandler(handler)


def attach_log_file(path: str | os.PathLike) -> None:
    """Write everything logged so far and from now on to ``path`` (appended)."""
    global _memory, _file
    handler = logging.FileHandler(Path(path), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s " + _FORMAT))
    for name in _file_loggers:
        if _file is not None:
            logging.getLogger(name).removeHandler(_file)
        logging.getLogger(name).addHandler(handler)
    if _file is not None:
        _file.close()
    _file = handler
    if _memory is not None:
        _memory.setTarget(handler)
        _memory.flush()
        for name in _file_loggers:
            logging.getLogger(name).removeHandler(_memory)
        _memory = None
