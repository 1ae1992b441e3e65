"""The seed's remount problem, measured: what kubelets keeping mounted configmaps current cost
the apiserver, under each ``configMapAndSecretChangeDetectionStrategy``, and how soon an
update reaches the mounted file.

For each strategy in turn, a fresh cluster with ``real_nodes`` real nodes whose kubelets use it
(``fulcrum cluster up --real-nodes N --kubelet-configmap-strategy S``), the cluster's busybox
image in its registry, and ``pods * configmaps`` configmaps (each pod mounts ``configmaps`` of
its own; no service account token, so no other configmap is mounted). Then, from the
apiserver's /metrics (``apiserver_request_total`` by resource and verb, as ``fulcrum inspect
--api`` reads it, and the ``apiserver_longrunning_requests`` gauge of open watches):

- ``baseline``: ``baseline`` seconds with the configmaps but no pods;
- ``startup``: from creating the pods (spread over the real nodes) until all are Running;
- ``steady``: ``window`` seconds with the pods running, nothing changing.

``apiserver_request_total`` has no client label (its labels are verb, resource, scope, code,
component, ...), so the kubelets' share is the steady window's rate less the baseline's, which
holds every other client's (the controllers, the schedulers, Fulcrum, these scrapes). A watch
is counted in ``apiserver_request_total`` only when it ends; an open one shows in the gauge.

Last, ``updates`` of the mounted configmaps (each a different pod's) are changed at once and the
files are read on the host, under each kubelet's root directory, until they show the new value:
the propagation delay, the other side of the trade-off.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fulcrum.harness import cluster, images, realnodes
from fulcrum.inspect import api_requests, metrics, probe
from fulcrum.lab import rebuild_run as rr

NS = "bench-configmaps"
REPOSITORY = "busybox"
KEY = "value"
PROPAGATION_TIMEOUT = 180.0  # seconds: a kubelet resyncs each pod every 60-90 s
TTL_ANNOTATION = "node.alpha.kubernetes.io/ttl"


@dataclass(frozen=True)
class Config:
    name: str = "fulcrum-bench-cm"
    strategies: tuple[str, ...] = realnodes.CONFIGMAP_STRATEGIES
    real_nodes: int = 2
    pods: int = 30
    configmaps: int = 5  # per pod
    window: float = 90.0  # seconds of steady state: a kubelet resyncs each pod every 60-90 s
    baseline: float = 60.0  # seconds with no pods
    updates: int = 10  # configmaps changed to time the propagation; 0: not timed


@dataclass
class Window:
    """One window's apiserver requests: configmaps' by verb, and all of them."""

    seconds: float
    configmaps: dict[str, float]  # verb -> requests
    total: float
    open_watches: float  # configmap watches open at the window's end (the gauge)
    etcd: dict[str, float] = field(default_factory=dict)  # the apiserver's etcd operations on them

    def per_minute(self, verb: str | None = None) -> float:
        count = self.total if verb is None else self.configmaps.get(verb, 0.0)
        return 60 * count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Row:
    strategy: str
    node_ttl_s: list[str]  # the real nodes' TTL annotations: the Cache strategy's TTL
    baseline: Window
    startup: Window
    steady: Window
    propagation_s: list[float] = field(default_factory=list)  # per update reached
    missed: int = 0  # updates not seen in PROPAGATION_TIMEOUT

    def kubelet_per_minute(self, verb: str) -> float:
        """Configmap requests of ``verb`` per minute the pods added: steady less baseline."""
        return max(0.0, self.steady.per_minute(verb) - self.baseline.per_minute(verb))

    def etcd_reads_per_minute(self) -> float:
        """The apiserver's reads of configmaps from etcd per minute the pods added (a GET
        without a resourceVersion reads etcd; the Cache strategy's ``resourceVersion=0`` and a
        watch are served from the apiserver's watch cache)."""

        def rate(w: Window) -> float:
            reads = sum(v for op, v in w.etcd.items() if op.startswith(("get", "list")))
            return 60 * reads / w.seconds if w.seconds > 0 else 0.0

        return max(0.0, rate(self.steady) - rate(self.baseline))

    def figures(self, pods: int) -> dict[str, float | None]:
        kubelet = sum(self.kubelet_per_minute(v) for v in ("GET", "LIST", "WATCH"))
        configmaps = sum(self.steady.configmaps.values())
        return {
            "configmap_get_per_min": round(self.kubelet_per_minute("GET"), 1),
            "configmap_list_per_min": round(self.kubelet_per_minute("LIST"), 1),
            "configmap_watch_per_min": round(self.kubelet_per_minute("WATCH"), 1),
            "etcd_configmap_reads_per_min": round(self.etcd_reads_per_minute(), 1),
            "watches_opened": self.steady.open_watches - self.baseline.open_watches,
            "apiserver_per_min": round(self.steady.per_minute(), 1),
            "baseline_per_min": round(self.baseline.per_minute(), 1),
            "configmap_share": round(configmaps / self.steady.total, 4)
            if self.steady.total
            else None,
            "per_pod_per_min": round(kubelet / pods, 3) if pods else None,
            "propagation_median_s": round(statistics.median(self.propagation_s), 1)
            if self.propagation_s
            else None,
            "propagation_max_s": round(max(self.propagation_s), 1) if self.propagation_s else None,
        }


