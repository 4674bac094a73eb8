"""Shipped pretrained models: export a finished run's generators, verify them, install them into a run folder.

``pretrained/<profile>/`` (at the checkout root) holds, per model, a generator-only checkpoint in the usual
:mod:`~ctsgan_lib.utils.checkpoint` format (``<name>.pt``) and its training log (``<name>_log.csv``), plus
``provenance.json`` and ``README.md`` (commit, profile, data, date, hardware) and ``SHA256SUMS`` over all of them, in
the format of coreutils ``sha256sum`` (``sha256sum -c SHA256SUMS`` checks a folder by hand).

- :func:`export_pretrained` (``ctsgan pretrained export``) copies the newest checkpoint of each model of a finished run
  (``runs/<P>/{ctsgan,gan3d,nodules/…}``), keeping only the networks generation needs (no critics, optimizer or RNG
  states) and no absolute path.
- :func:`verify_pretrained` checks every file against ``SHA256SUMS`` before anything is loaded.
- :func:`install_pretrained` (notebooks 02 and 03 with ``pretrained=True``) verifies, loads each checkpoint with
  ``weights_only=True`` and writes it into the run folder where training would have put it, so notebooks 04-08 read
  it unchanged. Checkpoints already there are moved to ``<run folder>/replaced-<UTC time>/``, never deleted.

A shipped checkpoint cannot resume training (it has no critics): training again starts from scratch (``fresh``).
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

import torch

from ..config import Config, checkout_root
from ..errors import CheckpointError, CTSGANError
from .atomic import atomic_path, atomic_write_text, file_sha256, umask_dir_mode
from .checkpoint import latest_checkpoint, load_checkpoint
from .hardware import git_commit, hardware_label
from .paths import shareable_path

SUMS_FILE = "SHA256SUMS"
PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class ShippedModel:
    """One model that can be shipped: where its run folder is, its checkpoint kind, the networks kept."""

    name: str
    run_subdir: str
    kind: str
    networks: tuple[str, ...]
    notebook: str
    required: bool = True


#: The shipped models, in the order notebooks 02 and 03 train them.
MODELS: dict[str, ShippedModel] = {m.name: m for m in (
    ShippedModel("injector", "nodules/injector", "nodule_injector", ("generator",), "02"),
    ShippedModel("injector_sphere", "nodules/injector_sphere", "nodule_injector", ("generator",), "02", False),
    ShippedModel("eraser", "nodules/eraser", "nodule_eraser", ("generator",), "02"),
    ShippedModel("ctsgan", "ctsgan", "ctsgan", ("rv", "gslice"), "03"),
    ShippedModel("gan3d", "gan3d", "gan3d", ("generator",), "03"),
)}


def pretrained_dir(profile: str) -> Path:
    """``pretrained/<profile>/`` of the source checkout (shipped with the code, whatever ``CTSGAN_ROOT`` says)."""
    return checkout_root() / "pretrained" / profile


def _read_sums(folder: Path) -> dict[str, str]:
    sums = folder / SUMS_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no pretrained models shipped here; train instead (pretrained=False), or "
                              f"export a finished run's models with `ctsgan pretrained export --profile "
                              f"{folder.name}`")
    if not sums.is_file():
        raise CheckpointError(f"{sums}: no SHA-256 manifest; pretrained models are only used from a folder written "
                              "by `ctsgan pretrained export`")
    out: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.lstrip("*")
        if len(digest) != 64 or not name or PurePath(name).name != name:
            raise CheckpointError(f"{sums}: line {n} is not '<sha256>  <file name>'")
        out[name] = digest.lower()
    return out


def verify_pretrained(folder: str | Path) -> dict[str, Path]:
    """Check every file listed in ``folder/SHA256SUMS`` against its SHA-256.

    Returns
    -------
    dict of str → Path
        File name → path, for every verified file.

    Raises
    ------
    CheckpointError
        One line naming the file: the manifest is missing or malformed, a listed file is missing, or its SHA-256
        differs from the manifest (changed, truncated or replaced after export).
    """
    folder = Path(folder)
    out = {}
    for name, digest in _read_sums(folder).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {SUMS_FILE} but missing")
        got = file_sha256(path)
        if got != digest:
            raise CheckpointError(f"{path}: SHA-256 {got[:16]}… does not match {SUMS_FILE} ({digest[:16]}…); the "
                                  "file was changed after export, do not use it")
        out[name] = path
    return out


def load_pretrained(folder: str | Path, name: str, verified: dict[str, Path] | None = None) -> dict[str, Any]:
    """Verify ``folder`` (unless ``verified`` is passed) and load model ``name`` with ``weights_only=True``.

    Raises
    ------
    CheckpointError
        Verification failed, the model is not shipped there, or its file is not a checkpoint of the right kind.
    """
    spec = _spec(name)
    verified = verify_pretrained(folder) if verified is None else verified
    if f"{name}.pt" not in verified:
        raise CheckpointError(f"{Path(folder) / (name + '.pt')}: not shipped (not listed in {SUMS_FILE})")
    ck = load_checkpoint(verified[f"{name}.pt"], kind=spec.kind)
    missing = [n for n in spec.networks if n not in ck["models"]]
    if missing:
        raise CheckpointError(f"{verified[name + '.pt']}: has no network {missing[0]!r}")
    return ck


def _spec(name: str) -> ShippedModel:
    if name not in MODELS:
        raise CTSGANError(f"unknown pretrained model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def install_pretrained(cfg: Config, names: list[str] | tuple[str, ...], folder: str | Path | None = None,
                       verbose: bool = True) -> dict[str, dict[str, Any]]:
    """Put shipped models where training would have written them (``runs/<P>/…/ckpt_<step>.pt`` and ``log.csv``).

    Parameters
    ----------
    cfg : Config
        The profile; its ``data.size`` must match the shipped models'.
    names : list of str
        Models to install (keys of :data:`MODELS`).
    folder : path, optional
        The shipped folder (default :func:`pretrained_dir` of ``cfg.profile``).
    verbose : bool
        Print one line per installed model (notebooks show it).

    Returns
    -------
    dict of str → dict
        Per model, what training returns: ``checkpoint``, ``step``, ``log`` (path or None), ``out_dir``, ``n_train``
        (nodule models) and ``pretrained`` (the shipped file, relative to the checkout).

    Raises
    ------
    CheckpointError
        The folder fails verification, a model is missing, or it was trained for another volume size.
    """
    folder = Path(folder) if folder is not None else pretrained_dir(cfg.profile)
    verified = verify_pretrained(folder)
    sums = _read_sums(folder)
    out = {}
    for name in names:
        spec = _spec(name)
        ck = load_pretrained(folder, name, verified)
        size = ck["config"].get("data", {}).get("size")
        if size != cfg.data.size:
            raise CheckpointError(f"{verified[name + '.pt']}: trained on {size}³ volumes, but profile "
                                  f"{cfg.profile!r} uses {cfg.data.size}³; export models from a run of this profile")
        run_dir = cfg.runs_dir / spec.run_subdir
        target = run_dir / f"ckpt_{int(ck['step']):06d}.pt"
        # installed before (a rerun of the notebook): nothing to set aside
        if sorted(run_dir.glob("ckpt_*.pt")) != [target] or file_sha256(target) != sums[f"{name}.pt"]:
            _set_aside(run_dir)
        with atomic_path(target) as tmp:
            shutil.copyfile(verified[f"{name}.pt"], tmp)
            if file_sha256(tmp) != sums[f"{name}.pt"]:  # changed between verification and copy
                raise CheckpointError(f"{verified[name + '.pt']}: changed while it was being installed")
        log = None
        if f"{name}_log.csv" in verified:
            log = run_dir / "log.csv"
            with atomic_path(log) as tmp:
                shutil.copyfile(verified[f"{name}_log.csv"], tmp)
        source = shareable_path(verified[f"{name}.pt"])
        atomic_write_text(run_dir / "pretrained.json", json.dumps(
            {"pretrained": source, "sha256": sums[f"{name}.pt"], "step": int(ck["step"]),
             "installed": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
        out[name] = {"checkpoint": target, "step": int(ck["step"]), "log": log, "out_dir": run_dir,
                     "n_train": ck["extra"].get("n_train"), "pretrained": source}
        if verbose:
            print(f"pretrained: {name} loaded from {source} (step {int(ck['step'])}, SHA-256 verified) into "
                  f"{shareable_path(target)}; not trained here")
    return out


def _set_aside(run_dir: Path) -> None:
    """Move checkpoints, log, options and sample grids a run folder already holds to ``replaced-<UTC time>/``."""
    old = [*run_dir.glob("ckpt_*.pt"), *(run_dir / n for n in ("log.csv", "training_options.json", "pretrained.json"))]
    old = [p for p in old if p.is_file()] + ([run_dir / "samples"] if (run_dir / "samples").is_dir() else [])
    if not old:
        return
    aside = run_dir / f"replaced-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}"
    aside.mkdir(parents=True)
    for p in old:
        p.replace(aside / p.name)
    print(f"pretrained: moved {len(old)} earlier file(s) of {shareable_path(run_dir)} to {shareable_path(aside)}")


def _scrub(obj: Any) -> Any:
    """Absolute paths in a checkpoint's config or extra → paths relative to the project (no machine layout)."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        return shareable_path(obj)
    return obj


