"""Property-based fuzzing (Hypothesis) of the manifest and config readers (issue 24).

Random rows, paths, JSON cells, types and byte encodings must never produce a traceback, a write outside the
folder, or a deleted file the stage did not create. ``make test`` runs a few dozen examples per property;
``make test-slow`` runs the same properties with many more (``@pytest.mark.slow`` twins).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from ctsgan_lib.cli import main
from ctsgan_lib.config import ConfigError, load_profile, parse_overrides
from ctsgan_lib.data.cohort import MANIFEST_COLUMNS, Cohort, CohortWriter
from ctsgan_lib.errors import CTSGANError
from ctsgan_lib.utils.atomic import file_sha256

# Hypothesis keeps caches in ./.hypothesis by default; tests never write into the checkout (Makefile: CTSGAN_ROOT)
set_hypothesis_home_dir(Path(os.environ.get("CTSGAN_ROOT") or tempfile.gettempdir()) / ".hypothesis")

FAST = 25
SLOW = 400
TINY = ["--profile", "smoke", "--no-progress", "--set", "data.n_patients=2", "--set", "data.phantom_size=32",
        "--set", "data.size=16", "--set", "data.workers=1"]


def _settings(n: int):
    # no example database: nothing is written into the checkout
    return settings(max_examples=n, deadline=None, database=None, derandomize=n == FAST,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------- strategies
_ids = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True), st.text(max_size=12),
                 st.sampled_from(["phantom-0000", "link", "keep", "../x", ""]))
_paths = st.one_of(
    st.sampled_from(["/tmp/victim", "../victim", "../../victim", "volumes/../../victim", "volumes/link.nii.gz",
                     "volumes/user_notes.txt", "keep.nii.gz", "volumes/keep.nii.gz", "C:\\victim", "volumes/",
                     "volumes/phantom-0000.nii.gz", ""]),
    st.builds(lambda a, b: f"volumes/{a}{b}", st.text(max_size=10), st.sampled_from([".nii.gz", ".nii", "_label.nii.gz"])),
    st.text(max_size=30))
_json_cell = st.one_of(st.sampled_from(["[]", "[1, 1, 1]", "[32, 32, 32]", "[0, 1, 1]", "[-1, 2, 2]", "5", "null",
                                        "[NaN, 1, 1]", "{}", "[{}]", "[1]", "[[1]]", "\"x\"", "[1e999, 1, 1]",
                                        "[true, 1, 1]", "[" * 50]),
                       st.text(max_size=20))
_row = st.fixed_dictionaries({
    "id": _ids, "source": st.text(max_size=8), "domain": st.text(max_size=8),
    "split": st.sampled_from(["train", "val", "test", "", "x"]), "has_nodule": st.sampled_from(["0", "1", "2", "", "x", "1.0"]),
    "nodules": _json_cell, "spacing_mm": _json_cell, "shape": _json_cell, "path": _paths, "label_path": _paths,
    "checksum": st.text(alphabet="0123456789abcdef", max_size=64),
})
#: rows a reader accepts: a rerun drops them and deletes their files (the writer's own naming, inside volumes/)
_valid_row = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True).map(lambda i: {
    "id": f"zz-{i}", "source": "phantom", "domain": "nlst-like", "split": "train", "has_nodule": "0", "nodules": "[]",
    "spacing_mm": "[1, 1, 1]", "shape": "[16, 16, 16]", "path": f"volumes/zz-{i}.nii.gz",
    "label_path": f"volumes/zz-{i}_label.nii.gz", "checksum": "0" * 64})
_encodings = st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"])


def _manifest_bytes(rows: list[dict], drop: list[str], encoding: str) -> bytes:
    cols = [c for c in MANIFEST_COLUMNS if c not in drop]
    text = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)[cols].to_csv(index=False)
    return text.encode(encoding, errors="replace")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A real 2-patient cohort written by `ctsgan prepare` (copied for every example)."""
    out = tmp_path_factory.mktemp("fuzz") / "cohort"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["prepare", *TINY, "--out", str(out)]) == 0
    return out


def _arena(built: Path, base: Path) -> tuple[Path, dict[Path, str]]:
    """A fresh copy of the cohort plus sentinel files the stage did not create, with their checksums."""
    if base.exists():
        shutil.rmtree(base)
    root = base / "cohort"
    shutil.copytree(built, root, symlinks=True)
    (base / "victim").write_text("outside the cohort")
    (root / "keep.nii.gz").write_bytes(b"user file in the cohort folder")
    (root / "volumes" / "user_notes.txt").write_text("user notes")
    (root / "volumes" / "link.nii.gz").symlink_to(base / "victim")
    sentinels = [base / "victim", root / "keep.nii.gz", root / "volumes" / "user_notes.txt"]
    return root, {p: file_sha256(p) for p in sentinels}


