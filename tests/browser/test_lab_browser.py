"""JupyterLab in a real browser: headless Debian Chromium driven by Playwright runs notebook 01 at the smoke profile.

The server is started by :func:`ctsgan_lib.lab.lab_command` (what ``make lab`` runs) on a free localhost port with a
token, with the kernel registered by :func:`ctsgan_lib.lab.register_kernel` into a temporary prefix, and
``CTSGAN_ROOT``, Jupyter's config, settings, workspaces and runtime folders all in a temporary directory. The
notebooks are copies, so JupyterLab's autosave never touches the checkout.

How errors are detected: JupyterLab 4 renders an error output with the same ``data-mime-type``
(``application/vnd.jupyter.stderr``) and classes as a stderr stream such as a tqdm progress bar, so the DOM cannot
tell them apart. The server runs with ``--LabApp.expose_app_in_browser=True`` and the test reads the notebook
*model* (``window.jupyterapp``): any output with ``output_type == "error"`` fails the test, as does any code cell
left unexecuted. The second test injects ``raise RuntimeError`` into a copy of notebook 01 and checks that this
detector reports it.

Screenshots go to ``runs/browser/`` (or ``$CTSGAN_BROWSER_ARTIFACTS``). ``CTSGAN_UPDATE_DOC_SCREENSHOTS=1`` also
copies them to ``docs/img/`` for the README. Run with ``make test-browser``; skipped when ``/usr/bin/chromium``
(``apt-get install chromium``) or the ``playwright`` package is missing. Never ``playwright install``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CTSGAN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# The notebook under test; another path can be given for development.
SOURCE = Path(os.environ.get("CTSGAN_BROWSER_NOTEBOOK", REPO / "notebooks" / "01_data_preparation.ipynb"))
NOTEBOOK = SOURCE.name
RUN_TIMEOUT_S = float(os.environ.get("CTSGAN_BROWSER_TIMEOUT", "600"))
ARTIFACTS = Path(os.environ.get("CTSGAN_BROWSER_ARTIFACTS", REPO / "runs" / "browser"))
INJECTED = "injected failure for the browser test"


def _skip_reason() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (install Debian's chromium: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ the server
@dataclass
class Lab:
    url: str
    token: str
    notebooks: Path
    root: Path
    log: Path
    proc: subprocess.Popen
    start_s: float

    def open_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"


def _inject_failure(src: Path, dst: Path) -> None:
    """Copy a notebook with a raising cell right after its parameters cell (or first code cell)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    tagged = [i for i in code if "parameters" in nb.cells[i].get("metadata", {}).get("tags", [])]
    at = (tagged or code or [len(nb.cells) - 1])[0] + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(f"raise RuntimeError({INJECTED!r})"))
    nbformat.write(nb, dst)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from ctsgan_lib.lab import lab_command, register_kernel

    source = SOURCE
    assert source.is_file(), f"{source} is missing"
    base = tmp_path_factory.mktemp("lab")
    notebooks = base / "notebooks"
    notebooks.mkdir()
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy2(nb, notebooks / nb.name)
    shutil.copy2(source, notebooks / NOTEBOOK)  # the notebook under test wins over a same-named copy
    _inject_failure(source, notebooks / ("broken_" + NOTEBOOK))
    register_kernel(base / "kernel")
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "get Jupyter news?" toast over the screenshots, no network fetch.
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))
    # The file browser lists what a user's notebooks/ holds: the broken copy opens by URL but is not listed, so the
    # screenshot that becomes docs/img/lab.png shows the project's notebooks, not test files (issue 17).
    (base / "config").mkdir()
    (base / "config" / "jupyter_server_config.json").write_text(json.dumps({"ContentsManager": {"hide_globs": [
        "__pycache__", "*.pyc", "*.pyo", ".DS_Store", "*~", "broken_*"]}}))
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "CTSGAN_VIEWER", "JPY_SESSION_NAME")}
    env.update(CTSGAN_ROOT=str(base / "root"), JUPYTER_PATH=str(base / "kernel" / "share" / "jupyter"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
               JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = lab_command(port=port, notebooks=notebooks, open_browser=False, token=token,
                      extra=["--LabApp.expose_app_in_browser=True"])
    log = base / "jupyterlab.log"
    with open(log, "w") as fh:
        # Own process group: teardown stops the server and every kernel it started, nothing else.
        proc = subprocess.Popen(cmd, env=env, cwd=notebooks, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    deadline = t0 + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"jupyter lab did not answer within 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield Lab(url, token, notebooks, base / "root", log, proc, round(time.monotonic() - t0, 1))
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


# ------------------------------------------------------------------------------------- running a notebook
_KERNEL_JS = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k ? [k.name, k.status] : null;
}"""
_STARTED_JS = """() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
  .some(e => e.textContent.trim() !== '[ ]:' && e.textContent.trim() !== '')"""
_DONE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w.sessionContext.session.kernel;
  const busy = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
    .some(e => e.textContent.includes('*'));
  return !busy && k.status === 'idle';
}"""
_MODEL_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.model.cells;
  const out = {errors: [], unexecuted: [], n_code: 0, kernel: w.sessionContext.session.kernel.name};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.n_code += 1;
    if (c.executionCount === null || c.executionCount === undefined) out.unexecuted.push(i);
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') out.errors.push({cell: i, ename: o.ename, evalue: o.evalue});
    }
  }
  return out;
}"""
# The ipympl canvas is drawn asynchronously once the front end asks for it: wait for a non-blank image.
_CANVAS_JS = """() => {
  const c = document.querySelector('.ctsgan-volume-viewer canvas');
  if (!c || c.width < 50 || c.height < 50) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size > 8 ? {width: c.width, height: c.height, colours: seen.size} : null;
}"""
# The crosshair colour (#ffd400) marks where the planes cross: find it in the first (axial) pane. The lines span
# the pane, so their contiguous runs through the crossing give the pane's bounds too.
_CROSSHAIR_JS = """() => {
  const c = document.querySelector('.ctsgan-volume-viewer canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const yellow = (x, y) => { const i = 4 * (y * c.width + x);
    return d[i] > 220 && d[i + 1] > 180 && d[i + 1] < 235 && d[i + 2] < 80; };
  const cols = new Map(), rows = new Map();
  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width / 3; x++) if (yellow(x, y)) {
    cols.set(x, (cols.get(x) || 0) + 1); rows.set(y, (rows.get(y) || 0) + 1);
  }
  if (!cols.size) return null;
  const best = m => [...m.entries()].sort((a, b) => b[1] - a[1])[0][0];
  const x = best(cols), y = best(rows);
  let x0 = x, x1 = x, y0 = y, y1 = y;
  while (x0 > 0 && yellow(x0 - 1, y)) x0--;
  while (x1 < c.width - 1 && yellow(x1 + 1, y)) x1++;
  while (y0 > 0 && yellow(x, y0 - 1)) y0--;
  while (y1 < c.height - 1 && yellow(x, y1 + 1)) y1++;
  const r = c.getBoundingClientRect();
  return {x, y, x0, x1, y0, y1, scale: r.width / c.width, left: r.left, top: r.top};
}"""
_READOUT = re.compile(r"\(z, y, x\) = \((\d+), (\d+), (\d+)\)")


@dataclass
class Report:
    notebook: str
    kernel: str = ""
    n_code: int = 0
    errors: list = field(default_factory=list)
    unexecuted: list = field(default_factory=list)
    widget_errors: list = field(default_factory=list)  # widgets the front end failed to render
    viewer: str = "none"           # "widget", "static" or "none"
    canvas: dict | None = None
    timings_s: dict = field(default_factory=dict)
    screenshots: list = field(default_factory=list)


def run_in_lab(browser, lab: Lab, name: str, shot: str | None = None) -> tuple[Report, object]:
    """Open ``name`` in JupyterLab, Run -> Run All Cells, wait until the kernel is idle, and report."""
    t0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    rep = Report(notebook=name, timings_s={"lab_server_start": lab.start_s})
    page.goto(lab.open_url(name))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    # The kernelspec names the project kernel, so no "select kernel" dialog may appear: it starts by itself.
    page.wait_for_function(f"() => {{ const s = ({_KERNEL_JS})(); return s && s[1] === 'idle'; }}", timeout=120_000)
    assert page.locator(".jp-Dialog").count() == 0, "JupyterLab asked for a kernel: the kernelspec is not 'ctsgan'"
    rep.kernel = page.evaluate(_KERNEL_JS)[0]
    rep.timings_s["open"] = round(time.monotonic() - t0, 1)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    page.wait_for_function(_STARTED_JS, timeout=60_000)
    page.wait_for_function(_DONE_JS, timeout=RUN_TIMEOUT_S * 1000, polling=500)
    rep.timings_s["run_all"] = round(time.monotonic() - t0 - rep.timings_s["open"], 1)
    model = page.evaluate(_MODEL_JS)
    rep.n_code, rep.errors, rep.unexecuted = model["n_code"], model["errors"], model["unexecuted"]
    # A widget whose front-end code is missing (e.g. ipympl's labextension) leaves no error in the model, only text
    # in the output area.
    rep.widget_errors = page.eval_on_selector_all(
        ".jp-OutputArea-output", "els => els.filter(e => e.querySelector('.jupyter-widgets-error-widget') || "
        "e.textContent.includes('Error displaying widget')).map(e => e.textContent.trim().slice(0, 200))")
    if page.locator(".ctsgan-volume-viewer").count():
        rep.viewer = "widget"
        try:
            page.wait_for_function(_CANVAS_JS, timeout=30_000)
            rep.canvas = page.evaluate(_CANVAS_JS)
        except Exception:  # reported as canvas=None, asserted by the caller
            rep.canvas = None
    elif page.locator(".jp-OutputArea-output img").count():
        rep.viewer = "static"
    if shot:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if rep.viewer == "widget":
            page.locator(".ctsgan-volume-viewer").first.scroll_into_view_if_needed()
        path = ARTIFACTS / f"{shot}_lab.png"
        page.screenshot(path=path)
        rep.screenshots.append(path)
    return rep, page


def problems(rep: Report) -> list[str]:
    """Everything that makes a notebook run in the browser a failure (empty when it passed)."""
    out = [f"cell {e['cell']} raised {e['ename']}: {e['evalue']}" for e in rep.errors]
    out += [f"widget failed to render: {t}" for t in rep.widget_errors]
    if rep.unexecuted:
        out.append(f"code cells {rep.unexecuted} did not run")
    if rep.kernel != "ctsgan":
        out.append(f"kernel is {rep.kernel!r}, not 'ctsgan'")
    return out


def _record(rep: Report) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    row = {k: (v if k != "screenshots" else [str(p) for p in v]) for k, v in rep.__dict__.items()}
    with open(ARTIFACTS / "timings.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}) + "\n")


def _to_docs(path: Path, name: str) -> None:
    """With CTSGAN_UPDATE_DOC_SCREENSHOTS=1, copy a screenshot into docs/img/ (notebook 01's lab view is lab.png)."""
    if name == "01_data_preparation_lab.png":
        name = "lab.png"
    if os.environ.get("CTSGAN_UPDATE_DOC_SCREENSHOTS") == "1":
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, REPO / "docs" / "img" / name)


