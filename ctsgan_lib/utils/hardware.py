"""Describe the machine a number was measured on: every table and figure carries this."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware_info(device: str | None = None) -> dict:
    """A dict describing the hardware and software stack.

    Parameters
    ----------
    device : str, optional
        ``"cpu"`` or ``"cuda"``; by default CUDA when available.
    """
    import torch  # 1.3 s to import; `ctsgan reproduce` and figure captions use this module without torch

    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device="cuda", gpu=p.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info["device"] = "cpu"
    return info


def hardware_label(device: str | None = None) -> str:
    """One line, e.g. ``"cpu: Intel Xeon ... (2 cores)"`` or ``"cuda: NVIDIA H100 ×1"``."""
    h = hardware_info(device)
    if h["device"] == "cuda":
        return f"cuda: {h['gpu']} ×{h['gpu_count']}"
    return f"cpu: {h['cpu']} ({h['cpu_cores']} cores)"


def git_commit(root: str | Path | None = None) -> str:
    """Current git commit (with ``-dirty`` when the tree has changes), or ``"unknown"``."""
    try:
        kw = dict(cwd=root, capture_output=True, text=True, timeout=10)
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], **kw).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **kw).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch  # 1.3 s to import; `ctsgan reproduce` and figure captions use this module without torch

    return "cuda" if torch.cuda.is_available() else "cpu"
