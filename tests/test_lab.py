"""`make lab`'s launcher: the kernel it registers and the JupyterLab command line it runs."""
from __future__ import annotations

import json
import os
import sys

from ctsgan_lib import lab
from ctsgan_lib.config import project_root


def test_register_kernel_writes_a_ctsgan_kernelspec_for_this_interpreter(tmp_path):
    spec_dir = lab.register_kernel(tmp_path)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec_dir == tmp_path / "share" / "jupyter" / "kernels" / "ctsgan"
    assert spec["display_name"] == "Python (ctsgan)" and spec["language"] == "python"
    assert spec["argv"][0] == sys.executable and "ipykernel_launcher" in spec["argv"]
    lab.register_kernel(tmp_path)  # idempotent: a second `make lab` just refreshes it
    assert json.loads((spec_dir / "kernel.json").read_text()) == spec


def test_lab_command_is_localhost_with_notebooks_open(tmp_path):
    cmd = lab.lab_command()
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in cmd
    assert f"--ServerApp.root_dir={project_root() / 'notebooks'}" in cmd
    assert "--no-browser" not in cmd and not any(a.startswith("--IdentityProvider.token") for a in cmd)
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)
    cmd = lab.lab_command(port=9999, notebooks=tmp_path, open_browser=False, token="t0k", extra=["--debug"])
    assert {"--ServerApp.port=9999", f"--ServerApp.root_dir={tmp_path}", "--no-browser",
            "--IdentityProvider.token=t0k"} <= set(cmd)
    assert cmd[-1] == "--debug"
    assert lab.kernel_install_command()[1:] == ["-m", "ipykernel", "install", "--sys-prefix", "--name", "ctsgan",
                                                "--display-name", "Python (ctsgan)"]