@dataclass
class Result:
    config: Config
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "kubelets_by": "the steady window less the baseline window (no client label)",
            "rows": [asdict(r) | {"figures": r.figures(self.config.pods)} for r in self.rows],
        }


def window(before: metrics.Scrape, after: metrics.Scrape, seconds: float) -> Window:
    """The requests between two scrapes of the apiserver's /metrics."""
    between = metrics.delta(before, after, seconds)
    rows = api_requests.analyse(between)
    verbs: dict[str, float] = {}
    for r in rows:
        if r.resource == "configmaps":
            verbs[r.verb] = verbs.get(r.verb, 0.0) + r.count
    gauge = after.total("apiserver_longrunning_requests", resource="configmaps", verb="WATCH")
    etcd: dict[str, float] = {}
    for labels, value in between.series("etcd_requests_total"):
        if (labels.get("resource"), labels.get("group", "")) == ("configmaps", "") and value:
            op = labels.get("operation", "")
            etcd[op] = etcd.get(op, 0.0) + value
    return Window(round(seconds, 2), verbs, sum(r.count for r in rows), gauge or 0.0, etcd)


class _Apiserver:
    """Scrapes of the apiserver's /metrics, each with when it was taken."""

    def __init__(self, kit: rr.Kit) -> None:
        self.get = probe.apiserver_getter(kit.core.api_client)

    def scrape(self) -> tuple[metrics.Scrape, float]:
        status, text = self.get("/metrics")
        if status != 200:
            raise cluster.ClusterError(f"the apiserver's /metrics answered {status}: {text[:200]}")
        return metrics.parse(text), time.monotonic()

    def hold(self, seconds: float) -> Window:
        before, start = self.scrape()
        time.sleep(seconds)
        after, end = self.scrape()
        return window(before, after, end - start)


def configmap_name(pod: int, index: int) -> str:
    return f"p{pod:03d}-cm{index}"


def pod_manifest(index: int, node: str, image: str, configmaps: int) -> dict[str, Any]:
    """Pod ``index`` on ``node``, mounting its ``configmaps`` configmaps at /config/<j>."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p{index:03d}", "namespace": NS, "labels": {"bench": "configmaps"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": ["sleep", "86400"],
                    "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}},
                    "volumeMounts": [
                        {"name": f"cm{j}", "mountPath": f"/config/{j}"} for j in range(configmaps)
                    ],
                }
            ],
            "volumes": [
                {"name": f"cm{j}", "configMap": {"name": configmap_name(index, j)}}
                for j in range(configmaps)
            ],
        },
    }


def mounted_file(cluster_name: str, node: str, uid: str, volume: str) -> Path:
    """Where ``node``'s kubelet projects a configmap volume's KEY for pod ``uid``, on the host."""
    root = cluster.state_dir(cluster_name) / "real" / node / "kubelet"
    return root / "pods" / uid / "volumes" / "kubernetes.io~configmap" / volume / KEY


def _push_busybox(name: str, say: Callable[[str], None]) -> str:
    registry = f"127.0.0.1:{cluster.load_state(name).registry_port}"
    with images.build(images.busybox_image()) as built:
        images.push(built, registry, REPOSITORY, "bench")
    say(f"  pushed {registry}/{REPOSITORY}:bench")
    return f"{registry}/{REPOSITORY}:bench"


def _ttls(kit: rr.Kit) -> list[str]:
    """The real nodes' TTL annotations (seconds), as the TTL controller set them."""
    selector = f"{realnodes.NODE_LABEL}={realnodes.NODE_VALUE}"
    return [
        (n.metadata.annotations or {}).get(TTL_ANNOTATION, "-")
        for n in kit.core.list_node(label_selector=selector).items
    ]


def _running(kit: rr.Kit) -> int:
    pods = kit.core.list_namespaced_pod(NS, label_selector="bench=configmaps").items
    return sum(1 for p in pods if p.status.phase == "Running")