# ----------------------------------------------------------------------------------------------- the tests
def test_notebook_runs_in_jupyterlab_and_viewer_is_live(lab, browser):
    t0 = time.monotonic()
    rep, page = run_in_lab(browser, lab, NOTEBOOK, shot=SOURCE.stem)
    try:
        assert not problems(rep), "\n".join(problems(rep))
        assert "VolumeViewer(" in SOURCE.read_text(), f"{NOTEBOOK} does not call ctsgan_lib.viz.VolumeViewer"
        assert rep.viewer == "widget", (f"the VolumeViewer did not render as a live widget (found: {rep.viewer}); "
                                        f"server log {lab.log}")
        assert rep.canvas, "the viewer's ipympl canvas stayed blank"
        viewer = page.locator(".ctsgan-volume-viewer").first
        viewer_png = ARTIFACTS / f"{SOURCE.stem}_viewer.png"
        viewer.screenshot(path=viewer_png)
        rep.screenshots.append(viewer_png)

        # Linked crosshairs through the real front end: click the axial pane away from the crosshair (towards the
        # pane's larger side); the kernel moves the coronal and sagittal planes there and the readout follows.
        readout = viewer.locator("code").first
        before = tuple(map(int, _READOUT.search(readout.inner_text()).groups()))
        cross = page.evaluate(_CROSSHAIR_JS)
        assert cross and cross["x1"] - cross["x0"] > 20 and cross["y1"] - cross["y0"] > 20, \
            f"no crosshair found in the axial pane: {cross}"
        go_right = cross["x"] - cross["x0"] < cross["x1"] - cross["x"]
        go_down = cross["y"] - cross["y0"] < cross["y1"] - cross["y"]
        tx = cross["x0"] + (0.8 if go_right else 0.2) * (cross["x1"] - cross["x0"])
        ty = cross["y0"] + (0.8 if go_down else 0.2) * (cross["y1"] - cross["y0"])
        page.mouse.click(cross["left"] + tx * cross["scale"], cross["top"] + ty * cross["scale"])
        page.wait_for_function("(b) => { const e = document.querySelector('.ctsgan-volume-viewer code');"
                               " return e && !e.textContent.includes(b); }",
                               arg=f"({before[0]}, {before[1]}, {before[2]})", timeout=30_000)
        after = tuple(map(int, _READOUT.search(readout.inner_text()).groups()))
        assert after[0] == before[0], "an axial click must keep z"
        # axial pane: image right = higher x, image down = higher y (row 0, the most anterior, on top)
        assert (after[2] > before[2]) == go_right and after[2] != before[2], (before, after, cross)
        assert (after[1] > before[1]) == go_down and after[1] != before[1], (before, after, cross)
        # A preset button drives the HU window range slider through the kernel.
        viewer.locator("button", has_text="bone").click()
        page.wait_for_function("() => Array.from(document.querySelectorAll('.ctsgan-volume-viewer .widget-readout'))"
                               ".some(e => e.textContent.includes('1050'))", timeout=30_000)
        rep.timings_s["test_total"] = round(time.monotonic() - t0, 1)
    finally:
        _record(rep)
        page.close()
    for p in rep.screenshots:
        _to_docs(p, p.name)


def test_detector_fails_when_a_cell_raises(lab, browser):
    t0 = time.monotonic()
    rep, page = run_in_lab(browser, lab, "broken_" + NOTEBOOK, shot="broken_" + SOURCE.stem)
    page.close()
    rep.timings_s["test_total"] = round(time.monotonic() - t0, 1)
    _record(rep)
    found = problems(rep)
    assert any("RuntimeError" in p and INJECTED in p for p in found), found
    assert rep.unexecuted, "Run All should stop at the raising cell, leaving later cells unexecuted"
