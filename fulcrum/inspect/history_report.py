"""``fulcrum report DIR``: the trends of a ``fulcrum inspect --record DIR`` history, the ones the
seed's operators looked at: nodes and Ready nodes, the resources still available, the pod count,
each node's allocation rate as a heatmap over time, the apiserver's requests by return code and
their latency, the scheduling attempt latency, and the Error/Alarm/Warn counts over time.

Figures are drawn with ``fulcrum.inspect.report_figures``' matplotlib setup into one HTML page
made by ``fulcrum.inspect.report``; a trend with nothing recorded says so instead of an empty
frame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fulcrum.inspect import history
from fulcrum.inspect.report import _figure, _page, _table
from fulcrum.inspect.report_figures import NO_RESOURCE, ReportError, _nothing, _svg

Record = Mapping[str, Any]
HEAT_ROWS = 60  # nodes drawn in the heatmap (the busiest on average); the rest are counted
SEVERITY_COLOURS = {"error": "#d62728", "alarm": "#ff7f0e", "warn": "#e5c100"}
AVAILABLE = (  # resource, label, divisor, unit
    ("cpu", "CPU", 1000, "cores"),
    ("memory", "memory", 2**30, "GiB"),
    ("gpus", "GPU", 1000, "GPUs"),
)
HISTORY_FIGURES = frozenset(
    {"nodes", "available", "pods", "allocation", "api-codes", "api-latency", "scheduling"}
    | {"severities"}
)


def _times(records: Sequence[Record]) -> list[datetime]:
    return [datetime.fromisoformat(r["time"]) for r in records]


def _time_axis(ax: Any, times: Sequence[datetime] = ()) -> None:
    """Concise date ticks; one run alone gets a minute either side, not a zero-width axis."""
    from datetime import timedelta

    from matplotlib import dates

    if times and min(times) == max(times):
        ax.set_xlim(times[0] - timedelta(minutes=1), times[0] + timedelta(minutes=1))
    locator = dates.AutoDateLocator(maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))


def _series(records: Sequence[Record], get: Any) -> list[float]:
    """One value per record, NaN where the record has none (a gap in the line)."""
    out = []
    for r in records:
        value = get(r)
        out.append(math.nan if value is None else float(value))
    return out


def _lines(
    records: Sequence[Record], lines: Sequence[tuple[str, Any]], ylabel: str, empty: str
) -> str:
    """One axes, a line per (label, getter) over time."""
    times = _times(records)

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        drawn = False
        for label, get in lines:
            values = _series(records, get)
            if all(math.isnan(v) for v in values):
                continue
            ax.plot(times, values, marker="o", markersize=3, label=label)
            drawn = True
        if not drawn:
            _nothing(ax, empty)
            return
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize=7.5)
        _time_axis(ax, times)

    return _svg((10.5, 2.6), draw)


def nodes(records: Sequence[Record]) -> str:
    return _lines(
        records,
        [
            ("nodes", lambda r: (r.get("nodes") or {}).get("count")),
            ("Ready nodes", lambda r: (r.get("nodes") or {}).get("ready")),
        ],
        "nodes",
        "no nodes recorded",
    )


def pods(records: Sequence[Record]) -> str:
    return _lines(records, [("active pods", lambda r: r.get("pods"))], "pods", "no pods recorded")


def available(records: Sequence[Record]) -> str:
    """Per resource the cluster has, allocatable less requested, and allocatable dashed."""
    times = _times(records)
    present = [
        a
        for a in AVAILABLE
        if any((r.get("resources") or {}).get(a[0], {}).get("allocatable") for r in records)
    ]

    def draw(fig: Any) -> None:
        if not present:
            _nothing(fig.subplots(), "no resources recorded")
            return
        for ax, (key, label, divisor, unit) in zip(
            fig.subplots(1, len(present), squeeze=False)[0], present, strict=True
        ):
            pairs = [(r.get("resources") or {}).get(key) for r in records]
            allocatable = [p["allocatable"] / divisor if p else math.nan for p in pairs]
            free = [(p["allocatable"] - p["requested"]) / divisor if p else math.nan for p in pairs]
            ax.plot(times, allocatable, linestyle="--", color="grey", label="allocatable")
            ax.plot(times, free, marker="o", markersize=3, label="available")
            ax.set_title(label)
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.legend(loc="best", fontsize=7.5)
            _time_axis(ax, times)

    return _svg((10.5, 2.6), draw)


def _edges(centres: Any) -> Any:
    """Cell edges around each run's time: halfway to its neighbours, a minute wide alone."""
    if len(centres) == 1:
        return np.array([centres[0] - 1 / 2880, centres[0] + 1 / 2880])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate(
        [
            [centres[0] - (middle[0] - centres[0])],
            middle,
            [centres[-1] + (centres[-1] - middle[-1])],
        ]
    )


