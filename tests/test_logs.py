"""misc/logs.py: quiet console by default, everything in the log file (issue 13.16)."""
import logging

from misc import logs


def _record(module: str, level=logging.INFO, msg="msg") -> logging.LogRecord:
    return logging.LogRecord("tensorpack", level, f"/site-packages/tensorpack/x/{module}.py", 1, msg, None, None)


def test_graph_chatter_is_dropped_from_the_console_but_kept_in_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    logs.setup_logging(verbose=False, buffer=True)
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # no cuInit error on CPU machines
    console = [h for h in logging.getLogger("tensorpack").handlers if type(h) is logging.StreamHandler]
    assert console and all(not h.filter(_record("registry")) for h in console)  # layer shapes
    assert all(not h.filter(_record("sessinit")) for h in console)  # the 22 kB variable list
    assert all(h.filter(_record("monitor")) for h in console)  # epoch statistics stay
    assert all(h.filter(_record("registry", logging.WARNING)) for h in console)  # warnings always
    # issue 22.11: but not the 11-line GPU-options warning of every session, nor "Building tower ... /gpu:0"
    assert all(not h.filter(_record("sesscreate", logging.WARNING)) for h in console)
    assert all(not h.filter(_record("training", msg="Building graph for training tower 0 on device /gpu:0 ..."))
               for h in console)
    logging.getLogger("tensorpack").info("layer conv0 input: [None, 270, 270, 3]")
    logs.attach_log_file(tmp_path / "run.log")
    logging.getLogger("tensorpack").info("after attaching")
    text = (tmp_path / "run.log").read_text()
    assert "layer conv0 input" in text and "after attaching" in text
    logs.setup_logging(verbose=True)  # --verbose: the console shows everything again
    assert all(h.filter(_record("registry")) for h in console)


def test_native_lines_are_captured_off_the_console(capfd):
    """What native code writes on file descriptor 2 inside the block is held, not shown, and handed back."""
    import os

    with logs._native_lines() as lines:
        os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\nE0000 a real error\n")
    assert capfd.readouterr().err == ""
    assert lines == ["I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.", "E0000 a real error"]


def test_tensorflow_start_up_lines_go_to_the_log_only(tmp_path):
    """Issue 22.11: TensorFlow 2.21 prints absl's 'All log messages before absl::InitializeLog()' and its INFO lines
    (oneDNN, no CUDA drivers) at import whatever TF_CPP_MIN_LOG_LEVEL says; the console shows none of them, the log
    file has them, and a native warning or error would still reach the console."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import src\nfrom misc import logs\nlogs.setup_logging(buffer=True)\n"
              f"logs.attach_log_file({str(tmp_path / 'x.log')!r})\nprint('ready')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and run.stdout.strip() == "ready", run.stderr
    assert "InitializeLog" not in run.stderr and "I0000" not in run.stderr, run.stderr
    assert "InitializeLog" in (tmp_path / "x.log").read_text()
