"""``fulcrum inspect --record DIR``: each run appended to a history, one JSON file per run named
by its time, so that runs from a CronJob never write the same file and a directory listing is the
history in order. ``fulcrum report DIR`` draws the trends (``fulcrum.inspect.history_report``).

A record keeps what the trends need, not the whole report: the time, each section's summary, the
checks worse than Info (Info results are the bulk at 1,000 nodes and say "fine"), the node count
and the Ready nodes, the cluster's allocatable and requested resources, the active pod count,
each node's allocation rate, the apiserver's requests by return code and their latency over the
window, and the scheduling attempt latency when kube-scheduler was read.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fulcrum.inspect import metrics
from fulcrum.inspect.cluster_checks import LONG_VERBS
from fulcrum.inspect.probe import ClusterView
from kube import objects

VERSION = 1
SUFFIX = ".inspection.json"
RESOURCES = ("cpu", "memory", "pods", "gpus")  # NodeRow's (used, allocatable) pairs


class HistoryError(Exception):
    """No history: the directory is missing, empty or holds a record that is not one."""


def _api(view: ClusterView | None) -> dict[str, Any] | None:
    """Requests by return code, their rate and the p50/p99 latency (long verbs left out)."""
    if view is None or view.apiserver.window is None:
        return None
    window = view.apiserver.window
    codes = metrics.group_sum(window, "apiserver_request_total", lambda lb: lb.get("code", ""))
    rows = metrics.buckets(
        window,
        "apiserver_request_duration_seconds",
        lambda labels: None if labels.get("verb") in LONG_VERBS else "all",
    ).get("all", [])
    p50, p99 = metrics.quantile(0.5, rows), metrics.quantile(0.99, rows)
    return {
        "window_s": window.window,
        "codes": {c: v for c, v in sorted(codes.items()) if v > 0},
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
    }


def _scheduling(view: ClusterView | None) -> dict[str, Any] | None:
    """kube-scheduler's latency over the window, when its /metrics was read: of one attempt,
    and per pod from first queued to bound (the SLI, every attempt and the queue included)."""
    if view is None or view.scheduler.window is None:
        return None
    window = view.scheduler.window

    def ms(q: float, rows: list[tuple[float, float]]) -> float | None:
        found = metrics.quantile(q, rows)
        return None if found is None else round(found * 1000, 2)

    attempts = metrics.buckets(window, "scheduler_scheduling_attempt_duration_seconds").get("", [])
    pods = metrics.buckets(window, "scheduler_pod_scheduling_sli_duration_seconds").get("", [])
    return {
        "attempts": metrics.observed(attempts),
        "p50_ms": ms(0.5, attempts),
        "p99_ms": ms(0.99, attempts),
        "pods": metrics.observed(pods),
        "pod_p50_ms": ms(0.5, pods),
        "pod_p99_ms": ms(0.99, pods),
    }


def entry(
    now: datetime,
    document: Mapping[str, Any],
    view: ClusterView | None,
    nodes: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The record of one run, from ``fulcrum inspect -o json``'s document and what it read."""
    rows = document.get("nodes") or []
    resources = {
        r: {
            "requested": sum(row[r][0] for row in rows),
            "allocatable": sum(row[r][1] for row in rows),
        }
        for r in RESOURCES
    }
    allocation = {
        row["name"]: {r: round(row[r][0] / row[r][1], 4) for r in RESOURCES if row[r][1] > 0}
        for row in rows
    }
    return {
        "version": VERSION,
        "time": now.isoformat(),
        "unread": document.get("unread"),
        "sections": [{"name": s["name"], "summary": s["summary"]} for s in document["sections"]],
        "checks": [c for c in document["checks"] if c["severity"] != "Info"],
        "nodes": {"count": len(nodes), "ready": sum(1 for n in nodes if objects.ready(n))},
        "pods": len(pods),
        "resources": resources,
        "allocation": allocation,
        "api": _api(view),
        "scheduling": _scheduling(view),
    }


def record(directory: Path, record_: Mapping[str, Any]) -> Path:
    """Write one run's record into ``directory`` (made if missing) atomically; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(str(record_["time"])).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}{SUFFIX}"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record_, sort_keys=True), encoding="utf-8")
    os.replace(partial, path)
    return path


def load(directory: Path) -> list[dict[str, Any]]:
    """Every record in ``directory``, oldest first; HistoryError naming what is wrong."""
    if not directory.is_dir():
        raise HistoryError(f"{directory} is not a directory: give fulcrum inspect --record's DIR")
    records = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HistoryError(f"{path}: {exc}") from exc
        if not isinstance(found, dict) or found.get("version") != VERSION or "time" not in found:
            raise HistoryError(f"{path}: not a record of fulcrum inspect --record (version 1)")
        records.append(found)
    if not records:
        raise HistoryError(
            f"{directory} holds no *{SUFFIX}: run fulcrum inspect --record {directory}"
        )
    return sorted(records, key=lambda r: datetime.fromisoformat(r["time"]))


def severity_counts(record_: Mapping[str, Any]) -> dict[str, int]:
    """Error, Alarm, Warn and Info counted over every section of one record."""
    counts: dict[str, int] = defaultdict(int)
    for section in record_.get("sections") or []:
        for key, n in section["summary"].items():
            counts[key] += n
    return dict(counts)
