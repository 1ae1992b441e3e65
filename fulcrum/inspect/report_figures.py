"""The report's figures: matplotlib ``Figure`` objects drawn to inline SVG, no pyplot state.

matplotlib is the optional extra ``fulcrum[report]`` and is imported only here, only when a
figure is drawn; without it ``require`` raises ReportError with the install hint. Output is
deterministic: SVG ids are salted with a constant and carry no date.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fulcrum.inspect.inspection import Inspection, NodeRow
from scheduler.pod import GPU_MILLI

RESOURCES = (("cpu", "cpu"), ("memory", "memory"), ("pods", "pods"), ("GPU", "gpus"))
INSTALL_HINT = "install fulcrum[report] for --html"
TOP = 25  # rows of a bar chart or a table; the rest is counted, not drawn
NO_RESOURCE, OVER_COMMITTED, PADDING = "#d9d9d9", "#d62728", "white"
USED, FREE = "#3b6ea8", "#c9d9ec"
PHASE_COLOURS = {"Held": "#3b6ea8", "Claimed": "#2ca02c", "Expired": "#d62728"}
_RC: dict[str, Any] = {
    "svg.hashsalt": "fulcrum",  # stable ids: the same input gives the same file
    "svg.fonttype": "none",  # text stays text: small, selectable, searchable
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # what matplotlib measures with; then any sans-serif
    "font.size": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9.5,
}
Draw = Callable[[Any], None]  # draws on a matplotlib Figure


class ReportError(Exception):
    """No report: matplotlib is missing, or an input is not what the report reads."""


def require() -> None:
    """Raise ReportError unless matplotlib is installed (call it before a slow step)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError(f"matplotlib is not installed: {INSTALL_HINT}") from exc


def _svg(size: tuple[float, float], draw: Draw) -> str:
    """``draw`` on a new Figure of ``size`` inches, as an inline ``<svg>`` element."""
    require()
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=size, layout="constrained")
        draw(figure)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    text = out.getvalue()
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.S)


def _nothing(ax: Any, text: str) -> None:
    """An axes that says there is nothing to draw, instead of an empty frame."""
    ax.text(0.5, 0.5, text, ha="center", va="center", color="grey", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def fractions(nodes: Sequence[NodeRow]) -> NDArray[np.float64]:
    """Nodes x RESOURCES, used / allocatable; NaN where a node has none of the resource."""
    pairs = np.array(
        [[getattr(n, attr) for _, attr in RESOURCES] for n in nodes], dtype=np.float64
    ).reshape(len(nodes), len(RESOURCES), 2)
    used, total = pairs[..., 0], pairs[..., 1]
    out = np.full(used.shape, np.nan)
    np.divide(used, total, out=out, where=total > 0)
    return out


def cluster_pct(nodes: Sequence[NodeRow], attr: str) -> float | None:
    """The whole cluster's allocation of one NodeRow resource (``cpu``, ``gpus``...), in %."""
    used = sum(getattr(n, attr)[0] for n in nodes)
    total = sum(getattr(n, attr)[1] for n in nodes)
    return 100 * used / total if total else None


def _busiest_first(nodes: Sequence[NodeRow], shares: NDArray[np.float64]) -> NDArray[np.intp]:
    """Node order by mean allocation over the resources each has, busiest first, ties by name."""
    present = np.maximum((~np.isnan(shares)).sum(axis=1), 1)
    mean = np.nan_to_num(shares).sum(axis=1) / present
    return np.lexsort((np.array([n.name for n in nodes]), -mean))


def heatmap(nodes: Sequence[NodeRow], shares: NDArray[np.float64]) -> str:
    """One panel per resource, one cell per node, a node in the same cell in every panel."""
    from matplotlib import colormaps

    cols = math.ceil(math.sqrt(len(nodes)))
    rows = math.ceil(len(nodes) / cols)
    order = _busiest_first(nodes, shares)
    cmap = colormaps["viridis"].with_extremes(bad=NO_RESOURCE, under=PADDING, over=OVER_COMMITTED)

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(RESOURCES))
        for k, (ax, (label, attr)) in enumerate(zip(axes, RESOURCES, strict=True)):
            grid = np.full(rows * cols, -1.0)
            grid[: len(nodes)] = shares[order, k]
            image = ax.imshow(
                grid.reshape(rows, cols), cmap=cmap, vmin=0, vmax=1, interpolation="none"
            )
            pct = cluster_pct(nodes, attr)
            ax.set_title(f"{label}: " + ("none" if pct is None else f"{pct:.0f}% allocated"))
            ax.set_axis_off()
        bar = fig.colorbar(image, ax=axes, extend="max", shrink=0.85, aspect=15)
        bar.set_label("fraction allocated")

    return _svg((10.5, 0.7 + 2.2 * rows / cols), draw)


