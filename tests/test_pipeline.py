"""The papermill runner: executed copies, run manifest, and a clear failure naming the notebook."""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from ctsgan_lib import pipeline
from ctsgan_lib.config import ConfigError, load_profile
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.reporting import figures


def _notebook(path, code: str):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "ctsgan", "display_name": "Python (ctsgan)", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def two_notebooks(tmp_root, monkeypatch):
    (tmp_root / "notebooks").mkdir()
    monkeypatch.setattr(pipeline, "NOTEBOOKS", (("01", "01_a.ipynb", "a"), ("02", "02_b.ipynb", "b")))
    _notebook(tmp_root / "notebooks" / "01_a.ipynb",
              "import os, pathlib\n"
              "pathlib.Path(os.environ['CTSGAN_ROOT'], f'made_by_01_{profile}.txt').write_text(os.getcwd())")
    return tmp_root


def test_reproduce_runs_in_order_and_writes_manifest(two_notebooks, capfd):
    root = two_notebooks
    _notebook(root / "notebooks" / "02_b.ipynb", "assert profile == 'demo'\n"
              "import ctsgan_lib.config  # as every notebook does first\n"
              "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='bar'):\n    pass")
    manifest = pipeline.reproduce("demo", root=root, progress=False, nb_dir=root / "notebooks")
    data = json.loads(manifest.read_text())
    # shared outputs carry no machine paths (issue 17)
    assert [n["executed"] for n in data["notebooks"]] == ["runs/demo/notebooks/01_a.ipynb",
                                                          "runs/demo/notebooks/02_b.ipynb"]
    assert str(root) not in manifest.read_text() and not data["command"].startswith("/")
    # no kernel warning in the run's output; the executed notebook keeps the bar's final state as text, not a widget
    # that static viewers show at 0%
    assert "without encryption" not in capfd.readouterr().err
    outputs = nbformat.read(root / "runs" / "demo" / "notebooks" / "02_b.ipynb", as_version=4).cells[-1].outputs
    assert [o.output_type for o in outputs] == ["stream"] and "\r" not in outputs[0].text
    assert "bar: 100%" in outputs[0].text and "3/3" in outputs[0].text
    assert [n["status"] for n in data["notebooks"]] == ["ok", "ok"]
    assert data["profile"] == "demo" and "torch" in data["packages"] and data["hardware"]["cpu_cores"]
    assert all(n["wall_s"] > 0 for n in data["notebooks"])
    assert (root / "runs" / "demo" / "notebooks" / "02_b.ipynb").is_file()
    # papermill ran with cwd = notebooks/ (DESIGN.md: kernel and nbval agree on it)
    assert (root / "made_by_01_demo.txt").read_text() == str(root / "notebooks")


def test_reproduce_names_the_failing_notebook(two_notebooks):
    root = two_notebooks
    _notebook(root / "notebooks" / "02_b.ipynb", "raise RuntimeError('boom in 02')")
    with pytest.raises(CTSGANError, match=r"02_b\.ipynb failed .*boom in 02"):
        pipeline.reproduce("smoke", root=root, progress=False, nb_dir=root / "notebooks")
    data = json.loads((root / "runs" / "smoke" / "notebooks" / "run_manifest.json").read_text())
    assert [n["status"] for n in data["notebooks"]] == ["ok", "failed"]
    # --only skips the failing one; the manifest keeps the record of notebooks not rerun
    pipeline.reproduce("smoke", only=["01"], root=root, progress=False, nb_dir=root / "notebooks")
    data = json.loads((root / "runs" / "smoke" / "notebooks" / "run_manifest.json").read_text())
    assert [(n["notebook"], n["status"]) for n in data["notebooks"]] == [("01_a.ipynb", "ok"), ("02_b.ipynb", "failed")]


