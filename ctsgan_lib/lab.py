"""``make lab``: register the project's Jupyter kernel and start JupyterLab on localhost with ``notebooks/`` open.

Run as ``python -m ctsgan_lib.lab [--port N] [--no-browser] [--no-kernel-install]``. The browser test
(``tests/browser/test_lab_browser.py``) starts the server with the same :func:`lab_command`, so what it checks is what a
user gets.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .config import project_root
from .pipeline import KERNEL_NAME

DISPLAY_NAME = "Python (ctsgan)"


def kernel_install_command(prefix: str | Path | None = None) -> list[str]:
    """The ``ipykernel install`` call that registers this interpreter as kernel ``ctsgan``.

    ``prefix=None`` installs into this environment (``--sys-prefix``: ``.venv/share/jupyter/kernels/ctsgan``), so the
    kernel travels with the virtual environment and never touches the user's own Jupyter folders.
    """
    where = ["--sys-prefix"] if prefix is None else ["--prefix", str(prefix)]
    return [sys.executable, "-m", "ipykernel", "install", *where, "--name", KERNEL_NAME,
            "--display-name", DISPLAY_NAME]


def register_kernel(prefix: str | Path | None = None) -> Path:
    """Register kernel ``ctsgan`` (idempotent) and return its kernelspec folder."""
    subprocess.run(kernel_install_command(prefix), check=True, capture_output=True, text=True)
    base = Path(sys.prefix if prefix is None else prefix)
    return base / "share" / "jupyter" / "kernels" / KERNEL_NAME


def lab_command(port: int | None = None, notebooks: str | Path | None = None, open_browser: bool = True,
                token: str | None = None, extra: list[str] | None = None) -> list[str]:
    """The ``jupyter lab`` command line: localhost only, ``notebooks/`` as the root, ``--allow-root`` when root.

    Parameters
    ----------
    port : int, optional
        Port to listen on (default: JupyterLab's, 8888, or the next free one).
    notebooks : path, optional
        Folder the file browser opens (default ``<checkout>/notebooks``).
    open_browser : bool
        Open the user's browser (``make lab``) or not (tests, remote machines).
    token : str, optional
        Fixed access token (default: JupyterLab makes one and prints the URL).
    extra : list of str, optional
        More ``jupyter lab`` options.
    """
    notebooks = Path(notebooks) if notebooks is not None else project_root() / "notebooks"
    cmd = [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={notebooks}"]
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if not open_browser:
        cmd.append("--no-browser")
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; Jupyter refuses root without it
    return cmd + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctsgan_lib.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="port (default 8888 or the next free one)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser (print the URL only)")
    parser.add_argument("--no-kernel-install", action="store_true", help="skip registering the ctsgan kernel")
    args, extra = parser.parse_known_args(argv)
    if not args.no_kernel_install:
        spec = register_kernel()
        print(f"[ctsgan lab] kernel {KERNEL_NAME!r} ({DISPLAY_NAME}) registered at {spec}", flush=True)
    cmd = lab_command(port=args.port, open_browser=not args.no_browser, extra=extra)
    print(f"[ctsgan lab] {' '.join(cmd)}", flush=True)
    # exec: Ctrl-C goes straight to JupyterLab, which shuts its kernels down cleanly.
    os.execv(cmd[0], cmd)
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