def _run_provenance(cfg: Config) -> dict[str, Any]:
    """Training commits (per notebook), hardware and data source of the run being exported, from what it recorded:
    ``runs/<P>/notebooks/run_manifest.json`` (``ctsgan reproduce``) and the GAN runs' ``training_options.json``."""
    commits, hardware = {}, set()
    for sub in ("ctsgan", "gan3d"):
        opts = cfg.runs_dir / sub / "training_options.json"
        if opts.is_file():
            o = json.loads(opts.read_text())
            commits["03"] = str(o.get("commit", "unknown"))
            h = o.get("hardware") or {}
            hardware.add(f"cuda: {h['gpu']} ×{h.get('gpu_count', 1)}" if h.get("device") == "cuda"
                         else f"cpu: {h.get('cpu', '?')} ({h.get('cpu_cores', '?')} cores)")
    manifest = cfg.runs_dir / "notebooks" / "run_manifest.json"
    stages = []
    if manifest.is_file():
        stages = [n for n in json.loads(manifest.read_text()).get("notebooks", []) if n.get("number") in ("02", "03")]
        commits.update({n["number"]: str(n["commit"]) for n in stages if n.get("commit")})
    sources = set()
    cohort = cfg.data_dir / "cohort" / "manifest.csv"
    if cohort.is_file():
        with cohort.open(newline="", encoding="utf-8") as f:
            sources = {str(row.get("source")) for row in csv.DictReader(f)}
    return {"training_commits": {f"notebook {k}": v for k, v in sorted(commits.items())},
            "hardware": sorted(hardware) or [hardware_label()],
            "data_sources": sorted(sources) or ["unknown"],
            "stage_wall_s": {n["notebook"]: n.get("wall_s") for n in stages}}