def test_figures_manifest_lists_every_stage_with_its_commit_and_the_total(two_notebooks, monkeypatch):
    from ctsgan_lib.reporting import figures
    from ctsgan_lib.config import load_profile

    root = two_notebooks
    _notebook(root / "notebooks" / "02_b.ipynb", "x = 1")
    path = pipeline.reproduce("demo", root=root, progress=False, nb_dir=root / "notebooks")
    stages = json.loads(path.read_text())["notebooks"]
    monkeypatch.setattr(figures, "_data_source", lambda cfg: "phantom cohort")
    text = figures.render_manifest(load_profile("demo"), {})
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert [r.split("|")[1].strip() for r in rows] == ["01_a.ipynb", "02_b.ipynb"]
    assert all(stages[0]["commit"][:12] in r for r in rows)
    total = sum(s["wall_s"] for s in stages)
    assert f"total, the paper's study** | | **{total:.0f}**" in text and "profile | demo (volumes 64³, 400 patients)" in text


def test_figures_manifest_keeps_notebook_09_out_of_the_study_total_and_lists_its_files(two_notebooks, monkeypatch):
    from ctsgan_lib.reporting import figures
    from ctsgan_lib.config import load_profile

    root = two_notebooks
    monkeypatch.setattr(pipeline, "NOTEBOOKS", pipeline.NOTEBOOKS + (("09", "09_c.ipynb", "c"),))
    _notebook(root / "notebooks" / "02_b.ipynb", "x = 1")
    _notebook(root / "notebooks" / "09_c.ipynb", "import time\ntime.sleep(0.2)")
    stages = json.loads(pipeline.reproduce("demo", root=root, progress=False,
                                           nb_dir=root / "notebooks").read_text())["notebooks"]
    cfg = load_profile("demo")
    out = figures.figures_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figC1_conditional_views.png").write_bytes(b"png")
    monkeypatch.setattr(figures, "_data_source", lambda cfg: "phantom cohort")
    text = figures.render_manifest(cfg, {})
    study = sum(s["wall_s"] for s in stages if not s["notebook"].startswith("09"))
    nine = [s["wall_s"] for s in stages if s["notebook"].startswith("09")][0]
    assert f"| **total, the paper's study** | | **{study:.0f}**" in text
    assert f"| **09_c.ipynb: beyond the paper, its own budget** | | **{nine:.0f}**" in text
    assert "| written by notebook 09 | [figC1_conditional_views.png](figC1_conditional_views.png) | – |" in text


def test_pretrained_and_set_reach_the_notebooks_and_the_manifests(two_notebooks, monkeypatch):
    root = two_notebooks
    _notebook(root / "notebooks" / "01_a.ipynb", "from ctsgan_lib.config import load_profile\n"
              "assert load_profile(profile).ctsgan.iterations == 7\nassert 'pretrained' not in globals()")
    _notebook(root / "notebooks" / "02_b.ipynb", "assert pretrained is True")   # 02 and 03 take `pretrained`
    path = pipeline.reproduce("smoke", root=root, progress=False, nb_dir=root / "notebooks", pretrained=True,
                              overrides={"ctsgan.iterations": "7"})
    data = json.loads(path.read_text())
    assert data["overrides"] == {"ctsgan.iterations": "7"} and data["pretrained"] is True
    assert [n.get("pretrained") for n in data["notebooks"]] == [None, True]
    assert "CTSGAN_OVERRIDES" not in os.environ   # the runner's own process is left as it was
    monkeypatch.setattr(figures, "_data_source", lambda cfg: "phantom cohort")
    text = figures.render_manifest(load_profile("smoke"), {})
    assert "| models | shipped pretrained/smoke/ (notebooks 02 not trained) |" in text
    assert "| overrides (`--set`) | ctsgan.iterations=7 |" in text
    with pytest.raises(ConfigError, match="unknown key"):
        pipeline.reproduce("smoke", root=root, progress=False, nb_dir=root / "notebooks", overrides={"ctsgan.x": "1"})


def test_overrides_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv("CTSGAN_OVERRIDES", '{"gan3d.iterations": 9}')
    assert load_profile("smoke").gan3d.iterations == 9
    assert load_profile("smoke", **{"gan3d.iterations": 4}).gan3d.iterations == 4   # explicit overrides win
    monkeypatch.setenv("CTSGAN_OVERRIDES", "gan3d.iterations=9")
    with pytest.raises(ConfigError, match="CTSGAN_OVERRIDES: not a JSON object"):
        load_profile("smoke")
