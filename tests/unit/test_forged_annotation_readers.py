"""Every reader of the annotations only Fulcrum writes checks them: one forged pod or Reservation
is reported and skipped (or read in part), and never stops the cache, the sweep or a
finalizer."""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from extender.app import create_app
from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from fulcrum.inspect.inspection import snapshot_of
from kube import api, ippool
from kube.resources import QuantityError, assigned_devices, parse_devices, pod_request, quantity
from rebuild import sweep as sweep_module
from tests import builders
from tests.unit.rebuild_fake import HELD, IP, OLD, OPTED, cluster, held, pod

# --- the readers ---------------------------------------------------------------------------------


BAD_DEVICES = ["0,0", "-1", "1,", ",", " 1", "\uff10", "1;2", "256", "0x1", "1" * 9]


@pytest.mark.parametrize("raw", BAD_DEVICES)
def test_device_lists_are_ascii_digits_distinct_and_bounded(raw: str) -> None:
    with pytest.raises(QuantityError, match=r"fulcrum\.io/gpu-devices"):
        parse_devices(raw)


def test_devices_must_be_as_many_as_the_pod_takes() -> None:
    assert parse_devices("0,3") == (0, 3)
    assert parse_devices("") == ()
    no_gpu = builders.pod("a", annotations={api.GPU_DEVICES: "0"})
    with pytest.raises(QuantityError, match="names 1 devices, but the pod takes 0 GPUs"):
        assigned_devices(no_gpu)
    two = builders.pod("b", requests={"nvidia.com/gpu": "2"}, annotations={api.GPU_DEVICES: "0,1"})
    assert assigned_devices(two) == (0, 1)


@pytest.mark.parametrize("value", ["NaN", "sNaN", "-NaN", "Infinity", "1e999999", "-1e999999"])
def test_quantities_that_are_no_amount_are_refused_with_their_field(value: str) -> None:
    for resource in ("cpu", "memory"):
        with pytest.raises(QuantityError, match=resource):
            quantity(resource, value)
    with pytest.raises(QuantityError, match=r"resources\.requests\.cpu"):
        pod_request(builders.pod("a", cpu=value))


@pytest.mark.parametrize(
    "milli", ["\uff15\uff10\uff10", "\u0665\u0660\u0660", "500 ", "+500", "0500000"]
)
def test_gpu_milli_is_ascii_digits(milli: str) -> None:
    with pytest.raises(QuantityError, match="ASCII"):
        pod_request(builders.pod("a", annotations={"fulcrum.io/gpu-milli": milli}))


@pytest.mark.parametrize("model", ["A" * 64, "A" * 200_000, "A100|-bad", "A100|V 100", "é"])
def test_gpu_models_are_node_label_values_and_the_message_is_short(model: str) -> None:
    with pytest.raises(QuantityError, match="not a node label value") as info:
        pod_request(builders.pod("a", annotations={"fulcrum.io/gpu-model": model}))
    assert len(str(info.value)) < 400


def test_a_scoped_address_is_refused_everywhere() -> None:
    options = api.read_options({api.IP_POOL: "web", api.IP_REQUEST: "fe80::1%eth0"})
    assert [e.annotation for e in options.errors] == [api.IP_REQUEST]
    with pytest.raises(ValueError, match=api.ASSIGNED_IP):
        api.assigned_ip({api.ASSIGNED_IP: "fe80::1%eth0"})
    assert api.assigned_ip({api.ASSIGNED_IP: "fd00:0::5"}) == "fd00::5"
    scoped = held()
    scoped["spec"]["ip"] = "fe80::1%eth0"
    with pytest.raises(ValueError, match=r"spec\.ip"):
        api.Reservation.from_object(scoped)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (api.GPU_DEVICES, "x"),
        (api.ASSIGNED_IP, "10.0.0.300"),
        (api.RESERVATION, "Not_A_Name"),
        (api.DECISION, "[1]"),
        (api.STATUS, "{" * 10),
        (api.STATUS, '{"reason": "' + "x" * 5000 + '"}'),
    ],
)
def test_written_problems_name_the_annotation(key: str, value: str) -> None:
    [problem] = api.written_problems({key: value})
    assert problem.annotation == key
    assert len(str(problem)) < 400


def test_what_fulcrum_writes_has_no_written_problems() -> None:
    written = {
        api.GPU_DEVICES: "0,1",
        api.ASSIGNED_IP: IP,
        api.RESERVATION: HELD,
        api.DECISION: '{"policy": "fgd", "node": "n1", "feasible": 1, "nodes": 1}',
        api.STATUS: '{"action": "claimed", "reason": "back on node n1", "time": "now"}',
    }
    assert api.written_problems(written) == []


# --- the extender's cache -------------------------------------------------------------------------


def test_a_forged_device_note_on_a_pod_without_gpus_never_stops_the_cache() -> None:
    cache = ClusterCache()
    forged = builders.pod("forged", node_name="n1", annotations={api.GPU_DEVICES: "0"})
    cache.replace("nodes", [builders.node("n1", gpus=2)])
    cache.replace("pods", [forged, builders.pod("ok", node_name="n1")])  # raised before

    assert cache.bound_node("forged") == "n1"  # still charged: it runs there
    assert cache.bound_node("ok") == "n1"
    assert "takes 0 GPUs" in cache.bad_objects["pod/ns/forged"]
    cache.apply("pods", "DELETED", forged)
    assert cache.bad_objects == {}


