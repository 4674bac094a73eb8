"""Helper for the kill-and-resume tests: SIGKILL a process (or its process group) once a condition holds."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Callable


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 240.0,
              group: bool = False) -> None:
    """Poll ``ready()``; then SIGKILL ``proc`` (its whole process group with ``group``, e.g. a notebook kernel).

    Raises AssertionError when the process ends before the kill point (the test would prove nothing).
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline and not ready():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the kill point")
        time.sleep(0.05)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