def allocation(records: Sequence[Record]) -> str:
    """Nodes x time, the allocation rate of CPU and of memory; a node absent from a run grey."""
    from matplotlib import colormaps, dates

    names = sorted({n for r in records for n in r.get("allocation") or {}})
    times = _times(records)
    edges = _edges(dates.date2num(times))
    panels = (("cpu", "CPU"), ("memory", "memory"))

    def grid(key: str) -> Any:
        out = np.full((len(names), len(records)), np.nan)
        for j, r in enumerate(records):
            for i, name in enumerate(names):
                value = (r.get("allocation") or {}).get(name, {}).get(key)
                if value is not None:
                    out[i, j] = value
        return out

    grids = [grid(key) for key, _ in panels]
    mean = np.nan_to_num(np.nanmean(np.where(np.isnan(grids[0]), 0, grids[0]), axis=1))
    order: Any = np.lexsort((np.array(names, dtype=object), -mean))[:HEAT_ROWS] if names else []
    shown = [names[i] for i in order]
    cmap = colormaps["viridis"].with_extremes(bad=NO_RESOURCE, over="#d62728")

    def draw(fig: Any) -> None:
        if not names:
            _nothing(fig.subplots(), "no nodes recorded")
            return
        axes = fig.subplots(1, len(panels), sharey=True)
        rows = np.arange(len(shown) + 1) - 0.5
        for ax, g, (_, label) in zip(axes, grids, panels, strict=True):
            image = ax.pcolormesh(
                edges,
                rows,
                np.ma.masked_invalid(g[order]),
                cmap=cmap,
                vmin=0,
                vmax=1,
                edgecolors="face",
                linewidth=0.2,
            )
            ax.set_title(f"{label} allocated, per node")
            ax.xaxis_date()
            _time_axis(ax)
        axes[0].invert_yaxis()
        axes[0].set_yticks(range(len(shown)), shown if len(shown) <= 30 else [""] * len(shown))
        more = len(names) - len(shown)
        if more:
            axes[0].set_ylabel(f"the {len(shown)} busiest of {len(names)} nodes")
        bar = fig.colorbar(image, ax=axes, extend="max", shrink=0.9, aspect=15)
        bar.set_label("fraction allocated")

    height = 1.2 + min(len(shown), HEAT_ROWS) * 0.14
    return _svg((10.5, max(2.6, height)), draw)


def api_codes(records: Sequence[Record]) -> str:
    """The apiserver's requests per second by return code over each run's window: the answers
    on the left, the refusals and failures (4xx, 5xx) on the right, on a scale of their own."""
    times = _times(records)
    codes = sorted({c for r in records for c in ((r.get("api") or {}).get("codes") or {})})

    def rate(r: Record, code: str) -> float | None:
        api = r.get("api") or {}
        if not api.get("window_s"):
            return None
        return float((api.get("codes") or {}).get(code, 0.0)) / float(api["window_s"])

    def draw(fig: Any) -> None:
        if not any(rate(r, c) is not None for r in records for c in codes):
            _nothing(fig.subplots(), "no apiserver requests recorded (--window 0, or no /metrics)")
            return
        for ax, (title, wanted) in zip(
            fig.subplots(1, 2),
            (("answered (1xx-3xx)", "123"), ("refused or failed (4xx, 5xx)", "45")),
            strict=True,
        ):
            mine = [c for c in codes if c[:1] in wanted]
            for code in mine:
                ax.plot(
                    times,
                    _series(records, lambda r, c=code: rate(r, c)),
                    marker="o",
                    markersize=3,
                    label=f"code {code}",
                )
            if not mine:
                _nothing(ax, "none")
                continue
            ax.set_title(title)
            ax.set_ylabel("requests/s")
            ax.set_ylim(bottom=0)
            ax.legend(loc="best", fontsize=7.5)
            _time_axis(ax, times)

    return _svg((10.5, 2.6), draw)


