"""misc/proc.py: a worker started by a process that is then SIGKILLed must not outlive it (issue 13.3)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")

# A parent that forks a worker running a DieWithParent-wrapped function, prints the worker's pid, then waits.
_PARENT = textwrap.dedent("""
    import multiprocessing, sys, time
    from misc.proc import DieWithParent

    def work(_):
        time.sleep(60)

    if __name__ == "__main__":
        func = DieWithParent(work)
        worker = multiprocessing.get_context("fork").Process(target=func, args=(0,), daemon=False)
        worker.start()
        print(worker.pid, flush=True)
        time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("wrapped", [True, False])
def test_worker_dies_with_its_killed_parent(tmp_path, wrapped):
    script = _PARENT if wrapped else _PARENT.replace("DieWithParent(work)", "work")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)  # the worker has called the function (and armed its death signal)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # the wrapped worker dies within milliseconds (5 s allowed); the orphan is watched for 1 s
    deadline = time.time() + (5 if wrapped else 1)
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert _alive(worker) is not wrapped  # without the wrapper the orphan lives on: the bug
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_calls_in_the_building_process_are_plain():
    from misc.proc import DieWithParent

    assert DieWithParent(lambda x: x + 1)(1) == 2
