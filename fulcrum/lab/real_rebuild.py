"""Local rebuild on real nodes: workloads whose pods really run, what they kept, how long it took.

kwok fakes a pod's start, so there local rebuild can only be measured for where the successor
went. Here (``fulcrum cluster up --real-nodes N``) each pod is a busybox container pulled from
the cluster's registry: it writes ``/data/born`` once (its first incarnation's name), serves
``/data`` over HTTP on port 8080 and is Ready when ``/born`` answers. A successor that kept its
predecessor's volume serves the same ``born``; one that kept its address answers on it.

Used by the integration tests (``tests/integration/test_real_nodes.py``) and by
``fulcrum bench-rebuild`` (local rebuild against a plain rollout of the same workload, same run).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fulcrum.harness import cluster, images, realnodes
from fulcrum.lab import rebuild_run as rr
from kube import api

PORT = 8080
REPOSITORY = "fulcrum/app"
# Ready fast, gone fast: sh waits for SIGTERM (a trapped signal interrupts `wait`), so a deleted
# pod leaves at once instead of after its grace period, as a well-behaved server does.
SCRIPT = (
    'mkdir -p "$DATA"; '
    '[ -s "$DATA/born" ] || echo "$POD_NAME" > "$DATA/born"; '
    'cat /etc/fulcrum-image > "$DATA/image"; '
    'echo "$REVISION" > "$DATA/revision"; '
    f'httpd -p {PORT} -h "$DATA"; '
    "trap 'exit 0' TERM; "
    "while :; do sleep 3600 & wait $!; done"
)


def app_image(tag: str, *, pad_mb: int = 0) -> images.Image:
    """busybox with ``/etc/fulcrum-image`` naming ``tag`` (and ``pad_mb`` MiB of padding, so
    that pulling it takes visible time): two tags are two images that must both be pulled."""
    base = images.busybox_image()
    marker = images.Layer((images.File("/etc/fulcrum-image", f"{tag}\n".encode()),))
    image = images.Image((*base.layers, marker), cmd=base.cmd)
    return images.padded_image(image, pad_mb, seed=tag) if pad_mb else image


def push_app_images(
    registry: str, tags: tuple[str, ...], *, pad_mb: int = 0, say: Callable[[str], None]
) -> dict[str, str]:
    """Build and push ``REPOSITORY:<tag>`` for each tag: tag -> image reference."""
    refs = {}
    for tag in tags:
        with images.build(app_image(tag, pad_mb=pad_mb)) as built:
            images.push(built, registry, REPOSITORY, tag)
            size = sum(b.size for b in built.blobs()) / 2**20
        refs[tag] = f"{registry}/{REPOSITORY}:{tag}"
        say(f"  pushed {refs[tag]} ({size:.0f} MiB)")
    return refs


def pod_spec(image: str, *, revision: str = "1", claim: bool = False) -> dict[str, Any]:
    """The app's pod on a real node. Its data is in ``/data``, a claim's volume (a
    StatefulSet's ``data``), or else in the container's own filesystem: an emptyDir's loss on
    a rebuild would have to be accepted by annotation (``kube.eligibility``)."""
    mounts = [{"name": "data", "mountPath": "/data"}] if claim else []
    return {
        "nodeSelector": {realnodes.NODE_LABEL: realnodes.NODE_VALUE},
        "terminationGracePeriodSeconds": 10,
        "enableServiceLinks": False,
        "containers": [
            {
                "name": "main",
                "image": image,
                "command": ["sh", "-c", SCRIPT],
                "env": [
                    {"name": "REVISION", "value": revision},
                    {"name": "DATA", "value": "/data" if claim else "/srv"},
                    {
                        "name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    },
                ],
                "ports": [{"containerPort": PORT}],
                "readinessProbe": {
                    "httpGet": {"path": "/born", "port": PORT},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "volumeMounts": mounts,
            }
        ],
    }


def deployment(
    namespace: str, app: str, replicas: int, image: str, *, opted: bool, pool: str | None
) -> dict[str, Any]:
    """``rr.deployment`` with the app's pod: delete-first (``maxSurge: 0``), opted in by the
    annotation alone (no schedulerName: the webhook routes it)."""
    obj = rr.deployment(namespace, app, replicas, opted=opted, pool=pool, scheduler=None)
    obj["spec"]["template"]["spec"] = pod_spec(image)
    return obj


def statefulset(
    namespace: str, app: str, replicas: int, image: str, *, pool: str | None
) -> dict[str, Any]:
    """``rr.statefulset`` with the app's pod, its ``data`` claim from ``local_volumes``."""
    obj = rr.statefulset(namespace, app, replicas, pool=pool, scheduler=None)
    obj["spec"]["template"]["spec"] = pod_spec(image, claim=True)
    obj["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = "fulcrum-local"
    return obj


def local_volumes(namespace: str, app: str, nodes: list[str], root: Path) -> list[dict[str, Any]]:
    """A local PersistentVolume for StatefulSet ordinal i on ``nodes[i]``, pre-bound to the
    ordinal's claim: its directory under ``root`` (made here) is the ordinal's disk."""
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "fulcrum-local"},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    ]
    for i, node in enumerate(nodes):
        path = root / f"{namespace}-{app}-{i}"
        path.mkdir(parents=True, exist_ok=True)
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{app}-{i}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "fulcrum-local",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "claimRef": {"namespace": namespace, "name": f"data-{app}-{i}"},
                    "local": {"path": str(path)},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [node],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
    return objects