def _readme(prov: dict[str, Any]) -> str:
    phantom = prov["data_sources"] == ["phantom"]
    rows = "\n".join(f"| `{m['file']}` | {m['kind']} | {m['step']} | {m['parameters']:,} | {m['trained_on']} | "
                     f"{m['commit']} |" for m in prov["models"])
    commits = ", ".join(f"{k} at {v}" for k, v in prov["training_commits"].items()) or "unknown"
    return f"""# Pretrained models: profile `{prov['profile']}`

Written by `ctsgan pretrained export --profile {prov['profile']}` on {prov['exported'][:10]}; do not edit by hand
(`SHA256SUMS` is checked before every use; `sha256sum -c SHA256SUMS` checks it by hand).

- **Data:** {', '.join(prov['data_sources'])} cohort of profile `{prov['profile']}`{
    ' (synthetic phantoms made by `ctsgan_lib.data.phantom`): trained on phantoms, not on patients. No patient data '
    'went into these weights' if phantom else ''}.
- **Trained by:** {commits} (`ctsgan reproduce --profile {prov['profile']}`); exported at {prov['export_commit']}.
- **Hardware:** {'; '.join(prov['hardware'])}.
- **What is kept:** the generator networks only (no critics, optimizer or RNG states), loadable with
  `torch.load(..., weights_only=True)`. They cannot resume training; `pretrained=False` trains from scratch.
- **Use:** `make reproduce PROFILE={prov['profile']} PRETRAINED=1`, `ctsgan reproduce --profile {prov['profile']}
  --pretrained`, or `pretrained = True` in the parameters cell of notebooks 02 and 03.

| file | model | step | parameters | trained on | commit |
|---|---|---|---|---|---|
{rows}
"""


