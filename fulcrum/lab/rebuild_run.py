"""Local-rebuild workloads on a kwok cluster: create them, change them, measure where pods went.

Used by the demo, the integration tests and ``benchmarks/rebuild_bench.py``. Changes are made
the way a user makes them, with ``kubectl set image``, ``kubectl set env`` and
``kubectl replace --force``; a member of a workload is identified by its successor key
(``kube.api.successor_key``), so "the same pod" after a rollout means the same Deployment,
StatefulSet ordinal or bare-pod name.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from kubernetes import client

from fulcrum.harness import cluster
from fulcrum.harness.cluster import FULCRUM_SCHEDULER
from fulcrum.lab.successors import Kept, Member, kept
from fulcrum.lab.workload import PAUSE_IMAGE
from kube import api
from kube.informer import Informer
from kube.objects import ready

NEW_IMAGE = "registry.k8s.io/pause:3.9"
APP_LABEL = "app"


@dataclass(frozen=True)
class Kit:
    """What a rebuild scenario needs: the cluster's name, API clients and kubectl."""

    name: str
    core: Any
    apps: Any
    custom: Any

    @classmethod
    def of(cls, name: str) -> Kit:
        core = cluster.core_api(name)
        return cls(
            name,
            core,
            client.AppsV1Api(core.api_client),
            client.CustomObjectsApi(core.api_client),
        )

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 300) -> str:
        state = cluster.load_state(self.name)
        cmd = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(self.name)), *args]
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


def _annotations(opted: bool, pool: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if opted:
        out[api.REBUILD] = "local"
    if pool:
        out[api.IP_POOL] = pool
    out.update(extra)
    return out


def pod_spec(
    *,
    cpu: str = "2",
    memory: str = "2Gi",
    env: str = "1",
    scheduler: str | None = FULCRUM_SCHEDULER,
) -> dict[str, Any]:
    """``scheduler`` None: no schedulerName, as a user who only annotates writes it."""
    requests = {"cpu": cpu, "memory": memory}
    named = {"schedulerName": scheduler} if scheduler else {}
    return {
        **named,
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "main",
                "image": PAUSE_IMAGE,
                "env": [{"name": "REVISION", "value": env}],
                "resources": {"requests": requests, "limits": requests},
            }
        ],
    }


def ip_pool(namespace: str, app: str, cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "IPPool",
        "metadata": {"name": app, "namespace": namespace},
        "spec": {"cidr": cidr, "selector": {"matchLabels": {APP_LABEL: app}}},
    }


def deployment(
    namespace: str,
    app: str,
    replicas: int,
    *,
    opted: bool = True,
    pool: str | None = None,
    annotations: Mapping[str, str] | None = None,
    scheduler: str | None = FULCRUM_SCHEDULER,
    max_unavailable: int | str = "50%",
) -> dict[str, Any]:
    labels = {APP_LABEL: app}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": app, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            # delete-first: an old pod goes before its successor is placed on its room
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": max_unavailable},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": _annotations(opted, pool, annotations or {}),
                },
                "spec": pod_spec(scheduler=scheduler),
            },
        },
    }


def statefulset(
    namespace: str,
    app: str,
    replicas: int,
    *,
    opted: bool = True,
    pool: str | None = None,
    on_delete: bool = False,
    scheduler: str | None = FULCRUM_SCHEDULER,
) -> dict[str, Any]:
    labels = {APP_LABEL: app}
    spec = pod_spec(scheduler=scheduler)
    spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": app, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "serviceName": app,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete" if on_delete else "RollingUpdate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": _annotations(opted, pool, {})},
                "spec": spec,
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "",
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def volumes(prefix: str, count: int) -> list[dict[str, Any]]:
    """Pre-provisioned PersistentVolumes for StatefulSet claims (kwok has no provisioner)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{prefix}-{i}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/data/{prefix}-{i}"},
            },
        }
        for i in range(count)
    ]


def bare_pod(
    namespace: str,
    name: str,
    app: str,
    *,
    opted: bool = True,
    pool: str | None = None,
    image: str = PAUSE_IMAGE,
    env: str = "1",
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    spec = pod_spec(env=env)
    spec["containers"][0]["image"] = image
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {APP_LABEL: app},
            "annotations": _annotations(opted, pool, annotations or {}),
        },
        "spec": spec,
    }


def apply(kit: Kit, objects: list[dict[str, Any]]) -> None:
    kit.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def replace_force(kit: Kit, objects: list[dict[str, Any]]) -> None:
    """``kubectl replace --force``: delete, wait until gone, create, as a user would."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as manifest:
        yaml.safe_dump_all(objects, manifest)
        manifest.flush()
        kit.kubectl("replace", "--force", "-f", manifest.name)


