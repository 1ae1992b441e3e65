"""The bind verb is idempotent per pod UID and refuses stale UIDs."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from extender.bind import BindConflict, BindService, PodGone
from extender.cache import ClusterCache


def run(call: Coroutine[Any, Any, str]) -> str:
    return asyncio.run(call)


class FakeApiserver:
    """pods/binding semantics: one binding per pod, UID precondition checked."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, str]] = {}  # ns/name -> (uid, node)
        self.bindings = 0

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        key = f"{namespace}/{name}"
        if key not in self.pods:
            raise PodGone
        current_uid, current_node = self.pods[key]
        if current_uid != uid or current_node:
            raise BindConflict
        self.pods[key] = (uid, node)
        self.bindings += 1

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        key = f"{namespace}/{name}"
        if key not in self.pods:
            raise PodGone
        return self.pods[key]

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        raise AssertionError("these pods name no IP pool")


def no_devices(*_: Any) -> tuple[int, ...]:
    return ()


def pending_pod(uid: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "namespace": "ns", "name": "p"},
        "spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]},
        "status": {"phase": "Pending"},
    }


def setup() -> tuple[ClusterCache, FakeApiserver, BindService]:
    cache = ClusterCache()
    cache.apply(
        "nodes", "ADDED", {"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "4"}}}
    )
    cache.apply("pods", "ADDED", pending_pod("u1"))
    apiserver = FakeApiserver()
    apiserver.pods["ns/p"] = ("u1", "")
    return cache, apiserver, BindService(cache, apiserver, no_devices)


def test_bind_charges_the_cache_at_once() -> None:
    cache, apiserver, service = setup()
    assert run(service.bind("ns", "p", "u1", "n1")) == ""
    assert apiserver.bindings == 1
    assert cache.bound_node("u1") == "n1"
    assert cache.snapshot.free[0, 0] == 3000


def test_a_retried_bind_succeeds_without_a_second_binding() -> None:
    _, apiserver, service = setup()
    run(service.bind("ns", "p", "u1", "n1"))
    assert run(service.bind("ns", "p", "u1", "n1")) == ""
    assert apiserver.bindings == 1


def test_a_retry_after_a_restart_lost_the_cache_still_succeeds() -> None:
    _, apiserver, _ = setup()
    apiserver.pods["ns/p"] = ("u1", "n1")  # bound before the restart; the watch has not said so
    fresh = ClusterCache()
    fresh.apply(
        "nodes", "ADDED", {"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "4"}}}
    )
    fresh.apply("pods", "ADDED", pending_pod("u1"))
    assert run(BindService(fresh, apiserver, no_devices).bind("ns", "p", "u1", "n1")) == ""
    assert apiserver.bindings == 0


def test_a_stale_uid_is_refused() -> None:
    _, apiserver, service = setup()
    apiserver.pods["ns/p"] = ("u2", "")  # deleted and re-created under the same name
    error = run(service.bind("ns", "p", "u1", "n1"))
    assert "stale bind" in error and "u2" in error
    assert apiserver.bindings == 0


def test_binding_elsewhere_is_refused_and_a_gone_pod_is_reported() -> None:
    _, apiserver, service = setup()
    run(service.bind("ns", "p", "u1", "n1"))
    assert "already bound to n1" in run(service.bind("ns", "p", "u1", "n2"))
    del apiserver.pods["ns/p"]
    fresh = BindService(ClusterCache(), apiserver, no_devices)
    assert "no longer exists" in run(fresh.bind("ns", "p", "u9", "n1"))


def test_concurrent_binds_on_one_node_never_share_a_gpu() -> None:
    cache = ClusterCache()
    cache.apply(
        "nodes",
        "ADDED",
        {
            "metadata": {"name": "g", "labels": {"nvidia.com/gpu.product": "A100"}},
            "status": {"allocatable": {"cpu": "64", "nvidia.com/gpu": "8"}},
        },
    )
    apiserver = SlowApiserver(cache)
    for i in range(8):
        gpu_pod = pending_pod(f"u{i}")
        gpu_pod["metadata"]["name"] = f"p{i}"
        gpu_pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
        cache.apply("pods", "ADDED", gpu_pod)
        apiserver.pods[f"ns/p{i}"] = (f"u{i}", "")
    service = BindService(
        cache, apiserver, lambda snap, pod, node: snap.best_fit_devices(snap.index_of(node), pod)
    )

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(service.bind("ns", f"p{i}", f"u{i}", "g") for i in range(8)))

    assert asyncio.run(all_at_once()) == [""] * 8
    assert sorted(apiserver.devices.values()) == [str(d) for d in range(8)]
    assert cache.snapshot.gpu_free[0].tolist() == [0] * 8


class SlowApiserver(FakeApiserver):
    """Slow enough that binds overlap."""

    def __init__(self, cache: ClusterCache) -> None:
        super().__init__()
        self.cache = cache
        self.devices: dict[str, str] = {}

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        await asyncio.sleep(0.01)
        self.devices[name] = annotations["fulcrum.io/gpu-devices"]
        await super().bind(namespace, name, uid, node, annotations)


def test_a_bind_that_no_longer_fits_is_refused_and_the_pod_stays_pending() -> None:
    cache, apiserver, service = setup()
    big = pending_pod("u3")
    big["metadata"]["name"] = "r"
    big["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "3500m"
    cache.apply("pods", "ADDED", big)
    apiserver.pods["ns/r"] = ("u3", "")
    assert run(service.bind("ns", "p", "u1", "n1")) == ""  # 1 of 4 cpu
    error = run(service.bind("ns", "r", "u3", "n1"))  # 3.5 more do not fit
    assert "no longer fits" in error
    assert apiserver.bindings == 1
    assert cache.pending("u3") is not None
