"""The HTML report: ``fulcrum inspect --html`` and ``fulcrum report``, one self-contained file.

Every figure is SVG drawn by matplotlib (``fulcrum.inspect.report_figures``) and written into the
page, so the file opens offline and holds no script at all; tables are plain HTML. The same input
gives the same file.

Each figure is ``<figure data-figure="NAME">`` with a ``<figcaption>``: ``heatmap``,
``histograms``, ``fragmentation``, ``reservations`` and ``pools`` for an inspection; ``allocation``
and ``fragmentation-curve`` for ``fulcrum simulate -o json`` runs."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fulcrum.inspect import report_figures as figures
from fulcrum.inspect.inspection import Inspection
from fulcrum.inspect.node_checks import COLUMNS, NodeChecksSection
from fulcrum.inspect.report_figures import RESOURCES, TOP, ReportError, require
from scheduler.pod import GPU_MILLI

__all__ = [
    "ReportError",
    "inspection_html",
    "load_simulations",
    "require",
    "simulate_html",
    "write_html",
]

_CSS = """
body{font:14px/1.45 system-ui,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1d2330;
background:#f6f7f9;margin:0 auto;max-width:1240px;padding:14px 22px}
h1{font-size:21px;margin:0}h2{font-size:15px;margin:18px 0 6px}.meta{color:#5b6475;margin:2px 0}
.cards{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.card{flex:1 1 0;min-width:64px;background:#fff;border:1px solid #dde1e7;border-radius:6px;
padding:5px 10px}
.card b{display:block;font-size:19px}.card span{color:#5b6475;font-size:11.5px;line-height:1.2}
.invariants{border-radius:6px;padding:6px 14px;margin:10px 0}
.invariants.pass{background:#e8f6ec;border:1px solid #9fd4ae}
.invariants.fail{background:#fdecea;border:2px solid #d62728}
.invariants h2{margin:4px 0}.invariants ul{margin:4px 0;padding-left:20px}
li.pass::marker{content:"\\2713  ";color:#2ca02c}li.fail::marker{content:"\\2717  ";color:#d62728}
li.fail{font-weight:600}.violations li{font-family:ui-monospace,"DejaVu Sans Mono",monospace;
font-size:12px;font-weight:400}
figure{margin:10px 0;background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px 10px}
figure svg{display:block;width:100%;height:auto}figcaption{color:#4a5263;font-size:12.5px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}.pair>*{min-width:0}
table{border-collapse:collapse;font-size:12.5px;background:#fff;margin:4px 0}
th,td{padding:2px 9px;border-bottom:1px solid #e6e9ee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.empty,.more{color:#5b6475}
@media print{body{background:#fff}figure,.invariants{break-inside:avoid}}
"""
INVARIANTS = (  # the prefix of each violation ``fulcrum.inspect.inspection`` reports, and the rule
    ("node ", "no node is over-committed"),
    ("IP ", "no IP address is held by two pods"),
    ("IPPool ", "every IP pool is consistent"),
    ("Reservation ", "no Reservation is stale (its node gone, or expired and still there)"),
    ("pod ", "every pod opted in to local rebuild was placed by fulcrum-scheduler"),
)
SUMMARY_KEYS = ("alloc_at_100", "alloc_at_130", "final_frag_pct", "pods_failed")
PERCENT_KEYS = frozenset(SUMMARY_KEYS[:3])  # shown with two decimals, always


def _figure(name: str, svg: str, caption: str) -> str:
    return (
        f'<figure id="fig-{name}" data-figure="{name}">{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _cell(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (
            f'<td class="n">{value:.2f}</td>'
            if isinstance(value, float)
            else f'<td class="n">{value}</td>'
        )
    return f"<td>{html.escape(str(value))}</td>"


def _table(name: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A table of the first TOP rows, and how many more there are ("none" for no rows)."""
    if not rows:
        return f'<p class="empty" data-table="{name}">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows[:TOP])
    more = f'<p class="more">and {len(rows) - TOP} more</p>' if len(rows) > TOP else ""
    return (
        f'<table data-table="{name}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>{more}"
    )


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    """The whole document: its one style sheet inline, then the sections."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f'<header><h1>{html.escape(title)}</h1><p class="meta">{html.escape(subtitle)}</p>'
        "</header>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write a page made here (UTF-8, whatever the locale)."""
    path.write_text(page, encoding="utf-8")


def _cards(report: Inspection) -> str:
    """The cluster in numbers, one card each."""
    items = [(str(len(report.nodes)), "nodes")]
    for label, attr in RESOURCES:
        pct = figures.cluster_pct(report.nodes, attr)
        items.append(("\u2013" if pct is None else f"{pct:.1f}%", f"{label} allocated"))
    items += [
        (f"{report.fragmentation_pct:.2f}%", "GPUs fragmented (FGD)"),
        (str(sum(1 for n in report.nodes if n.stranded)), "nodes stranding resources"),
        (str(len(report.reservations)), "Reservations"),
        (str(len(report.pools)), "IP pools"),
        (str(len(report.opted_in)), "pods opted in to local rebuild"),
    ]
    if report.emptiable is not None:
        e = report.emptiable
        items.append((f"{e['nodes']}/{e['used']}", f"used nodes emptiable in {e['moves']} moves"))
    cards = "".join(
        f'<div class="card"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
        for v, k in items
    )
    return f'<section class="cards">{cards}</section>'


def _invariants(violations: Sequence[str], skipped: Sequence[str]) -> str:
    """Each invariant passed or failed, then every violation (and what could not be read)."""
    state = "fail" if violations else "pass"
    rules = []
    for prefix, rule in INVARIANTS:
        broken = sum(1 for v in violations if v.startswith(prefix))
        rules.append(
            f'<li class="{"fail" if broken else "pass"}">{html.escape(rule)}'
            + (f": {broken} broken" if broken else "")
            + "</li>"
        )
    heading = f"Invariants: {len(violations)} broken" if violations else "Invariants: all hold"
    listed = "".join(f"<li>{html.escape(v)}</li>" for v in violations[:100])
    unread = "".join(f"<li>skipped, Fulcrum cannot read it: {html.escape(s)}</li>" for s in skipped)
    return (
        f'<section id="invariants" class="invariants {state}" data-invariants="{state}">'
        f"<h2>{heading}</h2><ul>{''.join(rules)}</ul>"
        + (f'<ul class="violations">{listed}{unread}</ul>' if listed or unread else "")
        + "</section>"
    )


def _tables(report: Inspection) -> str:
    """The nodes and pods behind the figures: nodes stranding resources, the most fragmented
    GPU nodes, the pods opted in to local rebuild."""
    stranded = [
        (n.name, *(_pct_text(getattr(n, attr)) for _, attr in RESOURCES), n.stranded)
        for n in report.nodes
        if n.stranded
    ]
    fragmented = [
        (n.name, n.gpus[1] // GPU_MILLI, _pct_text(n.gpus), n.fragment_milli / GPU_MILLI)
        for n in sorted(report.nodes, key=lambda n: (-n.fragment_milli, n.name))
        if n.fragment_milli > 0
    ]
    opted = [(p["pod"], p["node"] or "(pending)", p["status"]) for p in report.opted_in]
    return (
        '<div class="pair"><div><h2>Nodes stranding resources</h2>'
        + _table("stranded", ("node", "cpu", "memory", "pods", "GPU", "stranded"), stranded)
        + "</div><div><h2>Most fragmented GPU nodes</h2>"
        + _table("fragmented", ("node", "GPUs", "GPU allocated", "fragmented GPUs"), fragmented)
        + "</div></div><h2>Pods opted in to local rebuild</h2>"
        + _table("opted-in", ("pod", "node", "status"), opted)
    )


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _pct_text(pair: tuple[int, int]) -> str:
    return f"{100 * pair[0] / pair[1]:.0f}%" if pair[1] else "\u2013"


def _local_rebuild(report: Inspection) -> str:
    """Reservations and IP pools, side by side."""
    if report.reservations:
        reservations = _figure(
            "reservations",
            figures.reservations(report.reservations),
            f"{_count(len(report.reservations), 'Reservation')} (a node held for a rebuilt pod's "
            "successor) by age, oldest at the top"
            + (f"; the {TOP} oldest shown" if len(report.reservations) > TOP else ""),
        )
    else:
        reservations = '<p class="empty" data-empty="reservations">no Reservations</p>'
    if report.pools:
        used = sum(p["used"] for p in report.pools)
        size = used + sum(p["free"] for p in report.pools)
        pools = _figure(
            "pools",
            figures.pools(report.pools),
            f"{_count(len(report.pools), 'IP pool')}: {used} of {size} addresses held by pods",
        )
    else:
        pools = '<p class="empty" data-empty="pools">no IP pools</p>'
    return f'<h2>Local rebuild</h2><div class="pair">{reservations}{pools}</div>'


def _node_checks(section: NodeChecksSection) -> str:
    """What the nodes' agents report: checks by severity over the nodes, then every result
    worse than Info, then the nodes without an agent (kwok's counted, not listed)."""
    state = "fail" if section.failing else "pass"
    heading = (
        f"Node checks: Error or Alarm on {_count(len(section.failing), 'node')}"
        if section.failing
        else f"Node checks: {section.reporting} of {_count(section.nodes, 'node')} report"
    )
    counts = [(check, *(row[c] for c in COLUMNS)) for check, row in section.counts.items()]
    details = [
        (d["node"], d["check"], d["severity"], d["value"], d["threshold"], d["message"])
        for d in section.details
    ]
    notes = []
    if section.kwok:
        notes.append(f"{_count(section.kwok, 'kwok node')} run no agent (kwok fakes them)")
    if section.no_agent:
        shown = ", ".join(section.no_agent[:TOP])
        more = f" and {len(section.no_agent) - TOP} more" if len(section.no_agent) > TOP else ""
        notes.append(f"no agent on {_count(len(section.no_agent), 'node')}: {shown}{more}")
    notes += [f"stale: {s}" for s in section.stale[:TOP]]
    notes += [f"unreadable: {u}" for u in section.unreadable[:TOP]]
    listed = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        f'<section id="node-checks" data-node-checks="{state}"><h2>{html.escape(heading)}</h2>'
        + _table("node-checks", ("check", *COLUMNS), counts)
        + _table(
            "node-check-details",
            ("node", "check", "severity", "value", "threshold", "message"),
            details,
        )
        + (f"<ul>{listed}</ul>" if listed else "")
        + "</section>"
    )


def inspection_html(
    report: Inspection, *, source: str, now: datetime, extra: Sequence[str] = ()
) -> str:
    """The inspection as a page: summary, invariants, heatmap, histograms, fragmentation,
    Reservations and IP pools, then the nodes and pods behind them; ``extra`` sections (the
    cluster checks' brief, ``fulcrum.inspect.brief.to_html``) after the invariants."""
    body = [_cards(report), _invariants(report.violations, report.skipped), *extra]
    if report.nodes:
        fractions = figures.fractions(report.nodes)
        body += [
            _figure(
                "heatmap",
                figures.heatmap(report.nodes, fractions),
                "Allocation per node: one cell per node, in the same place in every panel, "
                "busiest nodes first (top left); grey: the node has none of the resource, "
                "red: over-committed.",
            ),
            _figure(
                "histograms",
                figures.histograms(report.nodes, fractions),
                "How allocated the nodes are, per resource (dashed: the whole cluster).",
            ),
            _figure(
                "fragmentation",
                figures.fragmentation(report),
                "Left: free GPUs per GPU node and the part of them the running pods' shapes "
                "cannot use (FGD's measure). Right: nodes with one resource exhausted "
                "while another sits idle.",
            ),
        ]
    else:
        body.append('<p class="empty">no nodes</p>')
    body += [_local_rebuild(report), _tables(report), _node_checks(report.node_checks)]
    return _page("Fulcrum inspection", f"{source} \u00b7 {now:%Y-%m-%d %H:%M:%S %Z}", body)


def _is_simulation(document: object) -> bool:
    if not isinstance(document, dict) or not isinstance(document.get("policy"), str):
        return False
    if isinstance(document.get("in_order"), dict):
        return True
    seeds = document.get("seeds")
    return (
        isinstance(seeds, list)
        and bool(seeds)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("alloc_curve"), list)
            and isinstance(s.get("frag_curve"), list)
            for s in seeds
        )
    )


def load_simulations(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The documents ``fulcrum simulate -o json`` wrote, one per path; ReportError naming the
    file if one cannot be read or is something else."""
    documents = []
    for path in paths:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: {exc}") from exc
        if not _is_simulation(document):
            raise ReportError(f"{path}: not the JSON of `fulcrum simulate -o json`")
        documents.append(document)
    return documents


def _workload(document: Mapping[str, Any]) -> str:
    return Path(str(document.get("pods", ""))).stem.removeprefix("openb_pod_list_") or "?"


def _labels(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """The policy, and the workload too when the runs are not all of one workload."""
    several = len({_workload(d) for d in documents}) > 1
    return [
        d["policy"]
        + (f" \u00b7 {_workload(d)}" if several else "")
        + (" (random ties)" if d.get("random_ties") else "")
        for d in documents
    ]


def _mean(seeds: Sequence[Mapping[str, Any]], key: str) -> float | int | str:
    """The mean over seeds (an int when it is one), or n/a when no seed has the value."""
    values = [s[key] for s in seeds if s.get(key) is not None]
    if not values:
        return "n/a"
    mean = round(float(np.mean(values)), 2)
    return int(mean) if mean.is_integer() and key not in PERCENT_KEYS else mean


def _summary_rows(documents: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[Any]:
    """One row per run, mean over its seeds, best allocation at 130 % first."""
    rows = [
        (
            label,
            _workload(d),
            len(d["seeds"]),
            *(_mean(d["seeds"], key) for key in SUMMARY_KEYS),
            f"{_mean(d['seeds'], 'nodes_used')} / {_mean(d['seeds'], 'nodes_lower_bound')}",
        )
        for d, label in zip(documents, labels, strict=True)
    ]
    return sorted(rows, key=lambda r: -r[4] if isinstance(r[4], int | float) else math.inf)


def _replayed(documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """The figures and table of runs under the FGD protocol (the ones with seeds)."""
    labels = _labels(documents)
    runs = list(zip(labels, documents, strict=True))
    return [
        _figure(
            "allocation",
            figures.allocation([(lbl, figures.curves(d, "alloc_curve")) for lbl, d in runs]),
            "GPU allocation as the workload arrives, as the FGD paper draws it: the mean over "
            "seeds per policy, shaded from the lowest to the highest seed; dotted: the "
            "workload arrived, which a perfect packer would follow up to 100 %.",
        ),
        _figure(
            "fragmentation-curve",
            figures.fragmentation_curve(
                [(lbl, figures.curves(d, "frag_curve")) for lbl, d in runs]
            ),
            "GPU fragmentation (FGD's measure) as the workload arrives, mean over seeds.",
        ),
        "<h2>Per policy</h2>"
        + _table(
            "summary",
            (
                "policy",
                "workload",
                "seeds",
                "alloc @100 %",
                "alloc @130 %",
                "final frag %",
                "failed pods",
                "nodes used / lower bound",
            ),
            _summary_rows(documents, labels),
        ),
    ]


def simulate_html(documents: Sequence[Mapping[str, Any]], *, sources: Sequence[str]) -> str:
    """``fulcrum simulate -o json`` runs as a page: GPU allocation and fragmentation against
    the arrived workload, one line per run, a table of the runs; ``--in-order`` runs have no
    curve and get a table of their own."""
    replayed = [d for d in documents if "seeds" in d]
    in_order = [
        (d["policy"], d["in_order"]["pods"], d["in_order"]["placed"], d["in_order"]["nodes_used"])
        for d in documents
        if "seeds" not in d
    ]
    body = _replayed(replayed) if replayed else []
    if in_order:
        body.append(
            "<h2>In order (each pod once, the workload learnt as it comes)</h2>"
            + _table("in-order", ("policy", "pods", "placed", "nodes used"), in_order)
        )
    return _page("Fulcrum simulate", " \u00b7 ".join(sources), body)


def _is_comparison(document: object) -> bool:
    return (
        isinstance(document, dict)
        and isinstance(document.get("lower_bound"), int)
        and isinstance(document.get("rounds"), list)
        and bool(document["rounds"])
        and all(isinstance(r, dict) and r for r in document["rounds"])
    )


def compare_html(document: Mapping[str, Any], *, source: str) -> str:
    """``fulcrum compare -o json`` as a page: nodes used against the lower bound, throughput,
    CPU per pod by process, and a table of the rounds."""
    rounds = document["rounds"]
    rows = [
        (i + 1, name, f"{r['bound']}/{r['pods']}", r["nodes_used"], f"{r['throughput']:.1f}")
        for i, pair in enumerate(rounds)
        for name, r in pair.items()
    ]
    ratios = ", ".join(f"{x:.2f}" for x in document.get("throughput_ratios", []))
    body = [
        _figure(
            "comparison",
            figures.comparison(rounds, document["lower_bound"]),
            f"The same openb pods through each scheduler, round by round (lower bound on nodes "
            f"{document['lower_bound']}; fulcrum/default throughput per round: {ratios}).",
        ),
        _table("rounds", ("round", "scheduler", "bound", "nodes used", "pods/s"), rows),
    ]
    return _page("Fulcrum compare", source, body)


def load_documents(paths: Sequence[Path]) -> str:
    """The page for ``fulcrum report``'s inputs: one ``fulcrum compare -o json`` document, or
    ``fulcrum simulate -o json`` documents; ReportError naming a file that is neither. (A
    directory of ``fulcrum inspect --record`` is ``fulcrum.inspect.history_report.load``'s.)"""
    if len(paths) == 1:
        try:
            document = json.loads(paths[0].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"{paths[0]}: {exc}") from exc
        if _is_comparison(document):
            return compare_html(document, source=str(paths[0]))
    return simulate_html(load_simulations(paths), sources=[str(p) for p in paths])
