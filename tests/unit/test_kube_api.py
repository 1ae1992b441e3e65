from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kube import api
from kube.api import (
    OptionError,
    RebuildOptions,
    Reservation,
    claim_names,
    data_loss_volumes,
    parse_duration,
    read_options,
    reservation_name,
    reservation_template,
    successor_key,
)

# --- options ------------------------------------------------------------------------------------


def errors_of(annotations: dict[str, str]) -> list[OptionError]:
    return list(read_options(annotations).errors)


def test_defaults_without_annotations() -> None:
    expected = RebuildOptions(
        enabled=False,
        fallback="wait",
        wait_seconds=60.0,
        order="delete-first",
        accept_data_loss=False,
        pool=None,
        ip=None,
    )
    assert read_options(None) == expected
    assert read_options({}) == expected
    assert read_options({"unrelated": "x"}) == expected


def test_every_option() -> None:
    options = read_options(
        {
            api.REBUILD: "local",
            api.FALLBACK: "reschedule",
            api.WAIT: "1m30s",
            api.ORDER: "create-first",
            api.ACCEPT_DATA_LOSS: "true",
            api.IP_POOL: "web",
            api.IP_REQUEST: "10.64.0.5",
        }
    )
    assert options == RebuildOptions(
        requested=True,
        enabled=True,
        fallback="reschedule",
        wait_seconds=90.0,
        order="create-first",
        accept_data_loss=True,
        pool="web",
        ip="10.64.0.5",
    )


def test_pool_without_rebuild_opt_in() -> None:
    options = read_options({api.IP_POOL: "web", api.IP_REQUEST: "fd00::0005"})
    assert not options.enabled
    assert (options.pool, options.ip) == ("web", "fd00::5")  # canonical form


@pytest.mark.parametrize(
    ("annotation", "value", "allowed"),
    [
        (api.REBUILD, "remote", ("local",)),
        (api.REBUILD, "", ("local",)),
        (api.FALLBACK, "sometimes", ("wait", "reschedule")),
        (api.ORDER, "whatever", ("delete-first", "create-first")),
        (api.ACCEPT_DATA_LOSS, "yes", ("true", "false")),
    ],
)
def test_bad_choice_names_annotation_and_allowed_values(
    annotation: str, value: str, allowed: tuple[str, ...]
) -> None:
    [error] = errors_of({annotation: value})
    assert (error.annotation, error.value, error.allowed) == (annotation, value, allowed)
    assert str(error) == (
        f'annotation {annotation}="{value}" is not allowed; use one of: {", ".join(allowed)}'
    )
    assert read_options({annotation: value}).errors[0].annotation == annotation


def test_fallback_message_exactly() -> None:
    [error] = errors_of({api.FALLBACK: "sometimes"})
    assert str(error) == (
        'annotation fulcrum.io/rebuild-fallback="sometimes" is not allowed; '
        "use one of: wait, reschedule"
    )


@pytest.mark.parametrize("value", ["0s", "25h", "soon", "-5s", "1.5m", ""])
def test_bad_wait(value: str) -> None:
    [error] = errors_of({api.WAIT: value})
    assert error.annotation == api.WAIT
    assert "more than 0 and at most 24h" in str(error)


def test_wait_limits() -> None:
    assert read_options({api.WAIT: "24h"}).wait_seconds == 86400
    assert read_options({api.WAIT: "1ms"}).wait_seconds == pytest.approx(0.001)


def test_pool_in_another_namespace() -> None:
    [error] = errors_of({api.IP_POOL: "other-ns/web"})
    assert error.annotation == api.IP_POOL
    assert "pools must be in the pod's own namespace" in str(error)


def test_pool_name_not_a_name() -> None:
    [error] = errors_of({api.IP_POOL: "Web_Pool"})
    assert "IPPool" in str(error)


def test_ip_not_an_address() -> None:
    [error] = errors_of({api.IP_POOL: "web", api.IP_REQUEST: "10.64.0.300"})
    assert error.annotation == api.IP_REQUEST
    assert "not a valid IPv4 or IPv6 address" in str(error)


