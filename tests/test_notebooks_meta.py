"""Every notebook opens on the project kernel, is committed without outputs and has a smoke-profile parameters cell."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from ctsgan_lib.pipeline import NOTEBOOKS

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PRESENT = sorted(NB_DIR.glob("*.ipynb"))
KERNELSPEC = {"name": "ctsgan", "display_name": "Python (ctsgan)", "language": "python"}
USES_VIEWER = ("01_data_preparation.ipynb", "03_ctsgan_training.ipynb", "04_synthetic_cohort.ipynb")


def test_every_pipeline_notebook_exists():
    missing = [name for _, name, _ in NOTEBOOKS if not (NB_DIR / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.mark.parametrize("path", PRESENT, ids=[p.name for p in PRESENT])
def test_notebook_metadata_outputs_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    spec = nb.metadata.get("kernelspec", {})
    assert {k: spec.get(k) for k in KERNELSPEC} == KERNELSPEC, f"{path.name}: kernelspec {spec}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts (strip them)"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(params)}"
    assigned = {t.id: n.value for n in ast.parse(params[0].source).body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    assert isinstance(assigned.get("profile"), ast.Constant) and assigned["profile"].value == "smoke", \
        f"{path.name}: the parameters cell must default to profile = 'smoke'"
    # papermill parses the cell line by line to inject parameters and to list them (`papermill --help-notebook`); a
    # line it cannot parse prints "Unable to parse line ..." on every run (issue 17: a '=' inside a comment)
    from papermill.translators import PythonTranslator

    parsed = {p.name for p in PythonTranslator.inspect(params[0])}
    assert parsed == set(assigned), f"{path.name}: papermill cannot parse {sorted(set(assigned) - parsed)}"


@pytest.mark.parametrize("name", USES_VIEWER)
def test_volume_notebooks_use_the_viewer(name):
    path = NB_DIR / name
    if not path.is_file():
        pytest.fail(f"{name} is missing")
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "VolumeViewer(" in source, f"{name} should show its volumes with ctsgan_lib.viz.VolumeViewer"
