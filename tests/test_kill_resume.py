"""SIGKILL at a random point, then rerun: each long stage resumes and ends with the same result (issue [hardening]).

The cohort build and generation variants live in test_hardening.py and test_synthetic.py; in-process interruption
tests with bit-exact comparisons are in the per-area test files. These kill real processes.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctsgan_lib.data.cohort import CohortWriter
from killing import kill_when, killed_at

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _log_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_ctsgan_training_killed_resumes_to_the_uninterrupted_losses(tmp_root, tmp_path):
    rng = np.random.default_rng(0)
    with CohortWriter(tmp_path / "cohort", compress=False) as w:
        for i in range(3):
            hu = rng.normal(-500, 300, (32, 32, 32)).astype(np.float32)
            w.write(f"p{i}", hu, (10.0, 10.0, 10.0), source="phantom", domain="nlst-like", split="train")
    sets = ["--set", "ctsgan.iterations=8", "--set", "ctsgan.ckpt_every=2", "--set", "ctsgan.sample_every=100",
            "--set", "ctsgan.ngf=8", "--set", "ctsgan.ndf=8"]

    def cmd(out, *flags):
        return [sys.executable, "-m", "ctsgan_lib.cli", "train", "ctsgan", "--profile", "smoke", "--cohort",
                str(tmp_path / "cohort"), "--out", str(out), "--no-progress", "--device", "cpu", *sets, *flags]

    run = tmp_path / "run"
    killed_at("ckpt_000004.pt", 1, cmd(run, "--fresh")[1:], ENV)   # dies while checkpoint 4 is being renamed
    assert (run / "ckpt_000002.pt").exists() and not (run / "ckpt_000004.pt").exists()
    subprocess.run(cmd(run, "--resume"), env=ENV, check=True, capture_output=True)
    subprocess.run(cmd(tmp_path / "ref", "--fresh"), env=ENV, check=True, capture_output=True)
    rows, ref = _log_rows(run / "log.csv"), _log_rows(tmp_path / "ref" / "log.csv")
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == [str(s) for s in range(1, 9)]
    for a, b in zip(rows, ref):
        for k in a:
            if k.startswith(("loss", "gp")):
                assert np.isfinite(float(a[k])) and a[k] == b[k], (a["step"], k, a[k], b[k])
    assert not list(run.glob("*.part*"))


def test_nodule_injector_training_killed_resumes_to_the_uninterrupted_losses(tmp_root, tmp_path):
    from nodule_fixtures import make_cohort

    cohort, _ = make_cohort(tmp_path / "toy")
    sets = ["--set", "nodules.iterations=8", "--set", "nodules.ckpt_every=2", "--set", "nodules.batch=2"]

    def cmd(out, *flags):
        return [sys.executable, "-m", "ctsgan_lib.cli", "nodules", "train", "injector", "--profile", "smoke",
                "--cohort", str(cohort), "--out", str(out), "--device", "cpu", *sets, *flags]

    run = tmp_path / "run"
    killed_at("ckpt_000004.pt", 1, cmd(run, "--fresh")[1:], ENV)   # dies while checkpoint 4 is being renamed
    assert (run / "ckpt_000002.pt").exists() and not (run / "ckpt_000004.pt").exists()
    subprocess.run(cmd(run), env=ENV, check=True, capture_output=True)           # resumes by default
    subprocess.run(cmd(tmp_path / "ref", "--fresh"), env=ENV, check=True, capture_output=True)
    rows, ref = _log_rows(run / "log.csv"), _log_rows(tmp_path / "ref" / "log.csv")
    assert [r["step"] for r in rows] == [r["step"] for r in ref] and rows[-1]["step"] == "8"
    for a, b in zip(rows, ref):
        for k in a:
            if k not in ("step", "seconds"):   # losses, L1 terms, critic outputs: all equal, wall time not
                assert np.isfinite(float(a[k])) and a[k] == b[k], (a["step"], k, a[k], b[k])
    assert not list(run.glob("*.part*"))


@pytest.mark.slow
def test_reproduce_killed_mid_notebook_then_rerun_completes(tmp_path):
    """SIGKILL `ctsgan reproduce` while a notebook runs; the rerun finishes with every notebook ok."""
    import nbformat

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name, code in (("01_a.ipynb", "import time, pathlib, os\nfor i in range(60):\n    "
                                      "pathlib.Path(os.environ['CTSGAN_ROOT'], f'tick{i}').touch()\n    "
                                      "time.sleep(0.1)"),
                       ("02_b.ipynb", "x = 1")):
        nb = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell('profile = "smoke"')
        p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell(code)]
        nb.metadata["kernelspec"] = {"name": "ctsgan", "display_name": "Python (ctsgan)", "language": "python"}
        nbformat.write(nb, nbs / name)
    script = ("import sys; from pathlib import Path; from ctsgan_lib import pipeline\n"
              "pipeline.NOTEBOOKS = (('01', '01_a.ipynb', 'a'), ('02', '02_b.ipynb', 'b'))\n"
              f"pipeline.reproduce('smoke', root=Path({str(tmp_path)!r}), nb_dir=Path({str(nbs)!r}), "
              "progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**ENV, "CTSGAN_ROOT": str(tmp_path)},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (tmp_path / "tick5").exists(), group=True)   # the runner and its kernel
    assert not (tmp_path / "tick59").exists(), "the kill should land mid-notebook"
    subprocess.run([sys.executable, "-c", script], env={**ENV, "CTSGAN_ROOT": str(tmp_path)}, check=True,
                   capture_output=True)
    data = json.loads((tmp_path / "runs" / "smoke" / "notebooks" / "run_manifest.json").read_text())
    assert [(n["notebook"], n["status"]) for n in data["notebooks"]] == [("01_a.ipynb", "ok"), ("02_b.ipynb", "ok")]
