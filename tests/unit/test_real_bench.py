"""fulcrum bench-rebuild's arithmetic: the phases of each successor from watch and Event times,
and local over plain per round."""

from __future__ import annotations

import time
from typing import Any

from fulcrum.lab import real_bench as rb


class _Kit:
    """Enough of rebuild_run.Kit for _Phases to build its informers (never started here)."""

    class core:
        @staticmethod
        def list_namespaced_pod(*args: Any, **kwargs: Any) -> None: ...

        @staticmethod
        def list_namespaced_event(*args: Any, **kwargs: Any) -> None: ...


def _pod(
    uid: str, name: str, *, deleting: bool = False, node: str = "", ready: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid, "name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def _event(pod: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"involvedObject": {"name": pod}, "reason": reason, "message": message}


def test_each_phase_comes_from_its_own_signal(monkeypatch: Any) -> None:
    clock = iter([10.0, 10.3, 10.8, 11.0, 12.9, 13.2])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    phases = rb._Phases(_Kit())  # type: ignore[arg-type]
    pulls = rb._Pulls(phases)
    phases.changed = 9.5  # kubectl set image
    phases.apply("pods", "MODIFIED", _pod("old", "a", deleting=True, node="real-1"))  # 10.0
    phases.apply("pods", "ADDED", _pod("new", "b", node="real-1"))  # 10.3: bound
    pulls.apply("events", "ADDED", _event("b", "Pulling"))  # 10.8: the sandbox is up
    pulls.apply(
        "events",
        "ADDED",
        _event("b", "Pulled", 'Successfully pulled image "r/app:v2" in 1.5s (1.5s including'),
    )  # 11.0
    pulls.apply("events", "ADDED", _event("b", "Started"))  # 12.9
    phases.apply("pods", "MODIFIED", _pod("new", "b", node="real-1", ready=True))  # 13.2
    split = phases.split({"old"}, ["new"])
    assert split["held"] == 0.5  # the change -> the first predecessor terminating
    assert round(split["wait"], 3) == 0.3
    assert round(split["sandbox"], 3) == 0.5
    assert split["pull"] == 1.5
    assert round(split["start"], 3) == 0.6  # 12.9 - 10.8 - 1.5
    assert round(split["ready"], 3) == 0.3


def test_pulls_in_milliseconds_are_read_as_such() -> None:
    phases = rb._Phases(_Kit())  # type: ignore[arg-type]
    message = 'Successfully pulled image "r/app:v2" in 70ms (70ms including waiting)'
    rb._Pulls(phases).apply("events", "ADDED", _event("b", "Pulled", message))
    assert phases.pulls["b"] == 0.07


def test_the_ratio_is_the_median_of_each_rounds_pair() -> None:
    result = rb.Result(rb.Config(rounds=3))
    for r, (local, plain) in enumerate([(4.0, 2.0), (3.0, 3.0), (1.0, 4.0)]):
        result.rollouts.append(rb.Rollout("env", "local", r, local, {}, ""))
        result.rollouts.append(rb.Rollout("env", "plain", r, plain, {}, ""))
    assert result.ratio("env") == 1.0  # of 2.0, 1.0 and 0.25
    assert result.to_json()["ratio_local_over_plain"]["env"] == 1.0