def _propagation(kit: rr.Kit, config: Config, cluster_name: str) -> tuple[list[float], int]:
    """Change the first configmap of ``config.updates`` pods; seconds until each file shows it."""
    pods = kit.core.list_namespaced_pod(NS, label_selector="bench=configmaps").items
    chosen = sorted(pods, key=lambda p: p.metadata.name)[: config.updates]
    pending: dict[Path, tuple[str, float]] = {}
    for pod in chosen:
        value = f"updated-{time.time_ns()}"
        index = int(pod.metadata.name[1:])
        kit.core.patch_namespaced_config_map(configmap_name(index, 0), NS, {"data": {KEY: value}})
        path = mounted_file(cluster_name, pod.spec.node_name, pod.metadata.uid, "cm0")
        pending[path] = (value, time.monotonic())
    delays: list[float] = []
    deadline = time.monotonic() + PROPAGATION_TIMEOUT
    while pending and time.monotonic() < deadline:
        for path, (value, changed) in list(pending.items()):
            try:
                seen = path.read_text()
            except OSError:
                continue
            if seen == value:
                delays.append(round(time.monotonic() - changed, 2))
                del pending[path]
        time.sleep(0.2)
    return sorted(delays), len(pending)


def measure(config: Config, strategy: str, say: Callable[[str], None]) -> Row:
    """One strategy on its own cluster, taken down at the end."""
    name = f"{config.name}-{strategy.lower()}"
    cluster.up(
        name,
        nodes=0,
        real_nodes=config.real_nodes,
        kubelet_configmap_strategy=strategy,
        log=say,
    )
    try:
        kit = rr.Kit.of(name)
        image = _push_busybox(name, say)
        kit.kubectl("create", "namespace", NS)
        for i in range(config.pods):
            for j in range(config.configmaps):
                body = {"metadata": {"name": configmap_name(i, j)}, "data": {KEY: "initial"}}
                kit.core.create_namespaced_config_map(NS, body)
        nodes = cluster.load_state(name).real_nodes
        apiserver = _Apiserver(kit)
        made = config.pods * config.configmaps
        say(f"{strategy}: {made} configmaps made; baseline, no pods, {config.baseline:g} s")
        baseline = apiserver.hold(config.baseline)
        before, start = apiserver.scrape()
        for i in range(config.pods):
            kit.core.create_namespaced_pod(
                NS, pod_manifest(i, nodes[i % len(nodes)], image, config.configmaps)
            )
        took = rr.wait_for(
            f"{config.pods} pods Running", lambda: _running(kit) == config.pods, timeout=600
        )
        after, end = apiserver.scrape()
        startup = window(before, after, end - start)
        say(f"{strategy}: {config.pods} pods Running in {took:.1f} s; steady {config.window:g} s")
        steady = apiserver.hold(config.window)
        row = Row(strategy, _ttls(kit), baseline, startup, steady)
        if config.updates:
            say(f"{strategy}: {min(config.updates, config.pods)} configmaps updated")
            row.propagation_s, row.missed = _propagation(kit, config, name)
        figures = row.figures(config.pods)
        say(
            f"{strategy}: configmap GET {figures['configmap_get_per_min']}/min, "
            f"watches opened {figures['watches_opened']:g}, apiserver "
            f"{figures['apiserver_per_min']}/min, propagation median "
            f"{figures['propagation_median_s']} s"
        )
        return row
    finally:
        cluster.down(name, log=say)


def run(config: Config, *, say: Callable[[str], None] = print) -> Result:
    result = Result(config)
    for strategy in config.strategies:
        result.rows.append(measure(config, strategy, say))
    return result


def format_table(result: Result) -> str:
    c = result.config
    lines = [
        f"configmaps mounted on {c.real_nodes} real nodes: {c.pods} pods x {c.configmaps} "
        f"configmaps, {c.window:g} s steady; the kubelets' requests are the steady window's "
        f"rate less the {c.baseline:g} s baseline's (per minute)",
        "| strategy | configmap GET/min | LIST/min | watches opened | etcd configmap reads/min "
        "| apiserver req/min (baseline) | configmap share | configmap req per pod per min "
        "| update→file median / max (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        f = row.figures(c.pods)
        share = "—" if f["configmap_share"] is None else f"{100 * f['configmap_share']:.1f} %"
        if f["propagation_median_s"] is None:
            spread = "—"
        else:
            spread = f"{f['propagation_median_s']} / {f['propagation_max_s']}"
        if row.missed:
            spread += f" ({row.missed} missed)"
        lines.append(
            f"| {row.strategy} | {f['configmap_get_per_min']} | {f['configmap_list_per_min']} | "
            f"{f['watches_opened']:g} | {f['etcd_configmap_reads_per_min']} | "
            f"{f['apiserver_per_min']} ({f['baseline_per_min']}) | "
            f"{share} | {f['per_pod_per_min']} | {spread} |"
        )
    return "\n".join(lines)
