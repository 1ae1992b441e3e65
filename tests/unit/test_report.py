"""The HTML report (``fulcrum inspect --html``, ``fulcrum report``): every figure drawn and
captioned, the page self-contained and deterministic, the invariants highlighted, user errors
one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from fulcrum import cli
from fulcrum.inspect.inspection import inspect
from fulcrum.inspect.report import (
    ReportError,
    inspection_html,
    load_simulations,
    require,
    simulate_html,
)
from fulcrum.inspect.report_figures import INSTALL_HINT, fractions
from tests import builders
from tests.unit.report_inputs import (
    FIGURES,
    NOW,
    SIMULATE_FIGURES,
    cluster,
    simulate_json,
)


def figures(page: str) -> dict[str, str]:
    """data-figure name -> the figure's HTML."""
    found = re.findall(r'<figure id="fig-([^"]+)" data-figure="\1">(.*?)</figure>', page, re.S)
    return dict(found)


def drawn(svg: str) -> int:
    """Marks in an SVG: paths and embedded images."""
    return len(re.findall(r"<(?:path|image|use)\b", svg))


@pytest.fixture(scope="module")
def page() -> str:
    """The report of a healthy cluster (drawing takes a second: once for the module)."""
    return inspection_html(cluster(), source="unit test", now=NOW)


def test_an_inspection_has_every_figure_captioned_with_something_drawn(page: str) -> None:
    found = figures(page)
    assert set(found) == FIGURES
    for name, figure in found.items():
        assert figure.startswith("<svg"), name
        assert re.search(r"<figcaption>\w.*</figcaption>$", figure), name
        assert drawn(figure) > 10, name
    images = found["heatmap"].count('<image xlink:href="data:image/png;base64,')
    assert images == 5  # a panel per resource, and the colour bar
    assert "rb-2 \u2192 gpu-1" in found["reservations"]  # text stays text
    assert "2 of 14" in found["pools"]


def test_the_page_is_self_contained_and_the_same_for_the_same_input(page: str) -> None:
    assert "<script" not in page and "<link" not in page and "@import" not in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("#", "data:")) for link in links)
    assert page == inspection_html(cluster(), source="unit test", now=NOW)


def test_the_invariants_are_highlighted_and_every_violation_named(page: str) -> None:
    assert 'data-invariants="pass"' in page and "Invariants: all hold" in page
    assert 'class="fail"' not in page
    broken = inspection_html(cluster(broken=True), source="t", now=NOW)
    assert 'data-invariants="fail"' in broken and "Invariants: 2 broken" in broken
    assert '<li class="fail">no node is over-committed: 1 broken</li>' in broken
    assert "<li>node cpu-5 is over-committed: cpu</li>" in broken
    assert "ns/rb-3 expired at 2026-12-02 07:50:00 UTC and is still there" in broken


def test_the_tables_name_the_nodes_behind_the_figures(page: str) -> None:
    stranded = page[page.index('data-table="stranded"') :]
    assert "<td>gpu-0</td>" in stranded[: stranded.index("</table>")]
    assert "cpu exhausted, memory, GPU idle" in stranded
    assert '<table data-table="opted-in">' in page and "<td>ns/web-0</td>" in page


def test_a_node_without_a_resource_is_grey_not_zero() -> None:
    nodes = [builders.node("c", cpu="4"), builders.node("g", cpu="4", gpus=2, model="T4")]
    pods = [builders.pod("a", node_name="c", cpu="6")]  # over-committed: more than 1
    shares = fractions(inspect(nodes, pods, [], [], NOW).nodes)
    assert shares[0, 0] == 1.5 and shares[1, 0] == 0
    assert [bool(v) for v in (shares[:, 3] != shares[:, 3])] == [True, False]  # NaN: no GPU


def test_thousands_of_nodes_stay_one_small_image_per_panel() -> None:
    nodes = [builders.node(f"n{i:04}", cpu="8", gpus=i % 3, model="A100") for i in range(3000)]
    pods = [builders.pod(f"p{i}", node_name=f"n{i:04}", cpu=str(i % 9)) for i in range(0, 3000, 2)]
    page = inspection_html(inspect(nodes, pods, [], [], NOW), source="t", now=NOW)
    heatmap = figures(page)["heatmap"]
    assert heatmap.count("<image") == 5  # a panel per resource, and the colour bar
    assert len(heatmap) < 80_000 and len(page) < 250_000


def test_an_empty_cluster_still_makes_a_page() -> None:
    page = inspection_html(inspect([], [], [], [], NOW), source="t", now=NOW)
    assert figures(page) == {}
    assert "no nodes" in page and "no Reservations" in page and "no IP pools" in page


def test_simulate_runs_draw_one_line_per_policy_and_a_table(tmp_path: Path) -> None:
    paths = [simulate_json(tmp_path, "FGD"), simulate_json(tmp_path, "BestFit")]
    page = simulate_html(load_simulations(paths), sources=[str(p) for p in paths])
    found = figures(page)
    assert set(found) == SIMULATE_FIGURES
    for name, figure in found.items():
        assert drawn(figure) > 10, name
        assert ">FGD</text>" in figure and ">BestFit</text>" in figure, name  # the legend
    summary = page[page.index('data-table="summary"') : page.index("</table>")]
    assert summary.count("<tr>") == 3  # header and one row per policy


def test_runs_of_several_workloads_are_labelled_by_workload(tmp_path: Path) -> None:
    document = load_simulations([simulate_json(tmp_path, "FGD")])[0]
    other = {**document, "pods": "/traces/openb_pod_list_gpushare40.csv"}
    page = simulate_html([document, other], sources=["a", "b"])
    assert ">FGD \u00b7 pods</text>" in page and ">FGD \u00b7 gpushare40</text>" in page


def test_in_order_runs_get_a_table_not_a_curve(tmp_path: Path) -> None:
    path = simulate_json(tmp_path, "BestFit", "--in-order")
    page = simulate_html(load_simulations([path]), sources=[str(path)])
    assert figures(page) == {}
    assert '<table data-table="in-order">' in page and "<td>BestFit</td>" in page


def test_fulcrum_report_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = simulate_json(tmp_path, "Archimedes")
    out = tmp_path / "report.html"
    assert cli.main(["report", str(source), "--output-file", str(out)]) == 0
    assert set(figures(out.read_text())) == SIMULATE_FIGURES
    assert cli.main(["report", str(source), "--html", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text() == out.read_text()
    assert f"wrote {out}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        ("{not json", "Expecting property name"),
        (json.dumps({"nodes": []}), "not the JSON of `fulcrum simulate -o json`"),
        (json.dumps({"policy": "FGD", "seeds": [{"alloc_curve": []}]}), "not the JSON of"),
    ],
)
def test_fulcrum_report_refuses_what_it_cannot_read_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["report", str(path), "--output-file", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fulcrum report: error: {path}: ") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "out.html").exists()


def test_without_matplotlib_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = simulate_json(tmp_path, "FGD")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(ReportError, match=re.escape(INSTALL_HINT)):
        require()
    out = str(tmp_path / "out.html")
    assert cli.main(["inspect", "--name", "never-started", "--html", out]) == 2  # no cluster read
    assert cli.main(["report", str(source), "--output-file", out]) == 2
    err = capsys.readouterr().err
    assert err.count(f"matplotlib is not installed: {INSTALL_HINT}") == 2