def _pods(kit: Kit, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's pods, terminating ones too, as JSON."""
    pods = kit.core.list_namespaced_pod(
        namespace, label_selector=f"{APP_LABEL}={app}", _preload_content=False
    )
    found: list[dict[str, Any]] = orjson.loads(pods.data)["items"]
    return found


def live_pods(kit: Kit, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's pods that are not terminating, as JSON."""
    return [p for p in _pods(kit, namespace, app) if not p["metadata"].get("deletionTimestamp")]


def members(kit: Kit, namespace: str, app: str) -> dict[str, Member]:
    """The app's live pods, by successor key."""
    out: dict[str, Member] = {}
    for pod in live_pods(kit, namespace, app):
        meta = pod["metadata"]
        key = api.successor_key(pod) or meta["name"]
        if key.startswith("Deployment/"):
            key = f"{key}/{meta['name']}"  # replicas are interchangeable: keep each one apart
        out[key] = Member(
            key,
            meta["name"],
            meta["uid"],
            pod["spec"].get("nodeName") or "",
            (pod.get("status") or {}).get("podIP") or "",
            api.claim_names(pod),
            (meta.get("annotations") or {}).get(api.RESERVATION, ""),
            (meta.get("annotations") or {}).get(api.IP_POOL, ""),
        )
    return out


def _up(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and ready(pod)


def running(kit: Kit, namespace: str, app: str, want: Callable[[dict[str, Any]], bool]) -> int:
    """How many of the app's live pods are Running, Ready and satisfy ``want``."""
    return sum(_up(pod) and want(pod) for pod in live_pods(kit, namespace, app))


def wait_running(
    kit: Kit, namespace: str, apps: Mapping[str, int], *, timeout: float = 300
) -> None:
    """Until every app has its count of live pods Running and Ready."""
    wait_for(
        f"{', '.join(apps)} running",
        lambda: all(running(kit, namespace, a, lambda _: True) == n for a, n in apps.items()),
        timeout=timeout,
    )


def stuck(kit: Kit, namespace: str, app: str, want: Callable[[dict[str, Any]], bool]) -> str:
    """What an app's rollout waits on: each pod not yet Ready with the change (terminating ones
    too), its finalizers and last Events, and the namespace's Reservations."""
    lines = [f"{app}:"]
    for pod in _pods(kit, namespace, app):
        meta, status = pod["metadata"], pod.get("status") or {}
        if _up(pod) and want(pod) and not meta.get("deletionTimestamp"):
            continue
        lines.append(
            f"  {meta['name']} uid {meta['uid'][:8]} phase {status.get('phase')} "
            f"node {pod['spec'].get('nodeName') or '-'} ip {status.get('podIP') or '-'} "
            f"deleting {bool(meta.get('deletionTimestamp'))} changed {want(pod)} "
            f"finalizers {meta.get('finalizers') or []} "
            f"annotations {(meta.get('annotations') or {})}"
        )
        events = kit.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={meta['uid']}", _preload_content=False
        )
        for e in orjson.loads(events.data)["items"][-4:]:
            lines.append(f"    {e['reason']}: {e['message']}")
    found = kit.custom.list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.RESERVATIONS
    )
    for r in found["items"]:
        lines.append(f"  reservation {r['metadata']['name']}: {r.get('spec')} {r.get('status')}")
    return "\n".join(lines)


def guarded(kit: Kit, namespace: str, app: str) -> int:
    """How many of the app's live pods carry the rebuild finalizer (the controller saw them)."""
    return sum(
        api.FINALIZER in (pod["metadata"].get("finalizers") or [])
        for pod in live_pods(kit, namespace, app)
    )


def wait_guarded(
    kit: Kit, namespace: str, apps: Mapping[str, int], *, timeout: float = 300
) -> float:
    """Seconds until every app has its count of live pods guarded by the rebuild finalizer: a
    pod deleted before the controller has put it on is not held for."""
    return wait_for(
        f"{', '.join(apps)} guarded",
        lambda: all(guarded(kit, namespace, a) == n for a, n in apps.items()),
        timeout=timeout,
    )


def wait_for(
    what: str, check: Callable[[], bool], *, timeout: float = 300, interval: float = 0.5
) -> float:
    """Seconds until ``check()`` holds; TimeoutError naming ``what`` otherwise."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


def has_image(image: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: pod["spec"]["containers"][0]["image"] == image


def has_env(value: str) -> Callable[[dict[str, Any]], bool]:
    def check(pod: dict[str, Any]) -> bool:
        env = pod["spec"]["containers"][0].get("env") or []
        return any(e.get("name") == "REVISION" and e.get("value") == value for e in env)

    return check


def write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


class _Clock:
    """Watches a namespace's pods: when each began terminating and when each became Ready."""

    def __init__(self, kit: Kit, namespace: str, want: Callable[[dict[str, Any]], bool]) -> None:
        self.want = want
        self.lock = threading.Lock()
        self.deleted: dict[str, tuple[str, float]] = {}  # uid -> (app, first seen terminating)
        self.ready: dict[str, tuple[str, float]] = {}  # uid -> (app, when it became Ready)
        self.informer = Informer(
            "pods",
            functools.partial(kit.core.list_namespaced_pod, namespace),
            self,
        )

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        now = time.monotonic()
        meta = obj["metadata"]
        uid, app = meta["uid"], (meta.get("labels") or {}).get(APP_LABEL, "")
        with self.lock:
            if meta.get("deletionTimestamp") or event == "DELETED":
                self.deleted.setdefault(uid, (app, now))
            elif uid not in self.ready and _up(obj) and self.want(dict(obj)):
                self.ready[uid] = (app, now)


@dataclass(frozen=True)
class Rollout:
    """One workload's rollout: until all successors Running, per-pod latency, what was kept."""

    app: str
    pods: int
    seconds: float
    latencies: list[float]  # predecessor terminating -> its successor Ready, per pod
    kept: Kept

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def __str__(self) -> str:
        return (
            f"{self.app:8s} {self.pods} pods, all Running after {self.seconds:6.1f} s "
            f"({self.pods / self.seconds:5.1f} pods/s); per pod p50 {self.percentile(0.5):5.2f} s "
            f"p99 {self.percentile(0.99):5.2f} s; {self.kept}"
        )


def roll(
    kit: Kit,
    namespace: str,
    apps: Mapping[str, int],
    change: Callable[[], object],
    want: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 600,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Rollout]:
    """Make ``change`` and follow every app's rollout until ``apps[app]`` pods satisfy ``want``.

    Per-pod latency pairs the i-th predecessor to start terminating with the i-th successor to
    become Ready, the same way for every app (Deployment replicas are interchangeable, so the
    Reservation a successor claimed need not be its own predecessor's).
    """
    clock = _Clock(kit, namespace, want)
    clock.informer.start()
    clock.informer.synced.wait(60)
    before = {app: members(kit, namespace, app) for app in apps}
    started = time.monotonic()
    change()
    seconds: dict[str, float] = {}
    try:
        while len(seconds) < len(apps):
            if time.monotonic() - started > timeout:
                late = sorted(set(apps) - set(seconds))
                raise TimeoutError(
                    f"rollout of {late}: {timeout} s\n"
                    + "\n".join(stuck(kit, namespace, app, want) for app in late)
                )
            for app, n in apps.items():
                if app not in seconds and running(kit, namespace, app, want) == n:
                    seconds[app] = time.monotonic() - started
                    say(f"  {app}: {n} successors Running after {seconds[app]:.1f} s")
            time.sleep(0.5)
    finally:
        clock.informer.stop()
    out = {}
    for app, n in apps.items():
        old = {m.uid for m in before[app].values()}
        with clock.lock:
            gone = sorted(t for u, (a, t) in clock.deleted.items() if a == app and u in old)
            ready = sorted(t for u, (a, t) in clock.ready.items() if a == app and u not in old)
        latencies = [b - a for a, b in zip(gone, ready, strict=False)]
        after = members(kit, namespace, app)
        out[app] = Rollout(app, n, seconds[app], latencies, kept(before[app], after))
    return out