def _outside(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*") if not str(p.relative_to(base)).startswith("cohort")}


def _check(base: Path, root: Path, sentinels: dict[Path, str], outside_before: set[str]) -> None:
    for p, sha in sentinels.items():
        assert p.is_file() and file_sha256(p) == sha, f"{p} was deleted or changed"
    assert (root / "volumes" / "link.nii.gz").is_symlink(), "a symlink the stage did not create was deleted"
    assert _outside(base) == outside_before, "something was written outside the cohort"


# ---------------------------------------------------------------------------------------------- manifest reader
def _manifest_property(built: Path, base: Path, rows, drop, encoding, capsys) -> None:
    root, sentinels = _arena(built, base)
    real = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False).to_dict(orient="records")
    for r in rows:  # the files of well-formed rows exist, as if an earlier build had written them
        if str(r["path"]).startswith("volumes/zz-"):
            (root / r["path"]).write_bytes(b"made by an earlier build")
    (root / "manifest.csv").write_bytes(_manifest_bytes(real + rows, drop, encoding))
    outside_before = _outside(base)
    # read side: every failure is a one-line CTSGANError
    try:
        c = Cohort(root)
        for rid in c.ids():
            with contextlib.suppress(CTSGANError):
                c.verify(rid)
                c.read(rid)
                c.read_label(rid)
    except CTSGANError as exc:
        assert "\n" not in str(exc)
    # write side, through the CLI: the rerun drops the rows it does not want, deleting only its own files
    capsys.readouterr()
    rc = main(["prepare", *TINY, "--out", str(root)])
    err = capsys.readouterr().err.strip()
    assert rc in (0, 2), err
    event(f"prepare rc {rc}")
    if rc == 0:  # the rows it did not want are gone, with their files; its own rows verify
        c = Cohort(root)
        assert not [r for r in c.ids() if r.startswith("zz-")] and not list(root.glob("volumes/zz-*"))
        assert all(c.verify(r) for r in c.ids())
    if rc == 2:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    # library write side on whatever manifest is there now: remove everything, prune
    with contextlib.suppress(CTSGANError):
        w = CohortWriter(root, compress=True)
        for rid in w.ids():
            w.remove(rid)
        w.prune()
        w.flush()
    _check(base, root, sentinels, outside_before)


@_settings(FAST)
@given(rows=st.one_of(st.lists(st.one_of(_row, _valid_row), max_size=4), st.lists(_valid_row, min_size=1, max_size=3)), drop=st.lists(st.sampled_from(MANIFEST_COLUMNS), max_size=1),
       encoding=_encodings)
def test_fuzz_manifest(built, tmp_path, capsys, rows, drop, encoding):
    _manifest_property(built, tmp_path / "arena", rows, drop, encoding, capsys)


@pytest.mark.slow
@_settings(SLOW)
@given(rows=st.one_of(st.lists(st.one_of(_row, _valid_row), max_size=6), st.lists(_valid_row, min_size=1, max_size=4)), drop=st.lists(st.sampled_from(MANIFEST_COLUMNS), max_size=2),
       encoding=_encodings)
def test_fuzz_manifest_long(built, tmp_path, capsys, rows, drop, encoding):
    _manifest_property(built, tmp_path / "arena", rows, drop, encoding, capsys)


@_settings(FAST)
@given(blob=st.binary(max_size=400))
def test_fuzz_manifest_bytes(built, tmp_path, blob):
    root, sentinels = _arena(built, tmp_path / "arena")
    (root / "manifest.csv").write_bytes(blob)
    with contextlib.suppress(CTSGANError):
        Cohort(root)
    _check(tmp_path / "arena", root, sentinels, _outside(tmp_path / "arena"))


# ---------------------------------------------------------------------------------------------- config reader
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["/abs/path", "../up", "nan", "inf", "-1", "[0.5, 0.5]"]))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
_keys = st.sampled_from(["seed", "profile", "data.size", "data.split_fractions", "data.lidc_fraction",
                         "data.n_patients", "data.phantom_size", "data.phantom_spacing_mm", "ctsgan.batch",
                         "ctsgan.lr_g", "ctsgan.iterations", "ctsgan.loss", "ctsgan.betas", "gan3d.ngf",
                         "classifier.sizes", "classifier.regimes", "fidelity.views", "fidelity.weights_sha256",
                         "nodules.diameters_vox", "generate.inject_fraction", "bench.max_gib", "data", "nope.x", ""])


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {}) if isinstance(cur.get(p, {}), dict) else {}
        cur[parts[-1]] = v
    return out


def _config_property(tmp_path: Path, flat: dict, overrides: list[str], encoding: str) -> None:
    path = tmp_path / "profile.yaml"
    try:
        text = yaml.safe_dump(_nested(flat), allow_unicode=True)
    except yaml.YAMLError:
        return
    path.write_bytes(text.encode(encoding, errors="replace"))
    for attempt in (lambda: load_profile("smoke", path=path),
                    lambda: load_profile("smoke", **parse_overrides(overrides))):
        try:
            cfg = attempt()
        except ConfigError as exc:
            assert "\n" not in str(exc), str(exc)
            continue
        # whatever loads is inside the documented ranges and names folders under the root
        assert cfg.data_dir.resolve().is_relative_to(cfg.root.resolve())
        assert cfg.runs_dir.resolve().is_relative_to(cfg.root.resolve())
        assert abs(sum(cfg.data.split_fractions) - 1) < 1e-6 and cfg.ctsgan.batch >= 1 and cfg.seed >= 0


_override = st.builds(lambda k, v: f"{k}={v}", _keys, st.one_of(st.text(max_size=12), _scalar.map(str)))


@_settings(FAST)
@given(flat=st.dictionaries(_keys, _value, max_size=4), overrides=st.lists(_override, max_size=3),
       encoding=_encodings)
def test_fuzz_config(tmp_path, flat, overrides, encoding):
    _config_property(tmp_path, flat, overrides, encoding)


@pytest.mark.slow
@_settings(SLOW * 5)
@given(flat=st.dictionaries(_keys, _value, max_size=6), overrides=st.lists(_override, max_size=5),
       encoding=_encodings)
def test_fuzz_config_long(tmp_path, flat, overrides, encoding):
    _config_property(tmp_path, flat, overrides, encoding)


@_settings(FAST)
@given(blob=st.binary(max_size=300))
def test_fuzz_config_bytes(tmp_path, blob):
    path = tmp_path / "profile.yaml"
    path.write_bytes(blob)
    with contextlib.suppress(ConfigError):
        load_profile("smoke", path=path)