def test_devices_a_node_does_not_have_are_chosen_anew() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", builders.node("n1", gpus=2))
    beyond = builders.pod(
        "p", node_name="n1", requests={"nvidia.com/gpu": "1"}, annotations={api.GPU_DEVICES: "7"}
    )
    cache.apply("pods", "ADDED", beyond)
    assert cache.snapshot.pods()["p"].devices == (0,)
    assert "no device 7" in cache.bad_objects["pod/ns/p"]


def test_a_pod_whose_devices_arrive_before_its_node_is_checked_when_the_node_comes() -> None:
    cache = ClusterCache()
    early = builders.pod(
        "p", node_name="n1", requests={"nvidia.com/gpu": "1"}, annotations={api.GPU_DEVICES: "9"}
    )
    cache.apply("pods", "ADDED", early)
    cache.apply("nodes", "ADDED", builders.node("n1", gpus=1))
    assert cache.snapshot.pods()["p"].devices == (0,)


# --- the controller: leave, reserve, sweep -------------------------------------------------------


@pytest.mark.parametrize(
    ("forged", "why"),
    [
        ({api.ASSIGNED_IP: "not-an-ip"}, "assigned-ip"),
        ({api.ASSIGNED_IP: "192.168.9.9"}, "not an address of IPPool web"),
        ({api.GPU_DEVICES: "0"}, "takes 0 GPUs"),
        ({api.GPU_DEVICES: "zero"}, "gpu-devices"),
    ],
)
def test_a_forged_note_never_keeps_a_pod_terminating(forged: dict[str, str], why: str) -> None:
    rig = cluster(("pods", pod(OLD, annotations={**OPTED, api.ASSIGNED_IP: IP, **forged})))
    rig.apiserver.delete_pod("web-0")

    assert rig.reconcile("pods/ns/web-0") is None

    assert rig.apiserver.get("pods", "web-0") is None  # the finalizer went
    [obj] = rig.apiserver.reservations()
    reservation = api.Reservation.from_object(obj)  # and what it wrote reads back
    assert reservation.devices is None
    assert why in rig.controller.bad_objects["pod/ns/web-0"]
    assert "FulcrumBadValue" in rig.apiserver.reasons()


def test_one_bad_reservation_never_stops_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_module, "ABANDON_SECONDS", 0.0)
    bad = copy.deepcopy(held())
    bad["metadata"]["name"] = "rb-forged"
    bad["spec"]["ip"] = "not-an-ip"  # what a forged assigned-ip used to become
    rig = cluster(("reservations", bad), ("reservations", held()), allocations={})

    for _ in range(3):
        rig.reconcile("sweep")

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == ["rb-forged"]
    assert "spec.ip" in rig.controller.bad_objects["reservation/ns/rb-forged"]
    assert rig.apiserver.reasons().count("FulcrumBadValue") == 1  # once, not every sweep


def test_the_extenders_metrics_count_the_bad_objects() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", builders.node("n1"))
    cache.apply(
        "pods", "ADDED", builders.pod("f", node_name="n1", annotations={api.GPU_DEVICES: "0"})
    )
    client = TestClient(create_app(ExtenderSettings(), cache))
    assert "fulcrum_extender_bad_objects 1.0" in client.get("/metrics").text


def test_a_pool_may_not_list_a_scoped_address() -> None:
    pool = {"metadata": {"name": "p"}, "spec": {"addresses": ["fd00::1", "fe80::1%eth0"]}}
    with pytest.raises(ippool.PoolError, match=r"spec\.addresses\[1\]"):
        ippool.pool_addresses(pool)


def test_inspect_skips_a_pod_with_forged_devices_and_names_it() -> None:
    nodes = [builders.node("n1", gpus=1)]
    beyond = builders.pod(
        "p", node_name="n1", requests={"nvidia.com/gpu": "1"}, annotations={api.GPU_DEVICES: "7"}
    )
    skipped: list[str] = []
    snapshot = snapshot_of(nodes, [beyond, builders.pod("ok", node_name="n1")], skipped)
    assert list(snapshot.pods()) == ["ok"]
    assert skipped == ["pod ns/p: node 'n1' has no GPU device 7"]


def test_a_forged_claim_of_another_workloads_reservation_takes_nothing() -> None:
    thief = pod("thief-uid", name="other-0", annotations={**OPTED, api.RESERVATION: HELD})
    rig = cluster(
        ("reservations", held()), ("pods", thief), allocations={IP: f"reservation:{HELD}"}
    )

    rig.reconcile("pods/ns/other-0")

    assert [r["metadata"]["name"] for r in rig.apiserver.reservations()] == [HELD]
    assert rig.apiserver.pool()["status"]["allocations"] == {IP: f"reservation:{HELD}"}
    assert "names the Reservation of Pod/ns/web-0" in rig.controller.bad_objects["pod/ns/other-0"]


@pytest.mark.parametrize("value", ["NaN", "sNaN", "1e999999"])
def test_hostile_quantities_get_a_filter_error_naming_the_field(value: str) -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", builders.node("n1"))
    client = TestClient(create_app(ExtenderSettings(), cache))
    body = {"Pod": builders.pod("p", cpu=value), "NodeNames": ["n1"]}
    answer = client.post("/filter", json=body)
    assert answer.status_code == 200, answer.text
    reasons = {**answer.json()["FailedNodes"], **answer.json()["FailedAndUnresolvableNodes"]}
    assert "resources.requests.cpu" in reasons["n1"]
