"""Project-level checks: packaging pins, config profiles, atomic files, checkpoints, the pipeline runner."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctsgan_lib.config import ConfigError, load_profile, parse_overrides
from ctsgan_lib.data.intensity import hu_to_model, hu_to_uint8, hu_to_unit, model_to_hu
from ctsgan_lib.errors import CheckpointError, CTSGANError, MissingInputError
from ctsgan_lib.pipeline import NOTEBOOKS, require_inputs, select_notebooks
from ctsgan_lib.utils.checkpoint import load_checkpoint, load_state_strict, rng_state, save_checkpoint, set_rng_state
from ctsgan_lib.utils.atomic import atomic_path, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _req_name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {_req_name(s): s.replace(" ", "") for s in py["project"]["dependencies"]}
    wanted.update({_req_name(s): s.replace(" ", "") for s in py["project"]["optional-dependencies"]["dev"]})
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    got = {_req_name(s): s.replace(" ", "") for s in pip_list if not s.startswith("-e")}
    assert got == wanted, f"environment.yml and pyproject.toml disagree: {set(got.items()) ^ set(wanted.items())}"
    assert "python=3.11" in env["dependencies"]


@pytest.mark.parametrize("name,size,n", [("smoke", 32, 24), ("demo", 64, 400), ("study", 64, 1000),
                                         ("paper", 224, 1200)])
def test_profiles_load_with_documented_sizes(name, size, n):
    cfg = load_profile(name)
    assert cfg.profile == name and cfg.data.size == size and cfg.data.n_patients == n


def test_study_profile_runs_the_full_grid_with_more_training_than_demo():
    study, demo = load_profile("study"), load_profile("demo")
    c = study.classifier
    assert (len(c.sizes), len(c.seeds), len(c.regimes)) == (6, 3, 3)
    for sec in ("ctsgan", "gan3d", "nodules"):   # several times the demo's training volumes seen
        s, d = getattr(study, sec), getattr(demo, sec)
        assert s.iterations * s.batch >= 3 * d.iterations * d.batch, sec


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = load_profile("smoke", **parse_overrides(["ctsgan.iterations=7", "data.compress=false",
                                                   "classifier.sizes=[4, 6]"]))
    assert cfg.ctsgan.iterations == 7 and cfg.data.compress is False and cfg.classifier.sizes == [4.0, 6.0]
    with pytest.raises(ConfigError, match="unknown key 'iteratons'"):
        load_profile("smoke", **{"ctsgan.iteratons": 3})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_profile("smoke", **{"ctsgan.iterations": "many"})
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("huge")
    with pytest.raises(ConfigError, match="slab_len"):
        load_profile("smoke", **{"ctsgan.slab_len": 64})


def test_config_paths_follow_ctsgan_root(tmp_root):
    cfg = load_profile("smoke")
    assert cfg.data_dir == tmp_root / "data" / "smoke"
    assert cfg.runs_dir == tmp_root / "runs" / "smoke"
    json.dumps(cfg.to_dict())  # plain, serialisable


def test_hu_conversion_round_trip():
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0], dtype=np.float32)
    x = hu_to_model(hu)
    np.testing.assert_allclose(x, [-1, -1, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(model_to_hu(x), [-1000, -1000, -300, 400, 400], atol=1e-3)
    t = torch.tensor(hu)
    np.testing.assert_allclose(hu_to_model(t).numpy(), x, atol=1e-6)
    np.testing.assert_allclose(hu_to_unit(hu), (x + 1) / 2, atol=1e-6)
    assert hu_to_uint8(hu).tolist() == [0, 0, 128, 255, 255]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "vol.nii.gz"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


def test_checkpoint_round_trip_restores_rng_and_refuses_bad_files(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    np.random.seed(5)
    ck = save_checkpoint(tmp_path / "ckpt_000001.pt", kind="toy", step=1, config={"a": 1}, models={"net": net},
                         optimizers={"net": opt})
    expected = (torch.rand(3), np.random.rand(3))
    loaded = load_checkpoint(ck, kind="toy")
    set_rng_state(loaded["rng"])
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected[0].numpy())
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    net2 = torch.nn.Linear(3, 2)
    load_state_strict(net2, loaded["models"]["net"], "toy")
    assert torch.equal(net2.weight, net.weight)
    with pytest.raises(CheckpointError, match="expected 'ctsgan'"):
        load_checkpoint(ck, kind="ctsgan")
    with pytest.raises(CheckpointError, match="does not match"):
        load_state_strict(torch.nn.Linear(4, 2), loaded["models"]["net"], str(ck))
    # A pickle that carries code must be refused, and the code must not run.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"kind": "toy", "models": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "trunc.pt").write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_rng_state_is_weights_only_loadable(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    torch.load(tmp_path / "rng.pt", weights_only=True)


def test_require_inputs_names_the_maker(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="run 01_data_preparation.ipynb"):
        require_inputs(tmp_path / "empty", made_by="01_data_preparation.ipynb")
    (tmp_path / "ok.txt").write_text("x")
    require_inputs(tmp_path / "ok.txt", made_by="nobody")


def test_notebook_selection():
    assert [n for n, _, _ in select_notebooks(start="6")] == ["06", "07", "08", "09"]   # 09 runs after 06
    assert [n for n, _, _ in select_notebooks(only=["3", "01"])] == ["01", "03"]
    with pytest.raises(CTSGANError, match="no such notebook"):
        select_notebooks(only=["10"])
    assert len(NOTEBOOKS) == 9


def test_cli_help_and_one_line_errors():
    out = subprocess.run([sys.executable, "-m", "ctsgan_lib.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "reproduce" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ctsgan_lib.cli", "reproduce", "--profile", "huge"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "unknown profile 'huge'" in bad.stderr


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_the_umask_implies(tmp_path, umask):
    """Issue 17: mkstemp's 0600 made cohorts, checkpoints and figures unreadable to colleagues on a shared server."""
    import nibabel as nib

    from ctsgan_lib.data.io import write_dicom_series, write_nifti
    from ctsgan_lib.utils.atomic import atomic_write_bytes

    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")                                         # what open() gives, the reference
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write_bytes(tmp_path / "b.bin", b"\0")
        save_checkpoint(tmp_path / "ckpt.pt", models={"net": torch.nn.Linear(2, 1)}, optimizers={}, step=1,
                        config={}, kind="test")
        write_nifti(tmp_path / "v.nii.gz", np.zeros((2, 3, 4)), (1.0, 1.0, 1.0))
        series = write_dicom_series(tmp_path / "dcm", np.zeros((2, 4, 4)), (1.0, 1.0, 1.0), series_description="m")
        ref = stat.S_IMODE(plain.stat().st_mode)
        assert ref == 0o666 & ~umask
        for name in ("a.json", "b.bin", "ckpt.pt", "v.nii.gz"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == ref, name
        assert stat.S_IMODE(series.stat().st_mode) == 0o777 & ~umask
        assert all(stat.S_IMODE(f.stat().st_mode) == ref for f in series.iterdir())
        assert nib.load(tmp_path / "v.nii.gz").shape == (4, 3, 2)     # still a complete, readable file
    finally:
        os.umask(old)


def test_portable_settings_take_effect():
    """`make test-portable` relies on numpy and torch honouring these variables; check that they do here."""
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__

    off = [k for k in __cpu_dispatch__ if __cpu_features__.get(k) and k not in __cpu_baseline__]
    code = ("import json, torch; from numpy._core._multiarray_umath import __cpu_features__ as f; "
            f"print(json.dumps([[k for k in {off!r} if f[k]], torch.backends.cpu.get_cpu_capability()]))")
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(off), "ATEN_CPU_CAPABILITY": "default"}
    still_on, capability = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                                     capture_output=True, text=True).stdout)
    assert still_on == [] and capability == "DEFAULT"
