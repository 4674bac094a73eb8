"""Helpers for the kill-and-resume tests.

``killed_at`` runs a command that SIGKILLs itself inside the Nth atomic rename of a matching file (see
``killpoint.py``): deterministic on any machine speed. ``kill_when`` polls a condition from outside and is kept
for process groups (a notebook runner and its kernel), where the child paces itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

KILLPOINT = Path(__file__).with_name("killpoint.py")


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


def killed_at(pattern: str, nth: int, python_args: list[str], env: dict) -> None:
    """Run ``python -m ...`` (``python_args`` starts with ``-m``) under ``killpoint.py``; assert it died by SIGKILL.

    The process kills itself just before the ``nth`` rename whose destination file name matches ``pattern``.
    """
    proc = subprocess.run([sys.executable, str(KILLPOINT), pattern, str(nth), *python_args], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, (
        f"expected a SIGKILL at rename {nth} of {pattern}, got rc {proc.returncode}: {proc.stderr[-2000:]}")
