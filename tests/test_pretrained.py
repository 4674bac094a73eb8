"""Shipped pretrained models: the committed weights match their manifest and load with ``weights_only=True``; a
changed file is refused in one line; an export of a run round-trips; installed models are what notebooks 04-08 read."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from cli_checks import assert_one_line_error
from conftest import REPO
from ctsgan_lib.cli import main
from ctsgan_lib.config import load_profile
from ctsgan_lib.errors import CheckpointError, CTSGANError
from ctsgan_lib.nodules import NoduleEraser, NoduleInjector
from ctsgan_lib.synthesis import generate_volumes, load_generator
from ctsgan_lib.train.distributed import DistContext
from ctsgan_lib.train.gan_common import GANRun, build_gan
from ctsgan_lib.utils.checkpoint import latest_checkpoint, save_checkpoint
from ctsgan_lib.utils.pretrained import MODELS, export_pretrained, install_pretrained, verify_pretrained

SHIPPED = sorted(p for p in (REPO / "pretrained").glob("*") if (p / "SHA256SUMS").is_file())
ABSOLUTE = re.compile(r"(?<![\w.])/(?:home|tmp|root|Users|work|mnt|scratch|var)/")


def test_smoke_weights_are_shipped():
    assert REPO / "pretrained" / "smoke" in SHIPPED  # nbval runs notebooks 02 and 03 with them in `make test`


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_weights_match_manifest_and_load_weights_only(folder: Path):
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    # every file in the folder is listed, and its SHA-256 (computed here, independently of the library) matches
    assert sorted(listed) == sorted(p.name for p in folder.iterdir() if p.name != "SHA256SUMS")
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert set(verify_pretrained(folder)) == set(listed)
    profile = load_profile(folder.name)
    for name, spec in MODELS.items():
        if not spec.required and f"{name}.pt" not in listed:
            continue
        ck = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        assert ck["kind"] == spec.kind and set(ck["models"]) == set(spec.networks)  # generators only
        assert not ck["optimizers"] and ck["rng"] is None
        assert ck["config"]["data"]["size"] == profile.data.size
        assert not ABSOLUTE.search(repr(ck["config"]) + repr(ck["extra"])), name
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["profile"] == folder.name and prov["data_sources"] == ["phantom"]
    text = (folder / "provenance.json").read_text() + (folder / "README.md").read_text()
    assert "not on patients" in (folder / "README.md").read_text()
    assert not ABSOLUTE.search(text)


def _copy_smoke(tmp_path: Path) -> Path:
    dst = tmp_path / "shipped"
    shutil.copytree(REPO / "pretrained" / "smoke", dst)
    return dst


def test_a_changed_or_missing_file_is_refused_in_one_line(tmp_path, capsys):
    shipped = _copy_smoke(tmp_path)
    assert main(["pretrained", "verify", "--dir", str(shipped)]) == 0
    capsys.readouterr()
    data = bytearray((shipped / "ctsgan.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (shipped / "ctsgan.pt").write_bytes(bytes(data))
    rc = main(["pretrained", "verify", "--dir", str(shipped)])
    assert_one_line_error(rc, capsys.readouterr().err, str(shipped / "ctsgan.pt"), "SHA-256")
    (shipped / "ctsgan.pt").unlink()
    rc = main(["pretrained", "verify", "--dir", str(shipped)])
    assert_one_line_error(rc, capsys.readouterr().err, str(shipped / "ctsgan.pt"), "missing")
    rc = main(["pretrained", "verify", "--dir", str(tmp_path / "demo")])
    assert_one_line_error(rc, capsys.readouterr().err, str(tmp_path / "demo"), "ctsgan pretrained export")
    (shipped / "SHA256SUMS").unlink()
    rc = main(["pretrained", "verify", "--dir", str(shipped)])
    assert_one_line_error(rc, capsys.readouterr().err, str(shipped / "SHA256SUMS"))


def test_install_puts_models_where_later_notebooks_read_them(tmp_root, tmp_path, capsys):
    cfg = load_profile("smoke")
    earlier = cfg.runs_dir / "ctsgan" / "ckpt_000999.pt"   # a trained checkpoint already there is set aside, not lost
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"trained before")
    runs = install_pretrained(cfg, list(MODELS))
    assert "not trained here" in capsys.readouterr().out
    assert [p.read_bytes() for p in (cfg.runs_dir / "ctsgan").glob("replaced-*/ckpt_000999.pt")] == [b"trained before"]
    for name, spec in MODELS.items():
        folder = cfg.runs_dir / spec.run_subdir
        assert latest_checkpoint(folder) == runs[name]["checkpoint"]
        assert (folder / "log.csv").read_bytes() == (REPO / "pretrained" / "smoke" / f"{name}_log.csv").read_bytes()
    install_pretrained(cfg, ["ctsgan"])   # a rerun of the notebook: nothing new is set aside
    assert len(list((cfg.runs_dir / "ctsgan").glob("replaced-*"))) == 1
    gen = load_generator(latest_checkpoint(cfg.runs_dir / "ctsgan"))          # what notebook 04 does
    hu, _ = next(iter(generate_volumes(gen, 1, seed=0)))
    assert hu.shape == (cfg.data.size,) * 3
    g3 = load_generator(latest_checkpoint(cfg.runs_dir / "gan3d"))
    assert g3.meta["kind"] == "gan3d"
    assert NoduleInjector.from_checkpoint(cfg.runs_dir / "nodules" / "injector").kind == cfg.nodules.injector
    assert NoduleEraser.from_checkpoint(cfg.runs_dir / "nodules" / "eraser").step == runs["eraser"]["step"]
    # the shipped generator cannot resume training: one clear line, not a KeyError
    nets, opts = build_gan("ctsgan", cfg.data.size, cfg.ctsgan, "cpu", DistContext())
    with pytest.raises(CTSGANError, match="shipped pretrained generator"):
        GANRun(kind="ctsgan", config=cfg.to_dict(), out_dir=cfg.runs_dir / "ctsgan", models=nets, optimizers=opts,
               iterations=5, ckpt_every=5, sample_every=5, loss_names=["x"], resume=True, seed=0,
               ctx=DistContext(), device="cpu", progress=False)


def test_install_refuses_a_tampered_folder_and_another_size(tmp_root, tmp_path):
    shipped = _copy_smoke(tmp_path)
    (shipped / "gan3d_log.csv").write_text("step\n1\n")
    with pytest.raises(CheckpointError, match="gan3d_log.csv: SHA-256"):
        install_pretrained(load_profile("smoke"), ["ctsgan"], folder=shipped)
    assert not (tmp_root / "runs").exists()   # nothing installed from a folder that failed verification
    with pytest.raises(CheckpointError, match="trained on 32³ volumes"):
        install_pretrained(load_profile("smoke", **{"data.size": 48}), ["ctsgan"], folder=REPO / "pretrained" / "smoke")


def _fake_run(cfg) -> None:
    """A finished run's folders with tiny stand-in networks (export copies state dicts, it never builds models)."""
    tiny = torch.nn.Linear(2, 2)
    for name, spec in MODELS.items():
        if name == "injector_sphere":
            continue
        nets = {n: tiny for n in (*spec.networks, "critic")}
        extra = {"cohort": str(cfg.data_dir / "cohort"), "n_train": 7}
        save_checkpoint(cfg.runs_dir / spec.run_subdir / "ckpt_000004.pt", kind=spec.kind, step=4,
                        config=cfg.to_dict(), models=nets, optimizers={"g": torch.optim.Adam(tiny.parameters())},
                        extra=extra)
        (cfg.runs_dir / spec.run_subdir / "log.csv").write_text("step,loss\n4,0.5\n")
    (cfg.data_dir / "cohort").mkdir(parents=True)
    (cfg.data_dir / "cohort" / "manifest.csv").write_text("id,source\np1,phantom\np2,phantom\n")


