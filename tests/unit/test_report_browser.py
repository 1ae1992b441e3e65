"""The HTML report in a real browser: headless Chromium opens it from disk, prints nothing to
its console, and every figure comes out of its parser as SVG with something drawn in it.

Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``; ``.ci/run`` installs it).
Without it the tests skip, unless CI is set: there a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fulcrum.inspect.report import inspection_html, load_simulations, simulate_html, write_html
from tests.unit.report_inputs import FIGURES, NOW, SIMULATE_FIGURES, cluster, simulate_json

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
CONSOLE = re.compile(r":CONSOLE[:(\]]|Uncaught")  # how Chromium logs console messages to stderr
BROKEN = """<!DOCTYPE html><html><body><p>broken</p>
<script>console.error("deliberate"); undefinedFunction();</script></body></html>"""


@pytest.fixture(scope="module", autouse=True)
def browser() -> str:
    """Chromium's path; a skip without it, or a failure when CI is set."""
    if BROWSER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH and CI is set: .ci/run should install it")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs these tests")
    return BROWSER


@pytest.fixture(scope="module")
def inspection_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a cluster with two broken invariants, written once for the module."""
    page = tmp_path_factory.mktemp("report") / "inspection.html"
    write_html(page, inspection_html(cluster(broken=True), source="browser test", now=NOW))
    return page


def chromium(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless and with a profile of its own, on ``page``; it exits when done."""
    argv = [str(BROWSER), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    argv += ["--enable-logging=stderr", "--v=0", f"--user-data-dir={page.parent / 'profile'}"]
    return subprocess.run(
        [*argv, *flags, page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )


def console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


def drawn_figures(dom: str) -> dict[str, int]:
    """data-figure name -> paths and images drawn in its SVG, as the browser parsed the page."""
    found = re.findall(r'<figure id="fig-[^"]+" data-figure="([^"]+)">(<svg.*?</svg>)', dom, re.S)
    return {name: len(re.findall(r"<(?:path|image|use)\b", svg)) for name, svg in found}


def test_the_console_check_sees_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(BROKEN)
    messages = console(chromium(page, "--dump-dom").stderr)
    assert len(messages) == 2, messages
    assert '"deliberate"' in messages[0]
    assert "Uncaught ReferenceError: undefinedFunction is not defined" in messages[1]


def test_an_inspection_report_opens_clean_with_every_figure_drawn(inspection_page: Path) -> None:
    opened = chromium(inspection_page, "--dump-dom")
    assert console(opened.stderr) == []
    figures = drawn_figures(opened.stdout)
    assert set(figures) == FIGURES
    assert all(count > 10 for count in figures.values()), figures
    assert 'data-invariants="fail"' in opened.stdout


def test_a_simulate_report_opens_clean_with_every_figure_drawn(tmp_path: Path) -> None:
    sources = [simulate_json(tmp_path, "FGD"), simulate_json(tmp_path, "Archimedes")]
    page = tmp_path / "simulate.html"
    write_html(page, simulate_html(load_simulations(sources), sources=["a", "b"]))
    opened = chromium(page, "--dump-dom")
    assert console(opened.stderr) == []
    figures = drawn_figures(opened.stdout)
    assert set(figures) == SIMULATE_FIGURES
    assert all(count > 10 for count in figures.values()), figures


def test_a_screenshot_of_the_report_is_a_picture_not_a_blank(
    inspection_page: Path, tmp_path: Path
) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    chromium(inspection_page, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars")
    pixels = imread(shot)
    assert pixels.shape[:2] == (900, 1280)
    rgb = (pixels[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 200  # viridis cells, bars, text: far more than a page's background


def test_a_compare_report_opens_clean_with_its_figure_drawn(tmp_path: Path) -> None:
    from fulcrum.inspect.report import load_documents
    from fulcrum.lab.openb import Comparison, RunReport

    cpu = {"kube-apiserver": 3.0, "fulcrum serve": 2.0, "(stolen)": 0.1}
    default = RunReport("default-scheduler", 100, 100, 20, 0, 1.0, 2.0, cpu)
    ours = RunReport("fulcrum-scheduler", 100, 100, 12, 0, 1.0, 4.0, cpu)
    source = tmp_path / "compare.json"
    source.write_text(json.dumps(Comparison([(default, ours), (default, ours)], 11).to_json()))
    page = tmp_path / "compare.html"
    write_html(page, load_documents([source]))
    opened = chromium(page, "--dump-dom")
    assert console(opened.stderr) == []
    figures = drawn_figures(opened.stdout)
    assert set(figures) == {"comparison"} and figures["comparison"] > 10, figures
    assert "fulcrum/default throughput per round: 0.50, 0.50" in opened.stdout


def test_a_history_report_of_10_runs_opens_clean_with_every_figure_drawn(tmp_path: Path) -> None:
    from fulcrum.inspect.history_report import HISTORY_FIGURES, load_directory
    from tests.unit.report_inputs import history

    page = tmp_path / "history.html"
    write_html(page, load_directory(history(tmp_path / "records", runs=10)))
    opened = chromium(page, "--dump-dom")
    assert console(opened.stderr) == []
    figures = drawn_figures(opened.stdout)
    assert set(figures) == HISTORY_FIGURES
    assert all(count > 10 for count in figures.values()), figures