def fetch(ip: str, name: str, timeout: float = 3) -> str:
    """``/data/<name>`` from the pod answering on ``ip``."""
    with urllib.request.urlopen(f"http://{ip}:{PORT}/{name}", timeout=timeout) as reply:
        return str(reply.read().decode().strip())


@dataclass(frozen=True)
class Served:
    """What one pod serves: its address, its node, and its files."""

    name: str
    node: str
    ip: str
    born: str
    image: str
    revision: str


def served(kit: rr.Kit, namespace: str, app: str) -> dict[str, Served]:
    """Each live pod of ``app``, by successor key, as read over HTTP at its pod IP."""
    out = {}
    for pod in rr.live_pods(kit, namespace, app):
        ip = (pod.get("status") or {}).get("podIP") or ""
        key = api.successor_key(pod) or pod["metadata"]["name"]
        out[key if not key.startswith("Deployment/") else ip] = Served(
            pod["metadata"]["name"],
            pod["spec"].get("nodeName") or "",
            ip,
            fetch(ip, "born"),
            fetch(ip, "image"),
            fetch(ip, "revision"),
        )
    return out


def demo(kit: rr.Kit, registry: str, *, say: Callable[[str], None]) -> dict[str, rr.Rollout]:
    """The demo's local rebuild on the real nodes: Deployments 'local' (opted in, IP pool) and
    'plain', and StatefulSet 'db' (opted in, IP pool, a local PersistentVolume per pod), two
    pods each; one `kubectl set image` on all three; what each successor kept, read from the
    pods themselves (the address answering, the file its first incarnation wrote)."""
    namespace = "demo-real"
    refs = push_app_images(registry, ("v1", "v2"), say=lambda _: None)
    nodes = sorted(
        n.metadata.name
        for n in kit.core.list_node(
            label_selector=f"{realnodes.NODE_LABEL}={realnodes.NODE_VALUE}"
        ).items
    )[:2]
    kit.kubectl("create", "namespace", namespace)
    root = cluster.state_dir(kit.name) / "volumes"
    rr.apply(
        kit,
        [
            rr.ip_pool(namespace, "local", "10.244.220.0/29"),
            rr.ip_pool(namespace, "db", "10.244.221.0/29"),
            *local_volumes(namespace, "db", nodes, root),
            deployment(namespace, "local", 2, refs["v1"], opted=True, pool="local"),
            deployment(namespace, "plain", 2, refs["v1"], opted=False, pool=None),
            statefulset(namespace, "db", len(nodes), refs["v1"], pool="db"),
        ],
    )
    apps = {"local": 2, "plain": 2, "db": len(nodes)}
    rr.wait_running(kit, namespace, apps, timeout=300)
    rr.wait_guarded(kit, namespace, {"local": 2, "db": len(nodes)})
    before = {app: served(kit, namespace, app) for app in apps}
    say(
        f"\nlocal rebuild on real nodes ({', '.join(nodes)}: kubelet, containerd, CNI): "
        "Deployments 'local' (annotated fulcrum.io/rebuild: local, IP pool) and 'plain', "
        "StatefulSet 'db' (annotated, IP pool, a local PersistentVolume per pod); "
        f"`kubectl set image` to {refs['v2']} on all three"
    )

    def change() -> None:
        for kind, app in (("deployment", "local"), ("deployment", "plain"), ("statefulset", "db")):
            kit.kubectl("set", "image", f"{kind}/{app}", f"main={refs['v2']}", "-n", namespace)

    rollouts = rr.roll(kit, namespace, apps, change, rr.has_image(refs["v2"]), timeout=300)
    for app in apps:
        after = served(kit, namespace, app)
        answering = sum(s.image == "v2" for s in after.values())
        line = (
            f"  {rollouts[app]}; answering on their IP with the new image {answering}/{apps[app]}"
        )
        if app == "db":
            kept = sum(after[k].born == before[app][k].born for k in after if k in before[app])
            line += f"; data written before the change read back {kept}/{apps[app]}"
        say(line)
    ratio = rollouts["local"].seconds / rollouts["plain"].seconds
    say(f"  local rebuild took {ratio:.2f}x the plain rollout's time (change -> all Ready)")
    return rollouts