def histograms(nodes: Sequence[NodeRow], shares: NDArray[np.float64]) -> str:
    """Per resource, how many nodes sit at each level of allocation."""
    bins = np.linspace(0, 100, 21)

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(RESOURCES), sharey=True)
        axes[0].set_ylabel("nodes")
        for k, (ax, (label, attr)) in enumerate(zip(axes, RESOURCES, strict=True)):
            values = shares[:, k][~np.isnan(shares[:, k])] * 100
            ax.set_xlabel(f"{label} allocated (%)")
            if not len(values):
                _nothing(ax, f"no node has {label}")
                continue
            ax.hist(np.clip(values, 0, 100), bins=bins, color=USED, histtype="stepfilled")
            ax.axvline(cluster_pct(nodes, attr), color="black", linestyle="--", linewidth=0.9)
            ax.set_title(f"{label}: {len(values)} nodes")
            ax.set_xlim(0, 100)

    return _svg((10.5, 2.2), draw)


def fragmentation(report: Inspection) -> str:
    """Free and fragmented GPUs per GPU node, most fragmented first; stranded resources."""
    gpu_nodes = sorted(
        (n for n in report.nodes if n.gpus[1]), key=lambda n: (-n.fragment_milli, n.name)
    )
    free = np.array([(n.gpus[1] - n.gpus[0]) / GPU_MILLI for n in gpu_nodes])
    fragmented = np.array([n.fragment_milli / GPU_MILLI for n in gpu_nodes])
    stranded = Counter(n.stranded for n in report.nodes if n.stranded).most_common(8)[::-1]

    def draw(fig: Any) -> None:
        left, right = fig.subplots(1, 2, width_ratios=(3, 2))
        left.set_title(f"GPU fragmentation: {report.fragmentation_pct:.2f}% of the GPUs")
        if gpu_nodes:
            left.stairs(free, fill=True, color=FREE, label="free GPUs")
            left.stairs(fragmented, fill=True, color=OVER_COMMITTED, label="of which fragmented")
            left.set(xlabel="GPU nodes, most fragmented first", ylabel="GPUs", xlim=(0, len(free)))
            left.legend(loc="upper right", frameon=False)
        else:
            _nothing(left, "no GPU nodes")
        right.set_title("nodes stranding resources")
        if stranded:
            right.barh(range(len(stranded)), [c for _, c in stranded], color=USED)
            right.set_yticks(range(len(stranded)), [s for s, _ in stranded])
            right.set_xlabel("nodes")
        else:
            _nothing(right, "no node strands a resource")

    return _svg((10.5, 2.6), draw)


def _age_unit(seconds: float) -> tuple[float, str]:
    for scale, unit in ((86400.0, "days"), (3600.0, "hours"), (60.0, "minutes")):
        if seconds >= 2 * scale:
            return scale, unit
    return 1.0, "seconds"


def reservations(held: Sequence[Mapping[str, Any]]) -> str:
    """Each Reservation's age, oldest first, coloured by phase."""
    shown = sorted(held, key=lambda r: (-(r["age_s"] or 0), r["name"]))[:TOP][::-1]
    ages = [float(r["age_s"] or 0) for r in shown]
    scale, unit = _age_unit(max(ages))

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        colours = [PHASE_COLOURS.get(r["phase"], "grey") for r in shown]
        ax.barh(range(len(shown)), [a / scale for a in ages], color=colours)
        ax.set_yticks(range(len(shown)), [f"{r['name']} \u2192 {r['node']}" for r in shown])
        ax.set_xlabel(f"age ({unit})")
        for phase in sorted({r["phase"] for r in shown}):
            ax.bar(0, 0, color=PHASE_COLOURS.get(phase, "grey"), label=phase)
        ax.legend(loc="lower right", frameon=False)

    return _svg((5.2, 0.9 + 0.2 * len(shown)), draw)


def pools(listed: Sequence[Mapping[str, Any]]) -> str:
    """Used and free addresses per IP pool, largest first."""
    shown = sorted(listed, key=lambda p: (-(p["used"] + p["free"]), p["name"]))[:TOP][::-1]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        rows = range(len(shown))
        used, free = [p["used"] for p in shown], [p["free"] for p in shown]
        ax.barh(rows, used, color=USED, label="used")
        ax.barh(rows, free, left=used, color=FREE, label="free")
        ax.set_yticks(rows, [p["name"] for p in shown])
        for row, (u, f) in enumerate(zip(used, free, strict=True)):
            ax.text(u + f, row, f" {u} of {u + f}", va="center", fontsize=7.5)
        ax.set_xlim(0, 1.2 * max(u + f for u, f in zip(used, free, strict=True)))
        ax.set_xlabel("addresses")
        fig.legend(loc="outside upper center", ncols=2, frameon=False)

    return _svg((5.2, 0.9 + 0.2 * len(shown)), draw)


