"""Child processes that die with their parent (Linux ``prctl(PR_SET_PDEATHSIG)`` through ctypes).

tensorpack asks for the optional ``python-prctl`` package to do this and, without it, only warns: a
SIGKILLed ``train.py`` then left its ZMQ augmentation workers running (hundreds of MB each, parent 1).
A ctypes call to libc needs no extra package. Elsewhere than Linux these helpers do nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading

__all__ = ["die_with_parent", "DieWithParent", "Terminated", "stop_on_sigterm", "interrupts_deferred", "exit_status",
           "stop_word"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits; True if set.

    ``parent_pid`` is the parent's pid as the parent saw it: if the parent died before this call (the
    process now has another parent) the death signal would never come, so the process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True


class DieWithParent:
    """Wraps a picklable callable so that in any process other than the one that built it (a forked or
    spawned worker) the first call sets :func:`die_with_parent`; calls in the builder are plain calls.

    For worker pools whose start-up cannot be hooked (tensorpack's ``MultiProcessMapDataZMQ`` workers
    run only the map function we give them).
    """

    def __init__(self, func):
        self.func = func
        self.parent_pid = os.getpid()
        self._armed_pid = self.parent_pid  # nothing to arm in the builder itself

    def __call__(self, *args, **kwargs):
        pid = os.getpid()
        if pid != self._armed_pid:
            die_with_parent(self.parent_pid)
            self._armed_pid = pid
        return self.func(*args, **kwargs)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, batch schedulers) taken down the Ctrl-C path: the same one-line message,
    temporary files removed, workers stopped; exit status 143 (128 + SIGTERM) instead of 130."""

    exit_status = 128 + signal.SIGTERM


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread, so that every CLI handles it like a
    Ctrl-C (by default Python dies at once: no message, ``.part`` files and worker semaphores left behind).
    Call once, at the start of a command line's ``main``; only the main thread may set handlers.

    A forked child (tensorpack's ZMQ dataflow workers, which the parent stops with SIGTERM) inherits the handler;
    there it would raise in the middle of the worker's loop and print "Process _Worker-1: Traceback ...
    Terminated". The parent owns the one line and the clean-up, so a child dies of the signal as by default.

    An exception raised inside a finaliser (a ``__del__``, a gc callback) is dropped by Python ("Exception ignored
    in ...") and the program goes on: the handler can run there (once in a few runs of a whole-slide start-up, in
    jax's gc callback), so such an interrupt is sent again (:func:`_resend_dropped_interrupts`)."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)  # the default action ends the process
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    if not getattr(sys.unraisablehook, "resends_interrupts", False):
        sys.unraisablehook = _resend_dropped_interrupts(sys.unraisablehook)


def _resend_dropped_interrupts(previous):
    """A :data:`sys.unraisablehook` that sends a dropped Ctrl-C or SIGTERM again, to be raised where it can stop the
    program, and passes anything else to ``previous``."""
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # from another thread, a moment later: sent from here, the handler would raise in this hook, dropped again
            sig = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
            again = threading.Timer(0.01, signal.raise_signal, (sig,))
            again.daemon = True
            again.start()
        else:
            previous(unraisable)

    hook.resends_interrupts = True
    return hook


@contextlib.contextmanager
def interrupts_deferred():
    """A Ctrl-C or SIGTERM received in the block takes effect at its end (as the handler in place then says): for
    a start-up that, cut in the middle, leaves something half-made that no ``finally`` can reach (a Dask cluster
    interrupted in its constructor: Dask's exit hook then failed on it with a traceback). Only the main thread
    receives signals; elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def stop_word(interrupt: KeyboardInterrupt) -> str:
    """'terminated' for :class:`Terminated` (SIGTERM), 'interrupted' for a Ctrl-C: the word of every CLI's one line."""
    return "terminated" if isinstance(interrupt, Terminated) else "interrupted"


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """143 for :class:`Terminated` (SIGTERM), 130 for a Ctrl-C (128 + SIGINT, as shells report them)."""
    return getattr(interrupt, "exit_status", 128 + signal.SIGINT)
