"""How node check results leave the node, and how they are read back.

From the results of one round of checks (``node/checks.py``), the agent publishes:

- the node annotation ``fulcrum.io/node-checks`` (:func:`annotation_patch`): compact JSON,
  ``{"time": ISO 8601, "agent": version, "checks": [{"check", "severity", "value",
  "threshold", "message"}]}``, kept under 32 KiB (long messages are cut, then Info results
  dropped and counted in ``"omitted"``), which ``fulcrum inspect`` reads on every node;
- the NodeCondition ``FulcrumNodeChecks`` (:func:`status_patch`): status "True" when any check
  is an Error (reason ``CheckError``, the message naming them), "False" otherwise (reason
  ``ChecksPassed``), the way node-problem-detector reports problems, so ``kubectl describe
  node`` shows it;
- Prometheus gauges (:class:`CheckMetrics`): ``fulcrum_node_check_severity{check}`` (0 Info ..
  3 Error) and ``fulcrum_node_check_value{check}`` for the checks with a number.

:func:`read_annotation` reads the annotation back, as any reader of a cluster must: a node
may carry anything there, so what is not the format raises :class:`AnnotationError` (naming
what is wrong) and a bad entry is skipped and named, never a crash.

Imports stay light (the standard library, ``node.plugin``; prometheus_client only for the
metrics): ``fulcrum.inspect`` imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from node.plugin import CheckResult, Severity

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

ANNOTATION = "fulcrum.io/node-checks"
CONDITION = "FulcrumNodeChecks"
MAX_BYTES = 32 * 1024
MESSAGE_CHARS = 300  # per result in the annotation
VALUE_CHARS = 200
CONDITION_CHARS = 1024
SEVERITIES = {s.label: s for s in Severity}  # "Error" -> Severity.ERROR


class AnnotationError(ValueError):
    """An annotation that is not the node checks' format; the message says what is wrong."""


def _time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry(result: CheckResult, chars: int) -> dict[str, Any]:
    message = (
        result.message if len(result.message) <= chars else result.message[: chars - 1] + "\u2026"
    )
    return {
        "check": result.check[:100],
        "severity": result.severity.label,
        "value": _finite(result.value),
        "threshold": _finite(result.threshold),
        "message": message,
    }


def _finite(value: float | str | None) -> float | str | None:
    """JSON has no NaN or infinity: such a value goes as its text; a long text is cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > VALUE_CHARS:
        return value[: VALUE_CHARS - 1] + "\u2026"
    return value


def _dump(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def annotation_value(results: Sequence[CheckResult], *, agent: str, now: datetime) -> str:
    """The annotation's JSON, under :data:`MAX_BYTES`: messages cut to 300 characters, then,
    if it is still too long, Info results dropped (counted in ``omitted``), then messages cut
    to 60; the worst results are kept longest."""
    ordered = sorted(results, key=lambda r: (-r.severity, r.check))
    head: dict[str, Any] = {"time": _time(now), "agent": agent}
    for chars, keep_info in ((MESSAGE_CHARS, True), (MESSAGE_CHARS, False), (60, False)):
        kept = [r for r in ordered if keep_info or r.severity > Severity.INFO]
        document = {**head, "checks": [_entry(r, chars) for r in kept]}
        if len(kept) < len(ordered):
            document["omitted"] = len(ordered) - len(kept)
        text = _dump(document)
        if len(text.encode()) <= MAX_BYTES:
            return text
    # thousands of failing checks: keep as many of the worst as fit
    entries = [_entry(r, 60) for r in ordered if r.severity > Severity.INFO]
    while entries:
        entries = entries[: len(entries) * 3 // 4]
        document = {**head, "checks": entries, "omitted": len(ordered) - len(entries)}
        text = _dump(document)
        if len(text.encode()) <= MAX_BYTES:
            return text
    return _dump({**head, "checks": [], "omitted": len(ordered)})


def annotation_patch(
    results: Sequence[CheckResult], *, agent: str, now: datetime
) -> dict[str, Any]:
    """A merge patch of the Node setting the annotation."""
    value = annotation_value(results, agent=agent, now=now)
    return {"metadata": {"annotations": {ANNOTATION: value}}}


def node_condition(
    results: Iterable[CheckResult],
    now: datetime,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``FulcrumNodeChecks`` condition; ``previous`` (the node's current one, if any)
    keeps its lastTransitionTime while the status stays."""
    results = list(results)
    errors = sorted({r.check for r in results if r.severity is Severity.ERROR})
    alarms = sorted({r.check for r in results if r.severity is Severity.ALARM})
    status = "True" if errors else "False"
    if errors:
        message = f"{len(errors)} check(s) in Error: {', '.join(errors)}"
        first = next(r for r in results if r.severity is Severity.ERROR)
        message += f" ({first.check}: {first.message})"
    else:
        message = f"{len(results)} checks, none in Error"
    if alarms:
        message += f"; in Alarm: {', '.join(alarms)}"
    if len(message) > CONDITION_CHARS:
        message = message[: CONDITION_CHARS - 1] + "\u2026"
    stamp = _time(now)
    transition = stamp
    if previous is not None and previous.get("status") == status:
        transition = str(previous.get("lastTransitionTime") or stamp)
    return {
        "type": CONDITION,
        "status": status,
        "reason": "CheckError" if errors else "ChecksPassed",
        "message": message,
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": transition,
    }


