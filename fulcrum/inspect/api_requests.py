"""``fulcrum inspect --api``: the apiserver's requests by resource and verb over a window, from
``apiserver_request_total`` (counts and return codes) and ``apiserver_request_duration_seconds``
(p50 and p99 from its buckets), sorted by count, naming the resources that dominate. The seed's
analysis found configmaps made 99 % of all requests this way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fulcrum.inspect import metrics, probe

DOMINANT = 0.2  # a resource with at least this share of the requests is named
LISTED = 30  # rows in the text table


@dataclass
class Row:
    resource: str  # "configmaps", "pods/binding", "leases.coordination.k8s.io", "/healthz"
    verb: str
    count: float
    rate: float | None  # per second; None without a window
    p50_ms: float | None
    p99_ms: float | None
    codes: dict[str, float]


def _resource(labels: dict[str, str]) -> str:
    resource, sub, group = labels.get("resource"), labels.get("subresource"), labels.get("group")
    if (
        not resource
    ):  # a non-resource URL (/healthz, /metrics): the apiserver puts it in subresource
        return sub or "(non-resource)"
    name = f"{resource}/{sub}" if sub else resource
    return f"{name}.{group}" if group else name


def scrape(api_client: Any) -> metrics.Scrape:
    """The apiserver's /metrics now, read with ``api_client``'s credentials; RuntimeError when
    it answers other than 200 (an unreachable apiserver: urllib3's error)."""
    status, text = probe.apiserver_getter(api_client)("/metrics")
    if status != 200:
        raise RuntimeError(f"the apiserver's /metrics answered {status}: {text.strip()[:200]}")
    return metrics.parse(text, probe.APISERVER_FAMILIES)


def analyse(scrape: metrics.Scrape) -> list[Row]:
    """Rows by (resource, verb), the most requested first."""
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in scrape.series("apiserver_request_total"):
        counts[(_resource(labels), labels.get("verb", ""))][labels.get("code", "")] += value
    latency = metrics.buckets(
        scrape,
        "apiserver_request_duration_seconds",
        lambda labels: f"{_resource(labels)}\t{labels.get('verb', '')}",
    )
    rows = []
    for (resource, verb), codes in counts.items():
        count = sum(codes.values())
        if count <= 0:
            continue
        rows_ = latency.get(f"{resource}\t{verb}", [])
        p50, p99 = metrics.quantile(0.5, rows_), metrics.quantile(0.99, rows_)
        rows.append(
            Row(
                resource,
                verb,
                count,
                round(count / scrape.window, 2) if scrape.window > 0 else None,
                None if p50 is None else round(p50 * 1000, 1),
                None if p99 is None else round(p99 * 1000, 1),
                {c: v for c, v in sorted(codes.items()) if v > 0},
            )
        )
    return sorted(rows, key=lambda r: (-r.count, r.resource, r.verb))


def dominant(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Resources (all verbs together) by their share of the requests: the top one always, and
    every other with at least DOMINANT of them."""
    per: dict[str, float] = defaultdict(float)
    for r in rows:
        per[r.resource] += r.count
    total = sum(per.values())
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    return [
        {"resource": name, "count": n, "share": round(n / total, 4)}
        for i, (name, n) in enumerate(ranked)
        if total and (i == 0 or n / total >= DOMINANT)
    ]


def document(scrape: metrics.Scrape) -> dict[str, Any]:
    rows = analyse(scrape)
    return {
        "window_s": scrape.window,
        "since": scrape.since,
        "total": sum(r.count for r in rows),
        "dominant": dominant(rows),
        "api_requests": [asdict(r) for r in rows],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def render(doc: dict[str, Any], *, listed: int = LISTED) -> str:
    """The table, the ``listed`` most requested rows."""
    rows = doc["api_requests"]
    lines = [f"apiserver requests {doc['since']}: {doc['total']:g} in all"]
    for d in doc["dominant"]:
        lines.append(f"  {d['resource']} made {100 * d['share']:.1f} % of them ({d['count']:g})")
    table = [("resource", "verb", "count", "rate/s", "p50 ms", "p99 ms", "codes")] + [
        (
            r["resource"],
            r["verb"],
            f"{r['count']:g}",
            "-" if r["rate"] is None else f"{r['rate']:g}",
            _ms(r["p50_ms"]),
            _ms(r["p99_ms"]),
            " ".join(f"{c}:{n:g}" for c, n in r["codes"].items()),
        )
        for r in rows[:listed]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    for row in table:
        cells = [
            f"{c:{w}}" if i < 2 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  " + "  ".join(cells) + "  " + row[6])
    if len(rows) > listed:
        lines.append(f"  and {len(rows) - listed} more (-o json has them all)")
    return "\n".join(lines)