def test_ip_without_pool() -> None:
    [error] = errors_of({api.IP_REQUEST: "10.64.0.5"})
    assert error.annotation == api.IP_REQUEST
    assert api.IP_POOL in str(error)


def test_option_errors_collects_every_problem_in_order() -> None:
    errors = errors_of(
        {
            api.REBUILD: "yes",
            api.FALLBACK: "never",
            api.WAIT: "forever",
            api.ORDER: "random",
            api.ACCEPT_DATA_LOSS: "maybe",
            api.IP_POOL: "ns/pool",
            api.IP_REQUEST: "nope",
        }
    )
    assert [e.annotation for e in errors] == [
        api.REBUILD,
        api.FALLBACK,
        api.WAIT,
        api.ORDER,
        api.ACCEPT_DATA_LOSS,
        api.IP_POOL,
        api.IP_REQUEST,
    ]
    assert read_options({api.REBUILD: "yes", api.FALLBACK: "never"}).errors[0].annotation == (
        api.REBUILD
    )


def test_a_bad_opt_in_is_requested_but_not_enabled() -> None:
    options = read_options({api.REBUILD: "lcoal"})
    assert (options.requested, options.enabled) == (True, False)
    assert [e.allowed for e in options.errors] == [("local",)]


def test_option_error_is_a_value_error() -> None:
    assert issubclass(OptionError, ValueError)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("1m30s", 90),
        ("500ms", 0.5),
        ("1h2m3s4ms", 3723.004),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "90", "1.5h", "-1s", "1 m", "1d", "m", "5M", " 5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# --- pod facts ----------------------------------------------------------------------------------


def pod_with_volumes(*volumes: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"volumes": list(volumes)}}