def curves(document: Mapping[str, Any], key: str) -> Any:
    """Seeds x arrived %, masked where the run never got there."""
    values = [[np.nan if v is None else v for v in s[key]] for s in document["seeds"]]
    return np.ma.masked_invalid(np.array(values, dtype=np.float64))


def _plot_runs(ax: Any, runs: Sequence[tuple[str, Any]]) -> None:
    """The mean over seeds per run, and the band from the lowest to the highest seed."""
    for i, (label, seeds) in enumerate(runs):
        x = np.arange(seeds.shape[1])
        ax.plot(x, seeds.mean(axis=0).filled(np.nan), color=f"C{i % 10}", lw=1.3, label=label)
        if seeds.shape[0] > 1:
            low, high = seeds.min(axis=0).filled(np.nan), seeds.max(axis=0).filled(np.nan)
            ax.fill_between(x, low, high, color=f"C{i % 10}", alpha=0.18, linewidth=0)
    ax.set_xlabel("arrived GPU workload (% of the cluster's GPUs)")
    ax.grid(alpha=0.3)


def allocation(runs: Sequence[tuple[str, Any]]) -> str:
    """GPU allocation against arrived workload, as the FGD paper draws it, and a zoom on its
    end where the policies part."""

    def draw(fig: Any) -> None:
        whole, zoom = fig.subplots(1, 2)
        for ax in (whole, zoom):
            _plot_runs(ax, runs)
            ax.plot([0, 100], [0, 100], color="grey", linestyle=":", lw=0.9, label="arrived")
            ax.axvline(100, color="grey", lw=0.6)
            ax.set_ylabel("GPU allocation (% of the GPUs)")
        whole.set(xlim=(0, None), ylim=(0, 102), title="the whole run")
        tail = np.concatenate([seeds.mean(axis=0).filled(np.nan)[80:] for _, seeds in runs])
        tail = tail[np.isfinite(tail)]
        low, high = (float(tail.min()), float(tail.max())) if len(tail) else (0.0, 100.0)
        zoom.set(xlim=(80, None), ylim=(low - 1, high + 1), title="arrived 80 % and on")
        zoom.legend(loc="lower right", fontsize=7.5)

    return _svg((10.5, 3.4), draw)


def fragmentation_curve(runs: Sequence[tuple[str, Any]]) -> str:
    """GPU fragmentation against arrived workload, one line per run."""

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        _plot_runs(ax, runs)
        ax.set_ylabel("fragmented GPUs (% of the GPUs)")
        ax.set(xlim=(0, None), ylim=(0, None))
        ax.legend(loc="upper right", fontsize=7.5)

    return _svg((10.5, 2.6), draw)


def comparison(rounds: Sequence[Mapping[str, Mapping[str, Any]]], lower_bound: int) -> str:
    """``fulcrum compare``: nodes used per round and scheduler against the lower bound, pods
    bound per second, and each process's CPU per bound pod (the mean over rounds)."""
    schedulers = list(rounds[0])

    def draw(fig: Any) -> None:
        nodes, speed, cpu = fig.subplots(1, 3)
        width, x = 0.8 / len(schedulers), np.arange(len(rounds))
        for i, name in enumerate(schedulers):
            runs = [r[name] for r in rounds]
            offset = x + (i - (len(schedulers) - 1) / 2) * width
            nodes.bar(offset, [r["nodes_used"] for r in runs], width, color=f"C{i}", label=name)
            speed.bar(offset, [r["throughput"] for r in runs], width, color=f"C{i}")
        nodes.axhline(lower_bound, color="black", lw=0.9, linestyle="--", label="lower bound")
        nodes.set(title="nodes used", xlabel="round", xticks=x, xticklabels=x + 1)
        speed.set(title="pods bound per second", xlabel="round", xticks=x, xticklabels=x + 1)
        processes = sorted({p for r in rounds for run in r.values() for p in run["cpu_seconds"]})
        processes = [p for p in processes if not p.startswith("(")]  # machine-wide lines
        bottom = np.zeros(len(schedulers))
        for j, proc in enumerate(processes):
            per_pod = np.array(
                [
                    np.mean(
                        [
                            1000 * r[s]["cpu_seconds"].get(proc, 0.0) / max(r[s]["bound"], 1)
                            for r in rounds
                        ]
                    )
                    for s in schedulers
                ]
            )
            cpu.bar(range(len(schedulers)), per_pod, bottom=bottom, color=f"C{j % 10}", label=proc)
            bottom += per_pod
        cpu.set(title="CPU ms per bound pod", xticks=range(len(schedulers)))
        cpu.set_xticklabels(schedulers, fontsize=7.5)
        cpu.legend(fontsize=6.5, loc="upper left")
        nodes.legend(fontsize=7.5, loc="lower right")

    return _svg((10.5, 3.4), draw)
