"""Garbage collection: abandoned Reservations and the addresses of vanished holders."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from kube import api, ippool
from rebuild import sweep as sweep_module
from tests.unit.rebuild_fake import HELD, IP, NEW, NODE, OLD, OPTED, cluster, held, node, pod


def test_an_address_of_a_missing_pod_is_released_on_the_second_sweep() -> None:
    live = pod(NEW, name="web-1")
    rig = cluster(("pods", live), allocations={IP: "pod:ghost", "10.0.0.3": f"pod:{NEW}"})

    rig.reconcile("sweep")
    assert ippool.holders(rig.apiserver.pool()) == {"pod:ghost": IP, f"pod:{NEW}": "10.0.0.3"}

    rig.reconcile("sweep")
    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": "10.0.0.3"}


def test_a_holder_that_shows_up_between_sweeps_is_kept() -> None:
    rig = cluster(allocations={IP: f"pod:{NEW}"})
    rig.reconcile("sweep")
    rig.apiserver.put("pods", pod(NEW, annotations=OPTED))  # created and bound just now

    rig.reconcile("sweep")
    rig.reconcile("sweep")

    assert ippool.holders(rig.apiserver.pool()) == {f"pod:{NEW}": IP}


def test_a_reservation_nobody_comes_back_for_is_dropped_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = cluster(("reservations", held()), allocations={IP: f"reservation:{HELD}"})

    rig.reconcile("sweep")
    rig.reconcile("sweep")  # two sweeps, but not ABANDON_SECONDS yet
    assert len(rig.apiserver.reservations()) == 1
    assert rig.apiserver.events == []

    monkeypatch.setattr(sweep_module, "ABANDON_SECONDS", 0.0)
    rig.reconcile("sweep")
    assert rig.apiserver.reservations() == []
    assert rig.apiserver.pool()["status"]["allocations"] == {}
    [event] = rig.apiserver.events
    assert event["reason"] == "RebuildAbandoned"
    assert event["involvedObject"]["kind"] == "Reservation"
    assert "released node n1 and IP 10.0.0.2" in event["message"]


def test_a_reservation_with_a_pending_successor_survives_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "ABANDON_SECONDS", 0.0)
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held()), ("pods", waiting), allocations={IP: f"reservation:{HELD}"}
    )

    for _ in range(3):
        rig.reconcile("sweep")

    assert len(rig.apiserver.reservations()) == 1
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert rig.apiserver.events == []


def test_a_reservation_survives_sweeps_while_its_predecessor_terminates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "ABANDON_SECONDS", 0.0)
    terminating = pod(OLD, finalized=False)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-27T08:00:00Z"
    rig = cluster(
        ("reservations", held()), ("pods", terminating), allocations={IP: f"reservation:{HELD}"}
    )

    rig.reconcile("sweep")
    rig.reconcile("sweep")

    assert len(rig.apiserver.reservations()) == 1


def test_a_wait_on_a_deleted_node_ends_at_the_next_sweep() -> None:
    """fallback: wait on a node that no longer exists would hold the pod and its IP forever."""
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held()), ("pods", waiting), allocations={IP: f"reservation:{HELD}"}
    )
    del rig.apiserver.nodes[NODE]

    rig.reconcile("sweep")

    [obj] = rig.apiserver.reservations()
    assert obj["status"]["phase"] == "Expired"
    assert api.Reservation.from_object(obj).expires_at is not None  # its IP waits a grace only
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    status = orjson.loads(rig.apiserver.pod("web-0")["metadata"]["annotations"][api.STATUS])
    assert status["action"] == "fallback"
    assert status["reason"] == f"node {NODE} is gone: placing it normally, keeping IP {IP}"
    assert rig.apiserver.reasons() == ["RebuildFallback"]


@pytest.mark.parametrize(
    ("ready", "since", "ends"),
    [
        (False, timedelta(seconds=sweep_module.NOT_READY_SECONDS + 1), True),
        (False, timedelta(seconds=sweep_module.NOT_READY_SECONDS - 10), False),
        (True, timedelta(hours=1), False),
    ],
)
def test_a_wait_on_a_node_not_ready_past_the_bound_ends_as_on_a_deleted_node(
    ready: bool, since: timedelta, ends: bool
) -> None:
    """fallback: wait on a node that is NotReady but never deleted would hold forever."""
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(
        ("reservations", held()), ("pods", waiting), allocations={IP: f"reservation:{HELD}"}
    )
    rig.apiserver.nodes[NODE] = node(ready=ready, since=since)

    rig.reconcile("sweep")

    [obj] = rig.apiserver.reservations()
    if not ends:
        assert obj["status"]["phase"] == "Held"
        assert rig.apiserver.events == []
        return
    assert obj["status"]["phase"] == "Expired"
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    status = orjson.loads(rig.apiserver.pod("web-0")["metadata"]["annotations"][api.STATUS])
    assert status["action"] == "fallback"
    assert status["reason"] == (
        f"node {NODE} has not been Ready for over 300 s: placing it normally, keeping IP {IP}"
    )
    assert rig.apiserver.reasons() == ["RebuildFallback"]


def test_the_not_ready_bound_is_a_setting() -> None:
    waiting = pod(NEW, node_name=None, annotations=OPTED, finalized=False)
    rig = cluster(("reservations", held()), ("pods", waiting))
    rig.controller.sweep.not_ready_seconds = 30
    rig.apiserver.nodes[NODE] = node(ready=False, since=timedelta(seconds=31))

    rig.reconcile("sweep")

    [obj] = rig.apiserver.reservations()
    assert obj["status"]["phase"] == "Expired"
