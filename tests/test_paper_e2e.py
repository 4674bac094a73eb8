"""Every stage of the ``paper`` profile at 224³ on a handful of phantom patients (issue 22, item 6): each stage is a
separate ``ctsgan`` process that must read what the previous stages wrote. Slow (about 20 min on 2 CPU cores, and
about 4 GB of disk under the temporary folder): ``make test-slow`` only. Same stages: ``benchmarks/paper_e2e.py``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("paper_e2e", Path(__file__).resolve().parents[1] / "benchmarks"
                                               / "paper_e2e.py")
paper_e2e = importlib.util.module_from_spec(_SPEC)
sys.modules["paper_e2e"] = paper_e2e  # its dataclasses look their module up there
_SPEC.loader.exec_module(paper_e2e)

pytestmark = pytest.mark.slow


def test_a_stage_without_its_inputs_stops_the_run(tmp_path):
    """The check can fail: debias in an empty root has no cohort or nodule GANs to read, and nothing after it runs."""
    stages = [s for s in paper_e2e.paper_stages() if s.name in ("debias", "train_ctsgan")]
    recs = paper_e2e.run_all(tmp_path, stages, tmp_path / "log.txt", timeout_s=300)
    assert [r["stage"] for r in recs] == ["debias"]
    assert recs[0]["rc"] == 2 and not recs[0]["ok"]
    assert recs[0]["missing_outputs"]


def test_every_paper_stage_reads_what_the_previous_wrote(tmp_path):
    weights = paper_e2e.inception_weights(tmp_path)
    stages = paper_e2e.paper_stages(n_patients=24, n_volumes=4, weights=weights, device="cpu")
    recs = paper_e2e.run_all(tmp_path, stages, tmp_path / "log.txt", timeout_s=1800)
    log = (tmp_path / "log.txt").read_text()
    assert [r["stage"] for r in recs] == [s.name for s in stages], log[-3000:]
    for r in recs:
        assert r["ok"], (r, log[-3000:])
        assert r["peak_rss_mib"] > 0 and r["peak_tree_rss_mib"] > 0 and r["wall_s"] > 0
    by = {r["stage"]: r for r in recs}
    assert by["prepare"]["disk_added_mib"] > 0 and by["generate"]["disk_added_mib"] > 0
    # 224³ volumes: the cohort holds 24 of them, 21.4 MiB each as int16, about 12.5 MiB gzipped (data.compress: the
    # phantoms shrink 1.7×); far less than a third of the raw size would mean volumes are missing or empty
    assert by["prepare"]["disk_data_mib"] >= 24 * 224 ** 3 * 2 / 2 ** 20 / 3
