"""The notebooks' widgets in a real browser (issue #14, item 7).

A JupyterLab server (with a live kernel) serves a small notebook that runs the slice browser cell of the setup
notebook and the ablation toggle cell of the ablation notebook (read from the notebooks themselves) on a few
bundled slices; headless Chromium opens it, runs every cell from the Run menu, moves the slider with the keyboard
and clicks a toggle button, and checks that the picture the page shows changes (the SHA-256 of the PNG behind the
widget's ``<img>``).

Needs Chromium from the system (Debian: ``apt-get install chromium``; ``.ci/run`` installs it; another binary:
``$CRLEARN_CHROMIUM``) and the ``playwright`` package (the test extra); Playwright's own browser download
(``playwright install``) is not used. Skipped, with the reason, without them. About 25 s on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE

CHROMIUM = os.environ.get("CRLEARN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it): browser widget tests "
                "skipped", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
pytest.importorskip("jupyterlab", reason="jupyterlab not installed (pip install -e '.[test]')")

START_S = 60  # the server answering
RUN_S = 120  # Run All: kernel start, importing torch and crlearn, reading slices, drawing both widgets
STEP_S = 30  # one redraw after a key press or click
ACTIVE = re.compile(r"\bmod-active\b")  # the class of the pressed toggle button

# JupyterLab user settings: start the notebook's kernel without asking, keep every cell in the DOM, no news or
# update pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autoStartDefaultKernel": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                          "checkForUpdates": False},
}


def notebook_cell(topic: str, needle: str) -> str:
    """The source of the first code cell that contains ``needle`` in the notebook ``notebooks/NN_<topic>.ipynb``
    (whatever its number)."""
    paths = sorted((ROOT / "notebooks").glob(f"[0-9]*_{topic}.ipynb"))
    assert len(paths) == 1, f"expected one notebooks/NN_{topic}.ipynb, found {[p.name for p in paths]}"
    cells = json.loads(paths[0].read_text())["cells"]
    found = [c for c in cells if c["cell_type"] == "code" and needle in "".join(c["source"])]
    assert found, f"{paths[0].name}: no code cell contains {needle!r}"
    return "".join(found[0]["source"])


def write_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        # the setup notebook: slice_browser(ds) over three bundled slices
        ("from crlearn.data.folder import SegmentationDataset\n"
         f"ds = SegmentationDataset({str(SAMPLE)!r}, indices=[0, 1, 2])"),
        notebook_cell("setup_and_data", "slice_browser("),
        # the ablation notebook: the row and loss-term toggles, on stand-in logits (the target shifted by a different
        # amount per row) instead of four trained models
        ("import torch\n"
         "from crlearn.tasks.ablation import TABLE7\n"
         "from crlearn.viz import LOSS_TERMS, figure_widget, plot_prediction_and_loss_term\n"
         f"test_set = SegmentationDataset({str(SAMPLE)!r}, merge=True, indices=range(6))\n"
         "target = test_set.one_hot(test_set.labels).bool()\n"
         "rows = [{'key': r.key, 'label': r.label} for r in TABLE7]\n"
         "logits = {r['key']: 8.0 * torch.roll(target, 32 * i, dims=-1).float() - 4.0 for i, r in enumerate(rows)}"),
        notebook_cell("ablation", "ToggleButtons("),
        "browser",
    ]
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_kernels(url: str, token: str) -> None:
    """Shut the server's kernels down (best effort), so that none outlives it even if it has to be killed."""
    try:
        with urllib.request.urlopen(f"{url}/api/kernels?token={token}", timeout=5) as r:
            kernels = json.load(r)
        for k in kernels:
            req = urllib.request.Request(f"{url}/api/kernels/{k['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(req, timeout=20).close()
    except OSError:
        pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port, with its own settings and a token, serving a temporary folder that
    holds ``widgets.ipynb``; yields its base URL, token and folder (server.log), and stops it
    and its kernels afterwards."""
    tmp = tmp_path_factory.mktemp("lab")
    work, home = tmp / "work", tmp / "home"
    work.mkdir()
    for rel, value in LAB_SETTINGS.items():
        f = home / "settings" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    write_notebook(work / "widgets.ipynb")
    token, port = "crlearn-browser-test", free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", "--allow-root", "--ServerApp.terminals_enabled=False",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, token, tmp
    finally:
        stop_kernels(url, token)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


IMAGE_SHA = """async img => {
    const bytes = await (await fetch(img.src)).arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return img.naturalWidth > 0 ? Array.from(digest, b => b.toString(16).padStart(2, "0")).join("") : null;
}"""


def image_sha(box) -> str | None:
    """The SHA-256 of the PNG the widget's ``<img>`` shows now (None while it has not decoded)."""
    return box.locator("img.widget-image").evaluate(IMAGE_SHA)


def wait_for_new_image(box, before: str) -> str:
    deadline = time.monotonic() + STEP_S
    while (now := image_sha(box)) in (before, None):
        if time.monotonic() > deadline:
            pytest.fail(f"the picture did not change within {STEP_S} s")
        time.sleep(0.2)
    return now


def kernel_idle(url: str, token: str) -> bool:
    """Whether the server holds a notebook session whose kernel is up and idle."""
    with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as r:
        return any(s["kernel"]["execution_state"] == "idle" for s in json.load(r))


@pytest.fixture(scope="module")
def page(lab):
    """The notebook opened in headless Chromium with all its cells run."""
    url, token, tmp = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--disable-dev-shm-usage"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1800})
            pg.set_default_timeout(STEP_S * 1000)
            pg.goto(f"{url}/lab/tree/widgets.ipynb?reset&token={token}", timeout=START_S * 1000)
            pg.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=START_S * 1000)
            # Run All before the kernel is up would ask for a kernel: wait for the server's session and the page.
            deadline = time.monotonic() + START_S
            while not kernel_idle(url, token):
                if time.monotonic() > deadline:
                    pytest.fail(f"the notebook's kernel did not start within {START_S} s")
                time.sleep(0.5)
            pg.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(timeout=START_S * 1000)
            pg.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
            pg.locator(".lm-Menu").get_by_text("Run All Cells", exact=True).click()
            images = pg.locator(".jp-OutputArea-output img.widget-image")
            deadline = time.monotonic() + RUN_S
            while images.count() < 2:
                errors = pg.locator('[data-mime-type="application/vnd.jupyter.error"]')
                if errors.count() or time.monotonic() > deadline:
                    pg.screenshot(path=tmp / "page.png")
                    shown = pg.locator('.jp-Dialog, [data-mime-type="application/vnd.jupyter.stderr"]')
                    pytest.fail(f"the two widgets did not appear (limit {RUN_S} s; screenshot {tmp / 'page.png'}, "
                                f"server log {tmp / 'server.log'}); the page shows:\n"
                                + "\n".join(errors.all_inner_texts() or shown.all_inner_texts()))
                time.sleep(0.5)
            yield pg
        finally:
            browser.close()