def test_data_loss_volumes() -> None:
    pod = pod_with_volumes(
        {"name": "scratch", "emptyDir": {}},
        {"name": "ram", "emptyDir": {"medium": "Memory"}},
        {"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
        {"name": "cfg", "configMap": {"name": "c"}},
        {"name": "sec", "secret": {"secretName": "s"}},
        {"name": "proj", "projected": {"sources": []}},
        {"name": "down", "downwardAPI": {"items": []}},
        {"name": "host", "hostPath": {"path": "/x"}},
    )
    assert data_loss_volumes(pod) == ["scratch", "ram", "eph"]
    assert data_loss_volumes({"spec": {}}) == []
    assert data_loss_volumes({}) == []


def test_claim_names() -> None:
    pod = pod_with_volumes(
        {"name": "a", "persistentVolumeClaim": {"claimName": "data-0"}},
        {"name": "b", "emptyDir": {}},
        {"name": "c", "persistentVolumeClaim": {"claimName": "logs-0", "readOnly": True}},
        {"name": "d", "persistentVolumeClaim": {"claimName": "data-0"}},
    )
    assert claim_names(pod) == ("data-0", "logs-0")
    assert claim_names({}) == ()


def owned_pod(
    kind: str | None,
    owner: str = "",
    *,
    name: str = "p",
    labels: dict[str, str] | None = None,
    controller: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels or {}}
    if kind is not None:
        meta["ownerReferences"] = [
            {"kind": kind, "name": owner, "controller": controller, "uid": "u"}
        ]
    return {"metadata": meta, "spec": {}}


def test_successor_key_deployment() -> None:
    pod = owned_pod(
        "ReplicaSet", "web-5d8f7c", name="web-5d8f7c-abcde", labels={"pod-template-hash": "5d8f7c"}
    )
    assert successor_key(pod) == "Deployment/shop/web"


def test_successor_key_bare_replica_set() -> None:
    assert successor_key(owned_pod("ReplicaSet", "cache", name="cache-x1")) == (
        "ReplicaSet/shop/cache"
    )
    other_hash = owned_pod("ReplicaSet", "cache", labels={"pod-template-hash": "abc"})
    assert successor_key(other_hash) == "ReplicaSet/shop/cache"


def test_successor_key_stateful_set() -> None:
    by_name = owned_pod("StatefulSet", "db", name="db-2")
    assert successor_key(by_name) == "StatefulSet/shop/db/2"
    by_label = owned_pod(
        "StatefulSet", "db", name="renamed", labels={"apps.kubernetes.io/pod-index": "3"}
    )
    assert successor_key(by_label) == "StatefulSet/shop/db/3"
    assert successor_key(owned_pod("StatefulSet", "db", name="db-x")) is None
    assert successor_key(owned_pod("StatefulSet", "db", name="other-1")) is None
    bad_label = owned_pod(
        "StatefulSet", "db", name="db-1", labels={"apps.kubernetes.io/pod-index": "one"}
    )
    assert successor_key(bad_label) is None


def test_successor_key_bare_pod() -> None:
    assert successor_key(owned_pod(None, name="solo")) == "Pod/shop/solo"
    # an owner that is not the controller does not count
    assert successor_key(owned_pod("ConfigMap", "x", name="solo", controller=False)) == (
        "Pod/shop/solo"
    )


@pytest.mark.parametrize("kind", ["Job", "DaemonSet", "CronJob", "SomethingCustom"])
def test_successor_key_unsupported_owner(kind: str) -> None:
    assert successor_key(owned_pod(kind, "x")) is None


def test_reservation_name() -> None:
    assert reservation_name("1234-abcd") == "rb-1234-abcd"


def test_reservation_template() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "labels": {"app": "web"},
            "annotations": {
                "fulcrum.io/gpu-milli": "300",
                "fulcrum.io/gpu-model": "A100",
                "fulcrum.io/rebuild": "local",
                "other": "x",
            },
        },
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "app", "image": "i", "resources": {"requests": {"cpu": "1"}}},
                {"name": "side", "image": "j"},
            ],
            "initContainers": [
                {"name": "init", "image": "k", "resources": {"requests": {"cpu": "2"}}},
                {"name": "proxy", "restartPolicy": "Always", "resources": {}},
            ],
            "overhead": {"cpu": "100m"},
        },
    }
    before = copy.deepcopy(pod)
    template = reservation_template(pod)
    assert template == {
        "metadata": {
            "annotations": {"fulcrum.io/gpu-milli": "300", "fulcrum.io/gpu-model": "A100"}
        },
        "spec": {
            "containers": [
                {"name": "app", "resources": {"requests": {"cpu": "1"}}},
                {"name": "side", "resources": {}},
            ],
            "initContainers": [
                {"name": "init", "resources": {"requests": {"cpu": "2"}}},
                {"name": "proxy", "resources": {}, "restartPolicy": "Always"},
            ],
            "overhead": {"cpu": "100m"},
        },
    }
    template["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "9"
    assert pod == before  # a copy, not a view


def test_reservation_template_without_overhead() -> None:
    template = reservation_template({"spec": {"containers": [{"name": "a"}]}})
    assert "overhead" not in template["spec"]
    assert template["metadata"] == {"annotations": {}}


# --- Reservation objects ------------------------------------------------------------------------

EXPIRES = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def reservation_object() -> dict[str, Any]:
    return {
        "apiVersion": "fulcrum.io/v1alpha1",
        "kind": "Reservation",
        "metadata": {"name": "rb-u1", "namespace": "shop", "resourceVersion": "42"},
        "spec": {
            "key": "Deployment/shop/web",
            "node": "n1",
            "predecessor": {"name": "web-abc-x", "uid": "u1"},
            "template": {"spec": {"containers": [{"name": "a", "resources": {}}]}},
            "devices": [0, 2],
            "ip": "10.64.0.5",
            "pool": "web",
            "claims": ["data-0"],
            "fallback": "reschedule",
            "expiresAt": "2025-01-02T03:04:05Z",
        },
        "status": {"phase": "Claimed", "claimedBy": "u2"},
    }


def test_reservation_from_object() -> None:
    r = Reservation.from_object(reservation_object())
    assert r == Reservation(
        name="rb-u1",
        namespace="shop",
        key="Deployment/shop/web",
        node="n1",
        predecessor="web-abc-x",
        predecessor_uid="u1",
        template={"spec": {"containers": [{"name": "a", "resources": {}}]}},
        devices=(0, 2),
        ip="10.64.0.5",
        pool="web",
        claims=("data-0",),
        fallback="reschedule",
        expires_at=EXPIRES,
        phase="Claimed",
        claimed_by="u2",
        resource_version="42",
    )


def test_reservation_round_trip() -> None:
    obj = reservation_object()
    assert Reservation.from_object(obj).to_object() == obj


def test_reservation_round_trip_minimal() -> None:
    obj = reservation_object()
    for field in ("devices", "ip", "pool", "expiresAt"):
        del obj["spec"][field]
    del obj["status"]
    del obj["metadata"]["resourceVersion"]
    r = Reservation.from_object(obj)
    assert (r.devices, r.ip, r.pool, r.expires_at, r.resource_version) == (None,) * 5
    assert (r.phase, r.claimed_by) == ("Held", None)
    again = r.to_object()
    assert again["status"] == {"phase": "Held"}
    assert Reservation.from_object(again) == r


def test_reservation_times_keep_microseconds_and_convert_to_utc() -> None:
    obj = reservation_object()
    obj["spec"]["expiresAt"] = "2025-01-02T05:04:05.250000+02:00"
    r = Reservation.from_object(obj)
    assert r.expires_at == EXPIRES + timedelta(microseconds=250_000)
    assert r.to_object()["spec"]["expiresAt"] == "2025-01-02T03:04:05.250000Z"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("metadata",), None, "metadata"),
        (("metadata", "name"), None, "metadata.name"),
        (("metadata", "namespace"), "", "metadata.namespace"),
        (("spec",), "x", "spec"),
        (("spec", "key"), 3, "spec.key"),
        (("spec", "node"), None, "spec.node"),
        (("spec", "predecessor"), "web", "spec.predecessor"),
        (("spec", "predecessor", "uid"), None, "spec.predecessor.uid"),
        (("spec", "template"), None, "spec.template"),
        (("spec", "devices"), ["0"], "spec.devices"),
        (("spec", "devices"), [-1], "spec.devices"),
        (("spec", "devices"), [True], "spec.devices"),
        (("spec", "ip"), "10.0.0.300", "spec.ip"),
        (("spec", "claims"), "data-0", "spec.claims"),
        (("spec", "fallback"), "later", "spec.fallback"),
        (("spec", "expiresAt"), "tomorrow", "spec.expiresAt"),
        (("spec", "expiresAt"), "2025-01-02T03:04:05", "spec.expiresAt"),  # no zone
        (("status", "phase"), "Gone", "status.phase"),
        (("status", "claimedBy"), 7, "status.claimedBy"),
    ],
)
def test_reservation_malformed_field(path: tuple[str, ...], value: Any, field: str) -> None:
    obj = reservation_object()
    target = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=rf"{field} is "):
        Reservation.from_object(obj)


def test_reservation_rejects_naive_expiry() -> None:
    r = Reservation.from_object(reservation_object())
    with pytest.raises(ValueError, match="expiresAt"):
        Reservation(**{**r.__dict__, "expires_at": datetime(2025, 1, 1)})


def test_active() -> None:
    held = Reservation.from_object({**reservation_object(), "status": {"phase": "Held"}})
    assert held.active(EXPIRES - timedelta(seconds=1))
    assert not held.active(EXPIRES)
    assert not held.active(EXPIRES + timedelta(hours=1))
    forever = Reservation(**{**held.__dict__, "expires_at": None})
    assert forever.active(EXPIRES + timedelta(days=365))
    for phase in ("Expired", "Claimed"):
        done = Reservation(**{**held.__dict__, "phase": phase})
        assert not done.active(EXPIRES - timedelta(seconds=1))