def export_pretrained(cfg: Config, out: str | Path | None = None, force: bool = False) -> Path:
    """Export the newest checkpoint of each model of ``cfg``'s run into ``out`` (default ``pretrained/<P>/``).

    The folder is built beside ``out`` and swapped in at the end, so ``out`` holds either the previous export or the
    complete new one.

    Raises
    ------
    CTSGANError
        A required model has no checkpoint (the message names the notebook that trains it), or ``out`` exists and
        ``force`` is not set.
    """
    out = Path(out) if out is not None else pretrained_dir(cfg.profile)
    if out.exists() and not force:
        raise CTSGANError(f"{out}: exists; pass --force to replace it with this run's models")
    found = {}
    for name, spec in MODELS.items():
        ck_path = latest_checkpoint(cfg.runs_dir / spec.run_subdir)
        if ck_path is None:
            if spec.required:
                raise CTSGANError(f"{cfg.runs_dir / spec.run_subdir}: no checkpoint to export; run notebook "
                                  f"{spec.notebook} (profile {cfg.profile}) first")
            continue
        found[name] = ck_path
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    build.chmod(umask_dir_mode())  # mkdtemp makes it 0700; colleagues on a shared server read the export
    try:
        models, run = [], _run_provenance(cfg)
        for name, ck_path in found.items():
            spec = MODELS[name]
            ck = load_checkpoint(ck_path, kind=spec.kind)
            nets = {n: ck["models"][n] for n in spec.networks if n in ck["models"]}
            if len(nets) != len(spec.networks):
                raise CheckpointError(f"{ck_path}: lacks one of the networks {', '.join(spec.networks)}")
            extra = {k: v for k, v in ck["extra"].items() if k not in ("rng_ranks",)}
            payload = {"kind": ck["kind"], "format": ck.get("format", 1), "step": int(ck["step"]),
                       "config": _scrub(ck["config"]), "models": nets, "optimizers": {}, "rng": None,
                       "extra": {**_scrub(extra), "pretrained": True, "exported_from": shareable_path(ck_path)}}
            torch.save(payload, build / f"{name}.pt")
            load_checkpoint(build / f"{name}.pt", kind=spec.kind)  # what we ship must load with weights_only=True
            log = ck_path.parent / "log.csv"
            if log.is_file():
                shutil.copyfile(log, build / f"{name}_log.csv")
            models.append({"name": name, "file": f"{name}.pt", "kind": spec.kind, "step": int(ck["step"]),
                           "parameters": int(sum(t.numel() for sd in nets.values() for t in sd.values())),
                           "bytes": (build / f"{name}.pt").stat().st_size, "notebook": spec.notebook,
                           "commit": run["training_commits"].get(f"notebook {spec.notebook}", "unknown"),
                           "trained_on": shareable_path(ck["extra"].get("cohort") or ck["extra"].get("data_source")
                                                         or "unknown")})
        prov = {"profile": cfg.profile, "volume_size": cfg.data.size,
                "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "export_commit": git_commit(checkout_root()), **run, "models": models}
        (build / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2) + "\n")
        (build / "README.md").write_text(_readme(prov))
        names = sorted(p.name for p in build.iterdir() if p.is_file())
        (build / SUMS_FILE).write_text("".join(f"{file_sha256(build / n)}  {n}\n" for n in names))
        verify_pretrained(build)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{build.name}")
            out.replace(old)
        build.replace(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return out


__all__ = ["MODELS", "ShippedModel", "export_pretrained", "install_pretrained", "load_pretrained", "pretrained_dir",
           "verify_pretrained"]