def widget_box(page, control: str):
    """The output holding the widget whose controls include ``control`` (a CSS class), once its picture shows."""
    box = page.locator(".jp-OutputArea-output", has=page.locator(control))
    sync_api.expect(box).to_have_count(1)
    deadline = time.monotonic() + STEP_S
    while image_sha(box) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the widget's picture did not load within {STEP_S} s")
        time.sleep(0.2)
    return box


def test_slice_browser_slider_redraws_the_slice(page):
    box = widget_box(page, ".widget-slider")
    readout = box.locator(".widget-readout")
    sync_api.expect(readout).to_have_text("0")
    before = image_sha(box)
    handle = box.locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    sync_api.expect(readout).to_have_text("1")
    after = wait_for_new_image(box, before)
    handle.press("ArrowLeft")  # back to slice 0: the same picture as at first
    sync_api.expect(readout).to_have_text("0")
    assert wait_for_new_image(box, after) == before


def test_ablation_toggles_redraw_the_row_and_the_loss_term(page):
    box = widget_box(page, ".widget-toggle-buttons")
    groups = box.locator(".widget-toggle-buttons")
    sync_api.expect(groups).to_have_count(2)
    rows, terms = (groups.nth(i).locator("button.widget-toggle-button") for i in range(2))
    sync_api.expect(rows).to_have_count(4)
    sync_api.expect(terms).to_have_count(3)
    sync_api.expect(rows.nth(0)).to_have_class(ACTIVE)
    before = image_sha(box)
    rows.nth(3).click()
    sync_api.expect(rows.nth(3)).to_have_class(ACTIVE)
    sync_api.expect(rows.nth(0)).not_to_have_class(ACTIVE)
    after = wait_for_new_image(box, before)
    terms.nth(2).click()  # IoU: another map of the same row's prediction
    sync_api.expect(terms.nth(2)).to_have_class(ACTIVE)
    wait_for_new_image(box, after)