def api_latency(records: Sequence[Record]) -> str:
    return _lines(
        records,
        [
            ("p50", lambda r: (r.get("api") or {}).get("p50_ms")),
            ("p99", lambda r: (r.get("api") or {}).get("p99_ms")),
        ],
        "ms (watches left out)",
        "no apiserver latency recorded",
    )


def scheduling(records: Sequence[Record]) -> str:
    return _lines(
        records,
        [
            ("attempt p50", lambda r: (r.get("scheduling") or {}).get("p50_ms")),
            ("attempt p99", lambda r: (r.get("scheduling") or {}).get("p99_ms")),
            ("pod p50, queued to bound", lambda r: (r.get("scheduling") or {}).get("pod_p50_ms")),
            ("pod p99, queued to bound", lambda r: (r.get("scheduling") or {}).get("pod_p99_ms")),
        ],
        "ms",
        "no scheduling latency recorded (kube-scheduler's /metrics was not read)",
    )


def severities(records: Sequence[Record]) -> str:
    """Error, Alarm and Warn results over every section, run by run."""
    times = _times(records)
    counts = [history.severity_counts(r) for r in records]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for key, colour in SEVERITY_COLOURS.items():
            ax.plot(
                times,
                [c.get(key, 0) for c in counts],
                marker="o",
                markersize=3,
                color=colour,
                label=key.capitalize(),
            )
        ax.set_ylabel("results")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize=7.5)
        _time_axis(ax, times)

    return _svg((10.5, 2.6), draw)


def history_html(records: Sequence[Record], *, source: str) -> str:
    """The history page: the latest run's verdicts, then one figure per trend."""
    last = records[-1]
    first_time, last_time = records[0]["time"], last["time"]
    rows = [
        (s["name"], s["summary"]["error"], s["summary"]["alarm"], s["summary"]["warn"])
        for s in last.get("sections") or []
    ]
    body = [
        "<h2>The latest run</h2>",
        _table("latest", ("section", "Error", "Alarm", "Warn"), rows),
        _table(
            "latest-details",
            ("severity", "target", "check", "message"),
            [(c["severity"], c["target"], c["check"], c["message"]) for c in last["checks"]],
        ),
        "<h2>Trends</h2>",
        _figure("severities", severities(records), "Error, Alarm and Warn results, all sections."),
        _figure("nodes", nodes(records), "Nodes, and the nodes whose Ready condition is True."),
        _figure(
            "available",
            available(records),
            "Resources available to new pods (allocatable less requested), per resource.",
        ),
        _figure("pods", pods(records), "Active pods (not Succeeded or Failed)."),
        _figure(
            "allocation",
            allocation(records),
            "Each node's allocation rate over time (requested / allocatable); grey: no record.",
        ),
        _figure(
            "api-codes",
            api_codes(records),
            "The apiserver's requests per second by return code, over each run's --window.",
        ),
        _figure(
            "api-latency",
            api_latency(records),
            "The apiserver's request latency over each run's --window, watches left out.",
        ),
        _figure(
            "scheduling",
            scheduling(records),
            "kube-scheduler's latency over each run's --window: one scheduling attempt, and per "
            "pod from first queued to bound (every attempt and the queue included).",
        ),
    ]
    subtitle = f"{source}: {len(records)} runs, {first_time} to {last_time}"
    return _page("Fulcrum inspection history", subtitle, body)


def load_directory(directory: Path) -> str:
    """The page for ``fulcrum report DIR``; ReportError naming what is wrong with DIR."""
    try:
        records = history.load(directory)
    except history.HistoryError as exc:
        raise ReportError(str(exc)) from exc
    return history_html(records, source=str(directory))
