"""``fulcrum inspect``'s node checks: what every node's agent (``fulcrum node``, its
``node-checks`` plugin) last reported in the node annotation ``fulcrum.io/node-checks``.

In the form of JDOS's inspection reports: a table of each check against Error, Alarm, Warn
and Info counted over the nodes, then every result worse than Info with its node, value and
threshold. A node without the annotation runs no agent: kwok's fake nodes (annotated
``kwok.x-k8s.io/node: fake``) are counted in one line, the others listed. An annotation that
is not the format is named with what is wrong, never a crash (``node.check_report``), and a
report older than ``STALE_AFTER`` is flagged: its agent stopped reporting. An Error or Alarm
on any node fails the inspection (exit status 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from node.check_report import ANNOTATION, AnnotationError, read_annotation
from node.plugin import Severity

KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok fakes the nodes annotated so: they run nothing
STALE_AFTER = timedelta(minutes=10)
LISTED = 20  # nodes named in a text line before "and N more"
COLUMNS = ("Error", "Alarm", "Warn", "Info")


@dataclass
class NodeChecksSection:
    nodes: int = 0  # nodes in the cluster
    reporting: int = 0  # with a readable annotation
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # check -> column -> nodes
    details: list[dict[str, Any]] = field(default_factory=list)  # every result worse than Info
    failing: list[str] = field(default_factory=list)  # nodes with an Error or an Alarm
    no_agent: list[str] = field(default_factory=list)  # nodes without the annotation (not kwok)
    kwok: int = 0  # kwok's fake nodes without it
    unreadable: list[str] = field(default_factory=list)  # "node: what is wrong"
    stale: list[str] = field(default_factory=list)  # "node: last report at ..."


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _shown(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def node_checks(nodes: Sequence[Mapping[str, Any]], now: datetime) -> NodeChecksSection:
    """The section from the nodes' annotations, at ``now`` (timezone-aware)."""
    out = NodeChecksSection(nodes=len(nodes))
    for node in nodes:
        meta = node.get("metadata") or {}
        name = str(meta.get("name", ""))
        annotations = meta.get("annotations") or {}
        raw = annotations.get(ANNOTATION)
        if raw is None:
            if annotations.get(KWOK_ANNOTATION) == "fake":
                out.kwok += 1
            else:
                out.no_agent.append(name)
            continue
        try:
            document = read_annotation(str(raw))
        except AnnotationError as exc:
            out.unreadable.append(f"{name}: {ANNOTATION}: {exc}")
            continue
        out.reporting += 1
        out.unreadable += [f"{name}: {ANNOTATION}: {s}" for s in document.skipped]
        if now - document.time > STALE_AFTER:
            age = (now - document.time).total_seconds() / 60
            out.stale.append(f"{name}: last report {age:.0f} min ago")
        for r in document.results:
            column = out.counts.setdefault(r.check, dict.fromkeys(COLUMNS, 0))
            column[r.severity.label] += 1
            if r.severity > Severity.INFO:
                out.details.append(
                    {
                        "node": name,
                        "check": r.check,
                        "severity": r.severity.label,
                        "value": r.value,
                        "threshold": r.threshold,
                        "message": r.message,
                    }
                )
        if any(r.severity >= Severity.ALARM for r in document.results):
            out.failing.append(name)
    out.counts = dict(sorted(out.counts.items()))
    rank = {label: i for i, label in enumerate(COLUMNS)}
    out.details.sort(key=lambda d: (rank[d["severity"]], d["node"], d["check"]))
    return out


def _headline(section: NodeChecksSection) -> str:
    if not section.nodes:
        return "node checks: no nodes"
    kwok = f"; {section.kwok} kwok nodes run no agent (kwok fakes them)" if section.kwok else ""
    if not section.reporting and not section.unreadable:
        return f"node checks: no node reports (fulcrum node){kwok}"
    return f"node checks: {section.reporting} of {section.nodes} nodes report{kwok}"


def render_node_checks(section: NodeChecksSection) -> list[str]:
    """The section as text lines: the headline, the table, the details, the nodes without."""
    lines = [_headline(section)]
    if section.counts:
        width = max(24, *(len(c) + 1 for c in section.counts))
        lines.append(f"  {'check':{width}}" + "".join(f"{c:>7}" for c in COLUMNS))
        lines += [
            f"  {check:{width}}" + "".join(f"{row[c]:>7}" for c in COLUMNS)
            for check, row in section.counts.items()
        ]
    errors = sum(1 for d in section.details if d["severity"] == "Error")
    alarms = sum(1 for d in section.details if d["severity"] == "Alarm")
    if section.failing:
        lines.append(
            f"NODE CHECKS FAILING on {_count(len(section.failing), 'node')}: {errors} Error, "
            f"{alarms} Alarm ({_names(section.failing)})"
        )
    elif section.reporting:
        lines.append("  no Error or Alarm")
    if section.details:
        rows = [("node", "check", "severity", "value", "threshold", "message")] + [
            (
                d["node"],
                d["check"],
                d["severity"],
                _shown(d["value"]),
                _shown(d["threshold"]),
                d["message"],
            )
            for d in section.details
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines += [
            "  "
            + "  ".join(f"{cell:{w}}" for cell, w in zip(row, widths, strict=False))
            + "  "
            + row[5]
            for row in rows
        ]
    if section.no_agent:
        lines.append(
            f"  no agent on {_count(len(section.no_agent), 'node')}: {_names(section.no_agent)}"
        )
    lines += [f"  stale: {s}" for s in section.stale[:LISTED]]
    if len(section.stale) > LISTED:
        lines.append(f"  stale: and {len(section.stale) - LISTED} more")
    lines += [f"  unreadable: {u}" for u in section.unreadable[:LISTED]]
    if len(section.unreadable) > LISTED:
        lines.append(f"  unreadable: and {len(section.unreadable) - LISTED} more")
    return lines
