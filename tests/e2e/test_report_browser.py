"""The report in a real browser: headless Chromium opens index.html from disk (no server,
no network) and its screenshot shows the figures.

Needs the Debian packages chromium and chromium-driver (``make install`` installs them
when missing); skipped, saying so, when no Chromium binary is on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from neva_sweep.report import build_report
from tests.helpers import fabricate_run

CHROMIUM = next((p for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (p := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary on PATH (Debian: apt-get install -y chromium "
    "chromium-driver; `make install` does it when missing)")
# --no-sandbox: containers run tests as root, where Chromium's sandbox refuses to start.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", "--window-size=1280,2000")


def chromium(*args: str) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    run_dir = fabricate_run(tmp_path_factory.mktemp("browser"), models=("tiny-a",),
                            methods=("neva", "random"), values=("power", "benevolence"))
    return build_report(run_dir)


def test_chromium_renders_the_title_and_figures(page, tmp_path):
    dom = chromium("--dump-dom", page.resolve().as_uri())
    assert "<title>neva_sweep report: browser" in dom
    assert dom.count('<img src="data:image/png;base64,') >= 5
    shot = tmp_path / "screenshot.png"
    chromium(f"--screenshot={shot}", page.resolve().as_uri())
    img = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 0.05, "blank screenshot"
    assert (img.min(axis=2) < 0.9).mean() > 0.02  # text, tables and plots, not a white page
    # Plot colours (palette, colour bars), which text and tables do not have: the first
    # figures are within the first 2000 pixels and were decoded and painted.
    colourful = (img.max(axis=2) - img.min(axis=2)) > 0.3
    assert colourful.mean() > 0.001, f"only {colourful.mean():.5f} of the pixels are coloured"


def test_chromium_renders_the_compare_page(tmp_path_factory):
    from neva_sweep.report.compare import compare_runs

    root = tmp_path_factory.mktemp("compare")
    small = dict(models=("tiny-a",), values=("power",), n_trials=3, neuron_files=False)
    runs = [fabricate_run(root / "one", methods=("neva",), **small),
            fabricate_run(root / "two", methods=("random",), seed=1, **small)]
    page = compare_runs(runs, root / "out")
    dom = chromium("--dump-dom", page.resolve().as_uri())
    assert "<title>neva_sweep comparison: one vs two</title>" in dom
    assert dom.count('<img src="data:image/png;base64,') >= 5  # fronts, leakage, profiles...
    assert "<th class=\"text\">run</th>" in dom
