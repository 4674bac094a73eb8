"""Run a module as ``__main__`` and SIGKILL it at a deterministic point: inside the Nth atomic rename of a file.

Used by the kill-and-resume tests. Polling the output folder and killing from outside races with the process on a
fast machine (CI once saw all 10 volumes written before the kill landed), so the kill happens from inside instead:
``os.replace`` is wrapped, and on its Nth call whose destination name matches ``PATTERN`` the process kills itself
with SIGKILL *before* the rename. The temporary ``.part`` file is then complete on disk and the target is missing,
the worst moment for a crash; the resumed run must clean it up and redo that file.

Usage::

    python tests/killpoint.py PATTERN N -m module [args ...]
"""
from __future__ import annotations

import fnmatch
import os
import runpy
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    """Parse ``PATTERN N -m module args...``, wrap ``os.replace``, run the module as ``__main__``."""
    if len(argv) < 4 or argv[2] != "-m":
        raise SystemExit("usage: killpoint.py PATTERN N -m module [args ...]")
    pattern, nth, module, args = argv[0], int(argv[1]), argv[3], argv[4:]
    real_replace = os.replace
    seen = 0

    def replace(src, dst, *a, **kw):
        nonlocal seen
        if fnmatch.fnmatch(Path(os.fsdecode(dst)).name, pattern):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **kw)

    os.replace = replace
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
