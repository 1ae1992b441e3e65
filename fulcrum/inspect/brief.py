"""The seed's report form for the cluster checks: per section a brief (each check against
Error, Alarm, Warn and Info, counted over its targets), then every result worse than Info, and
a one-line verdict per section in the way JDOS's mail subject put it:
``etcd: errors: none, alarms: none, warnings: 1``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fulcrum.inspect.cluster_checks import SECTIONS, Result
from node.plugin import Severity

COLUMNS = ("Error", "Alarm", "Warn", "Info")
KEYS = ("error", "alarm", "warn", "info")


@dataclass
class Section:
    name: str
    results: list[Result] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(KEYS, 0)
        for r in self.results:
            counts[r.severity.label.lower()] += 1
        return counts

    @property
    def table(self) -> dict[str, dict[str, int]]:
        """check -> column -> how many targets, in the order the checks ran."""
        rows: dict[str, dict[str, int]] = {}
        for r in self.results:
            rows.setdefault(r.check, dict.fromkeys(COLUMNS, 0))[r.severity.label] += 1
        return rows

    @property
    def details(self) -> list[Result]:
        """Every result worse than Info, worst first."""
        worse = [r for r in self.results if r.severity > Severity.INFO]
        return sorted(worse, key=lambda r: (-r.severity, r.check, r.target))

    @property
    def failing(self) -> bool:
        return any(r.severity >= Severity.ALARM for r in self.results)

    @property
    def verdict(self) -> str:
        s = self.summary

        def said(n: int) -> str:
            return str(n) if n else "none"

        return (
            f"{self.name}: errors: {said(s['error'])}, alarms: {said(s['alarm'])}, "
            f"warnings: {said(s['warn'])}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "summary": self.summary,
            "checks": [r.to_json() for r in self.results],
        }


def sections(results: Sequence[Result]) -> list[Section]:
    """The results grouped into the sections, in SECTIONS' order."""
    found = {name: Section(name) for name in SECTIONS}
    for r in results:
        found.setdefault(r.section, Section(r.section)).results.append(r)
    return list(found.values())


def _shown(value: float | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render(sections_: Sequence[Section], *, window: str) -> list[str]:
    """The sections as text: the verdicts first (the mail's subject), then per section its
    table and its details."""
    lines = ["cluster checks (" + window + "):"]
    lines += [f"  {s.verdict}" for s in sections_]
    for s in sections_:
        lines.append(f"{s.name}:")
        table = s.table
        if not table:
            lines.append("  no checks")
            continue
        width = max(28, *(len(c) + 1 for c in table))
        lines.append(f"  {'check':{width}}" + "".join(f"{c:>7}" for c in COLUMNS))
        lines += [
            f"  {check:{width}}" + "".join(f"{row[c]:>7}" for c in COLUMNS)
            for check, row in table.items()
        ]
        rows = [("severity", "target", "check", "value", "threshold", "message")] + [
            (r.severity.label, r.target, r.check, _shown(r.value), _shown(r.threshold), r.message)
            for r in s.details
        ]
        if len(rows) > 1:
            widths = [max(len(row[i]) for row in rows) for i in range(5)]
            lines += [
                "  "
                + "  ".join(f"{c:{w}}" for c, w in zip(row, widths, strict=False))
                + "  "
                + row[5]
                for row in rows
            ]
        info = [r for r in s.results if r.severity == Severity.INFO and r.check.endswith("metrics")]
        lines += [f"  {r.target}: {r.message}" for r in info]
    return lines


def _rows(headers: Sequence[str], rows: Sequence[Sequence[object]], name: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(v if isinstance(v, str) else _shown(v))}</td>"  # type: ignore[arg-type]
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def to_html(sections_: Sequence[Section], *, window: str) -> str:
    """The sections for ``fulcrum inspect --html``: verdicts, then per section its brief and
    details (at most 100 rows)."""
    parts = [f'<section id="cluster-checks"><h2>Cluster checks ({html.escape(window)})</h2><ul>']
    parts += [
        f'<li class="{"fail" if s.failing else "pass"}" data-verdict="{s.name}">'
        f"{html.escape(s.verdict)}</li>"
        for s in sections_
    ]
    parts.append("</ul>")
    for s in sections_:
        parts.append(f"<h2>{html.escape(s.name)}</h2>")
        parts.append(
            _rows(
                ("check", *COLUMNS),
                [(c, *row.values()) for c, row in s.table.items()],
                f"brief-{s.name}",
            )
        )
        details = [
            (r.severity.label, r.target, r.check, r.value, r.threshold, r.message)
            for r in s.details[:100]
        ]
        if details:
            parts.append(
                _rows(
                    ("severity", "target", "check", "value", "threshold", "message"),
                    details,
                    f"details-{s.name}",
                )
            )
    parts.append("</section>")
    return "".join(parts)