def status_patch(
    results: Iterable[CheckResult],
    now: datetime,
    conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The body of a **strategic merge** patch of ``nodes/status`` setting the condition
    (conditions merge by type there; a JSON merge patch would replace the kubelet's own).
    ``conditions``: the node's current ones, for the transition time."""
    previous = next((c for c in conditions if c.get("type") == CONDITION), None)
    return {"status": {"conditions": [node_condition(results, now, previous)]}}


class CheckMetrics:
    """``fulcrum_node_check_severity{check}`` and ``fulcrum_node_check_value{check}`` in
    ``registry``; :meth:`update` with each round's results (a check no longer reported, or
    no longer with a number, loses its series)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Gauge

        self.severity = Gauge(
            "fulcrum_node_check_severity",
            "The node check's last result: 0 Info, 1 Warn, 2 Alarm, 3 Error",
            ["check"],
            registry=registry,
        )
        self.value = Gauge(
            "fulcrum_node_check_value",
            "The node check's last measured value, in the unit of its thresholds",
            ["check"],
            registry=registry,
        )
        self._severities: set[str] = set()
        self._values: set[str] = set()

    def update(self, results: Iterable[CheckResult]) -> None:
        severities: set[str] = set()
        values: set[str] = set()
        for r in results:
            self.severity.labels(check=r.check).set(int(r.severity))
            severities.add(r.check)
            if isinstance(r.value, int | float) and not isinstance(r.value, bool):
                self.value.labels(check=r.check).set(float(r.value))
                values.add(r.check)
        for gone in self._severities - severities:
            self.severity.remove(gone)
        for gone in self._values - values:
            self.value.remove(gone)
        self._severities, self._values = severities, values


# --- the reader ---------------------------------------------------------------------------------


@dataclass
class NodeChecksDocument:
    """The annotation, read: when and by which agent, the results, and what was skipped."""

    time: datetime
    agent: str
    results: list[CheckResult]
    omitted: int = 0
    skipped: list[str] = field(default_factory=list)


def _scalar(entry: Mapping[str, Any], key: str) -> float | str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise ValueError(f"{key} {value!r} is not a number, a string or null")


def _result(entry: Any) -> CheckResult:
    if not isinstance(entry, Mapping):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    check, severity = entry.get("check"), entry.get("severity")
    if not isinstance(check, str) or not check:
        raise ValueError("no check name")
    if severity not in SEVERITIES:
        raise ValueError(f"{check}: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    message = entry.get("message", "")
    if not isinstance(message, str):
        raise ValueError(f"{check}: message is not a string")
    try:
        value, threshold = _scalar(entry, "value"), _scalar(entry, "threshold")
    except ValueError as exc:
        raise ValueError(f"{check}: {exc}") from None
    return CheckResult(check[:100], SEVERITIES[severity], message[:1000], value, threshold)


def read_annotation(raw: str) -> NodeChecksDocument:
    """The annotation's document; AnnotationError when it is not one (what is wrong named),
    each unreadable entry skipped and listed in ``skipped``."""
    if len(raw.encode(errors="replace")) > 4 * MAX_BYTES:
        raise AnnotationError(f"{len(raw)} characters: far over the agent's {MAX_BYTES} bytes")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise AnnotationError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise AnnotationError(f"expected a JSON object, got {type(document).__name__}")
    stamp, agent, checks = document.get("time"), document.get("agent", ""), document.get("checks")
    try:
        time = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise AnnotationError(f"time {stamp!r} is not an ISO 8601 time") from None
    if time.tzinfo is None:
        raise AnnotationError(f"time {stamp!r} has no zone (the agent writes UTC, ...Z)")
    if not isinstance(checks, list):
        raise AnnotationError("no list of checks")
    omitted = document.get("omitted", 0)
    out = NodeChecksDocument(
        time,
        str(agent)[:100],
        [],
        omitted if isinstance(omitted, int) and not isinstance(omitted, bool) else 0,
    )
    for i, entry in enumerate(checks):
        try:
            out.results.append(_result(entry))
        except ValueError as exc:
            out.skipped.append(f"checks[{i}]: {exc}")
    return out


def worst(results: Iterable[CheckResult]) -> Severity:
    """The most severe of ``results`` (Info for none)."""
    return max((r.severity for r in results), default=Severity.INFO)