def test_export_round_trips_with_provenance_and_no_machine_paths(tmp_root, tmp_path, capsys):
    cfg = load_profile("smoke")
    _fake_run(cfg)
    out = tmp_path / "export"
    assert main(["pretrained", "export", "--profile", "smoke", "--out", str(out)]) == 0
    verified = verify_pretrained(out)
    assert set(verified) == {"injector.pt", "injector_log.csv", "eraser.pt", "eraser_log.csv", "ctsgan.pt", "ctsgan_log.csv", "gan3d.pt",
        "gan3d_log.csv", "provenance.json", "README.md"}
    ck = torch.load(out / "ctsgan.pt", weights_only=True)
    assert set(ck["models"]) == {"rv", "gslice"} and not ck["optimizers"] and ck["rng"] is None  # critics dropped
    assert ck["extra"]["cohort"] == "data/smoke/cohort" and ck["extra"]["pretrained"] is True
    text = "".join((out / n).read_text() for n in ("provenance.json", "README.md", "SHA256SUMS"))
    assert str(tmp_path) not in text and str(tmp_root) not in text
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["data_sources"] == ["phantom"] and [m["step"] for m in prov["models"]] == [4, 4, 4, 4]
    # an export is not overwritten by accident; --force replaces it whole
    rc = main(["pretrained", "export", "--profile", "smoke", "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, str(out), "--force")
    assert main(["pretrained", "export", "--profile", "smoke", "--out", str(out), "--force"]) == 0
    assert verify_pretrained(out) and not list(tmp_path.glob(".export*"))
    # and it installs: the run folder gets back the generator the run trained
    cfg2 = load_profile("smoke")
    shutil.rmtree(cfg2.runs_dir)
    install_pretrained(cfg2, ["ctsgan"], folder=out)
    back = torch.load(latest_checkpoint(cfg2.runs_dir / "ctsgan"), weights_only=True)
    assert torch.equal(back["models"]["rv"]["weight"], ck["models"]["rv"]["weight"])


def test_export_names_the_notebook_when_a_model_is_missing(tmp_root, tmp_path, capsys):
    rc = main(["pretrained", "export", "--profile", "smoke", "--out", str(tmp_path / "x")])
    assert_one_line_error(rc, capsys.readouterr().err, "run notebook 02")
    assert not (tmp_path / "x").exists()
