"""``fulcrum bench``: the kwok scale test, default-scheduler and fulcrum-scheduler side by side.

It reproduces the seed system's test cluster: 1,000 nodes of 32 cpu / 256Gi / 110 pods,
150,000 configmaps and 25,000 pods. Each scheduler gets a fresh cluster: the nodes, then the
configmaps (the apiserver and etcd carry them, as a real cluster's do), then the pods, created
with the scheduler paused and released at once (``openb.place_paused``). Reported per scheduler:
throughput, nodes used against the lower bound, scheduling latency from kube-scheduler's own
histograms, CPU per pod and resident memory of each process, and the apiserver's request rate
with its requests by resource and verb (``fulcrum inspect --api``'s table). Then the
local-rebuild roll (``demo.rebuild_pair``): an opted-in Deployment beside a plain one, the same
change to both, with its requests too.
"""

from __future__ import annotations

import math
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kubernetes.utils.quantity import parse_quantity

from fulcrum.harness import cluster
from fulcrum.harness import processes as cluster_processes
from fulcrum.harness.registration import SCHEDULER_GC
from fulcrum.inspect import api_requests, metrics
from fulcrum.lab import DEFAULT_MIX, demo, openb, traces
from fulcrum.lab import rebuild_run as rr
from fulcrum.lab.successors import Kept
from fulcrum.lab.workload import PodShape, ensure_namespace, pod_manifest, scheduler_metrics
from scheduler.trace import load_pods

DEFAULT = "default-scheduler"
FULCRUM = cluster.FULCRUM_SCHEDULER
SCHEDULERS = {"both": (DEFAULT, FULCRUM), "default": (DEFAULT,), "fulcrum": (FULCRUM,)}
NODE = cluster.NodeShape()  # 32 cpu, 256Gi, 110 pods
CONFIG_NAMESPACES = 5
QUANTILES = (0.5, 0.9, 0.99)
# the SLI: pod first queued to bound, every attempt and the queue time included
SLI = "scheduler_pod_scheduling_sli_duration_seconds"
ATTEMPT = "scheduler_scheduling_attempt_duration_seconds"  # one attempt, scheduled ones only
_LE = re.compile(r'[{,]le="([^"]*)"')
NOT_PROCESSES = {openb.MACHINE, openb.STEAL, openb.SWITCHES}
API_ROWS = 12  # rows of each phase's apiserver request table in the text (-o json: all)


@dataclass(frozen=True)
class Shape:
    """One pod shape of a mix and its weight."""

    cpu: str
    memory: str
    weight: float


def parse_mix(spec: str) -> list[Shape]:
    """``CPU/MEMORY:WEIGHT,...`` (``250m/512Mi:40,1/2Gi:60``); ValueError naming what is wrong."""
    shapes = []
    for part in spec.split(","):
        try:
            resources, weight = part.strip().split(":")
            cpu, memory = resources.split("/")
            parse_quantity(cpu), parse_quantity(memory)
            shape = Shape(cpu.strip(), memory.strip(), float(weight))
        except ValueError as exc:
            raise ValueError(
                f"shape {part.strip()!r}: write CPU/MEMORY:WEIGHT, e.g. 500m/1Gi:30"
            ) from exc
        if shape.weight <= 0 or parse_quantity(shape.cpu) <= 0:
            raise ValueError(f"shape {part.strip()!r}: cpu and weight must be positive")
        shapes.append(shape)
    return shapes


def mix(shapes: Sequence[Shape], count: int, *, seed: int = 42) -> list[PodShape]:
    """``count`` pods in the mix's proportions (largest remainder), in a seeded random order."""
    total = sum(s.weight for s in shapes)
    exact = [count * s.weight / total for s in shapes]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(shapes)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: count - sum(counts)]:
        counts[i] += 1
    pods = [
        PodShape(s.cpu, s.memory) for s, n in zip(shapes, counts, strict=True) for _ in range(n)
    ]
    random.Random(seed).shuffle(pods)
    return pods


def openb_pods(
    workload: str, count: int, node: cluster.NodeShape, *, seed: int = 42
) -> list[PodShape]:
    """``count`` random CPU-only pods of an openb trace workload that fit on ``node``."""
    if workload not in traces.WORKLOADS:
        raise ValueError(f"openb:{workload}: use one of {', '.join(traces.WORKLOADS)}")
    pods = load_pods(traces.pod_list(workload))
    cpu_cap = float(parse_quantity(node.cpu)) * 1000
    mem_cap = float(parse_quantity(node.memory)) / 2**20
    rows = np.flatnonzero(
        (pods.num_gpu == 0) & (pods.cpu_milli <= cpu_cap) & (pods.memory_mib <= mem_cap)
    )
    picked = np.random.default_rng(seed).choice(rows, size=count, replace=count > len(rows))
    return [PodShape(f"{int(pods.cpu_milli[r])}m", f"{int(pods.memory_mib[r])}Mi") for r in picked]


def pod_shapes(spec: str, count: int, node: cluster.NodeShape = NODE) -> list[PodShape]:
    """The pods ``--shapes`` asks for: a mix, or ``openb:WORKLOAD``."""
    if spec.startswith("openb:"):
        return openb_pods(spec.removeprefix("openb:"), count, node)
    return mix(parse_mix(spec), count)


def lower_bound(shapes: Iterable[PodShape], node: cluster.NodeShape = NODE) -> int:
    """Fewest ``node``s that could hold the pods: the most over cpu, memory and pod count of
    ceil(total request / one node's capacity)."""
    pods = list(shapes)
    cpu = sum(parse_quantity(s.cpu) for s in pods) / parse_quantity(node.cpu)
    memory = sum(parse_quantity(s.memory) for s in pods) / parse_quantity(node.memory)
    return int(max(math.ceil(cpu), math.ceil(memory), math.ceil(len(pods) / node.pods)))


def histogram(lines: Iterable[str], name: str, match: str = "") -> dict[float, float]:
    """A Prometheus histogram's cumulative buckets (``le`` -> count), summed over its other
    labels, of the series whose line contains ``match``."""
    buckets: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in lines:
        if line.startswith(prefix) and match in line:
            le = float(_LE.search(line)[1])  # type: ignore[index]
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def delta(after: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` {le: count}, as Prometheus's
    histogram_quantile estimates it (``fulcrum.inspect.metrics.quantile``); None if empty."""
    return metrics.quantile(q, buckets.items())


def latency(before: list[str], after: list[str]) -> dict[str, dict[str, float | None]]:
    """p50/p90/p99 seconds, between two reads of a scheduler's /metrics, of the SLI (queued to
    bound) and of single scheduling attempts."""
    out: dict[str, dict[str, float | None]] = {}
    for key, name, match in (("sli", SLI, ""), ("attempt", ATTEMPT, 'result="scheduled"')):
        buckets = delta(histogram(after, name, match), histogram(before, name, match))
        out[key] = {f"p{round(100 * q)}": quantile(buckets, q) for q in QUANTILES}
    return out


def requests_between(
    before: metrics.Scrape, after: metrics.Scrape, seconds: float
) -> dict[str, Any]:
    """The apiserver's requests between two scrapes of its /metrics ``seconds`` apart, by
    resource and verb (``fulcrum inspect --api``'s table and JSON)."""
    return api_requests.document(metrics.delta(before, after, round(seconds, 2)))


def poster(api: Any, path: str) -> Callable[[bytes], None]:
    """POST a JSON body to the apiserver's ``path`` with the client's credentials, through its
    connection pool but without its (de)serialisation: several times less of this process's
    CPU per request, which otherwise bounds how fast configmaps are created."""
    client = api.api_client
    json_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    method, url, headers, _, _ = client.param_serialize(
        "POST", path, header_params=json_headers, auth_settings=["BearerToken"]
    )

    def post(body: bytes) -> None:
        reply = client.rest_client.pool_manager.request(method, url, body=body, headers=headers)
        if reply.status not in (200, 201):
            raise cluster.ClusterError(f"POST {path}: HTTP {reply.status}: {reply.data[:200]!r}")

    return post


def create_configmaps(api: Any, count: int, *, log: Callable[[str], None]) -> float:
    """``count`` small configmaps spread over a few namespaces, 16 at a time; the seconds."""
    namespaces = [f"bench-config-{i}" for i in range(CONFIG_NAMESPACES)]
    posts = []
    for namespace in namespaces:
        ensure_namespace(api, namespace)
        posts.append(poster(api, f"/api/v1/namespaces/{namespace}/configmaps"))

    def create(i: int) -> None:
        body = {"metadata": {"name": f"config-{i:06d}"}, "data": {"key": f"value-{i}"}}
        posts[i % len(posts)](orjson.dumps(body))

    started = time.monotonic()
    step = max(1, count // 10)
    with ThreadPoolExecutor(16) as pool:
        for done, _ in enumerate(pool.map(create, range(count)), 1):
            if done % step == 0 or done == count:
                rate = done / (time.monotonic() - started)
                log(f"  configmaps: {done}/{count} created ({rate:.0f}/s)")
    return time.monotonic() - started


def rss_by_process(name: str) -> dict[str, float]:
    """Resident MiB of each of cluster ``name``'s processes, by label, now."""
    out: dict[str, float] = {}
    for pid, label in cluster.process_labels(name).items():
        out[label] = out.get(label, 0.0) + cluster_processes.rss_mib(pid)
    return out


@dataclass(frozen=True)
class Phase:
    """One scheduler's run over the pods: how fast, how tight, what it cost."""

    scheduler: str
    pods: int
    bound: int
    nodes_used: int
    configmap_seconds: float
    create_seconds: float
    schedule_seconds: float  # resumed to last pod bound
    latency: dict[str, dict[str, float | None]]  # "sli"|"attempt" -> "p50".. -> seconds
    apiserver_qps: float  # requests per second, resumed to all bound and listed
    cpu_seconds: dict[str, float]  # per process, resumed to last pod bound (openb._usage)
    rss_mib: dict[str, float]  # per process, at the end
    # the apiserver's requests, resumed to all bound, by resource x verb (api_requests.document);
    # None in a run saved before they were recorded
    api_requests: dict[str, Any] | None = None

    @property
    def throughput(self) -> float:
        return self.bound / self.schedule_seconds if self.schedule_seconds else math.nan

    def cpu_ms_per_pod(self) -> dict[str, float]:
        return {
            p: 1000 * s / max(self.bound, 1)
            for p, s in self.cpu_seconds.items()
            if p not in NOT_PROCESSES or p == openb.MACHINE
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "throughput": self.throughput,
            "cpu_ms_per_pod": self.cpu_ms_per_pod(),
        }


def run_round(
    name: str,
    scheduler: str,
    shapes: Sequence[PodShape],
    namespace: str,
    *,
    configmap_seconds: float,
    log: Callable[[str], None],
) -> Phase:
    """Place ``shapes`` as pods with ``scheduler`` paused then released; measure the phase."""
    api = cluster.core_api(name)
    manifests = [
        pod_manifest(f"bench-{i:06d}", s, scheduler=scheduler) for i, s in enumerate(shapes)
    ]
    port = cluster.scheduler_metrics_port(name, scheduler)
    metrics_before = scheduler_metrics(port)
    marks: dict[str, Any] = {}

    def mark() -> None:
        marks["scrape"], marks["at"] = api_requests.scrape(api.api_client), time.monotonic()

    timeout = max(600.0, len(manifests) / 10)
    extender = cluster.load_state(name).extender_pid if scheduler == FULCRUM else None
    done = openb.place_paused(
        name,
        namespace,
        manifests,
        scheduler,
        timeout=timeout,
        log=log,
        on_resume=mark,
        paused_with=[extender] if extender else [],
    )
    seconds = time.monotonic() - marks["at"]
    requests = requests_between(marks["scrape"], api_requests.scrape(api.api_client), seconds)
    qps = requests["total"] / seconds
    phase = Phase(
        scheduler=scheduler,
        pods=len(manifests),
        bound=len(done.placed),
        nodes_used=len({p["spec"]["nodeName"] for p in done.placed}),
        configmap_seconds=configmap_seconds,
        create_seconds=done.create_seconds,
        schedule_seconds=done.schedule_seconds,
        latency=latency(metrics_before, scheduler_metrics(port)),
        apiserver_qps=qps,
        cpu_seconds=done.cpu_seconds,
        rss_mib=rss_by_process(name),
        api_requests=requests,
    )
    log(
        f"  {scheduler}: {phase.bound}/{phase.pods} bound in {phase.schedule_seconds:.1f} s "
        f"({phase.throughput:.1f} pods/s) on {phase.nodes_used} nodes; apiserver {qps:.0f} req/s"
    )
    return phase


@dataclass(frozen=True)
class Config:
    """What ``fulcrum bench`` runs."""

    nodes: int = 1000
    pods: int = 25000
    configmaps: int = 150000
    shapes: str = DEFAULT_MIX
    scheduler: str = "both"
    rounds: int = 1
    rebuild: int = 1000
    name: str = "fulcrum-bench"
    nodes_to_score: int = 100  # fulcrum-scheduler's percentageOfNodesToScore
    nominate: bool = False  # the extender nominates its pick as each pod arrives
    fulcrum_first: bool = False  # fulcrum-scheduler's cluster before default-scheduler's
    go_default_gc: bool = False  # fulcrum-scheduler at Go's default GC, not SCHEDULER_GC


def rollout_json(rollout: rr.Rollout) -> dict[str, Any]:
    return {
        "pods": rollout.pods,
        "seconds": rollout.seconds,
        "p50": rollout.percentile(0.5),
        "p99": rollout.percentile(0.99),
        **rollout.kept.to_json(),
    }


def roll(name: str, replicas: int, *, log: Callable[[str], None]) -> dict[str, Any]:
    """The local-rebuild roll on cluster ``name``: each Deployment's rollout, and local/plain;
    if it fails, ``{"error": ...}``, so the placement results are not lost with it."""
    try:
        rolled = demo.rebuild_pair(name, replicas, namespace="bench-rebuild", say=log)
    except (TimeoutError, RuntimeError) as exc:
        log(f"  local rebuild failed: {exc}")
        return {"error": str(exc).splitlines()[0]}
    for rollout in rolled.values():
        log(f"  {rollout}")
    out: dict[str, Any] = {app: rollout_json(r) for app, r in rolled.items()}
    out["ratio"] = rolled["local"].seconds / rolled["plain"].seconds
    return out


def on_cluster(
    config: Config,
    scheduler: str | None,
    shapes: Sequence[PodShape],
    *,
    rebuild: int,
    log: Callable[[str], None],
) -> tuple[list[Phase], dict[str, Any] | None]:
    """A fresh cluster for ``scheduler`` (None: only the rebuild roll): nodes, configmaps, the
    pods ``config.rounds`` times, then the roll if ``rebuild``; always torn down."""
    name = f"{config.name}-{'rebuild' if scheduler is None else scheduler.split('-')[0]}"
    extender = scheduler != DEFAULT or bool(rebuild)
    log(f"{scheduler or 'local rebuild'}: fresh cluster {name!r}, {config.nodes} nodes")
    with tempfile.TemporaryDirectory(prefix="fulcrum-bench-") as tmp:
        extender_config = None
        if config.nominate and scheduler == FULCRUM:
            extender_config = Path(tmp) / "extender.yaml"
            extender_config.write_text("nominate: true\n")
        cluster.up(
            name,
            nodes=config.nodes,
            shape=NODE,
            extender=extender,
            extender_config=extender_config,
            nodes_to_score=config.nodes_to_score,
            scheduler_gc={} if config.go_default_gc else SCHEDULER_GC,
            log=log,
        )
    phases: list[Phase] = []
    try:
        if scheduler is not None:
            api = cluster.core_api(name)
            configmap_seconds = create_configmaps(api, config.configmaps, log=log)
            for i in range(config.rounds):
                if i:
                    openb.delete_namespace(api, f"bench-pods-{i - 1}")
                    log(f"round {i + 1}/{config.rounds}")
                phases.append(
                    run_round(
                        name,
                        scheduler,
                        shapes,
                        f"bench-pods-{i}",
                        configmap_seconds=configmap_seconds,
                        log=log,
                    )
                )
        rolled = None
        if rebuild:
            client = cluster.core_api(name).api_client
            before, started = api_requests.scrape(client), time.monotonic()
            rolled = roll(name, rebuild, log=log)
            seconds = time.monotonic() - started
            rolled["api_requests"] = requests_between(before, api_requests.scrape(client), seconds)
    finally:
        cluster.down(name, log=log)
    return phases, rolled


@dataclass(frozen=True)
class Bench:
    """Every scheduler's rounds, the lower bound on nodes, and the rebuild roll."""

    config: Config
    lower_bound: int
    phases: dict[str, list[Phase]]
    rebuild: dict[str, Any] | None

    def median(self, scheduler: str) -> Phase:
        """The scheduler's round of median throughput (the table shows it)."""
        rounds = sorted(self.phases[scheduler], key=lambda p: p.throughput)
        return rounds[(len(rounds) - 1) // 2]

    def to_json(self) -> dict[str, Any]:
        """The benchmark as ``fulcrum bench -o json`` prints it."""
        return {
            "config": {**asdict(self.config), "node": asdict(NODE)},
            "lower_bound": self.lower_bound,
            "schedulers": {s: [p.to_json() for p in rounds] for s, rounds in self.phases.items()},
            "rebuild": self.rebuild,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Bench:
        """A benchmark back from ``to_json`` (to print a saved run's table)."""
        config = Config(**{k: v for k, v in document["config"].items() if k != "node"})
        fields = set(Phase.__dataclass_fields__)
        phases = {
            s: [Phase(**{k: v for k, v in p.items() if k in fields}) for p in rounds]
            for s, rounds in document["schedulers"].items()
        }
        return cls(config, document["lower_bound"], phases, document["rebuild"])


def run_bench(config: Config, *, log: Callable[[str], None]) -> Bench:
    """Each scheduler of ``config.scheduler`` on its own fresh cluster, then the rebuild roll
    (on fulcrum-scheduler's cluster, or on one of its own without it)."""
    shapes = pod_shapes(config.shapes, config.pods)
    bound = lower_bound(shapes)
    log(
        f"bench: {config.pods} pods ({config.shapes}) on {config.nodes} nodes of {NODE.cpu} cpu/"
        f"{NODE.memory}/{NODE.pods} pods, {config.configmaps} configmaps; lower bound {bound}; "
        f"fulcrum-scheduler's percentageOfNodesToScore {config.nodes_to_score}"
        + (", the extender nominates" if config.nominate else "")
        + (", fulcrum-scheduler at Go's default GC" if config.go_default_gc else "")
    )
    phases: dict[str, list[Phase]] = {}
    rolled = None
    schedulers = SCHEDULERS[config.scheduler][:: -1 if config.fulcrum_first else 1]
    for scheduler in schedulers:
        rebuild = config.rebuild if scheduler == FULCRUM else 0
        phases[scheduler], got = on_cluster(config, scheduler, shapes, rebuild=rebuild, log=log)
        rolled = got or rolled
    if config.rebuild and FULCRUM not in schedulers:
        _, rolled = on_cluster(config, None, shapes, rebuild=config.rebuild, log=log)
    return Bench(config, bound, phases, rolled)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(values: Mapping[str, float], key: str, form: str) -> str:
    """A process's value, or "-" where the cluster has no such process."""
    return form.format(values[key]) if key in values else "-"


def _nodes_to_score(config: Config, phase: Phase) -> str:
    """The scheduler's percentageOfNodesToScore: default-scheduler runs kube-scheduler's own."""
    percentage = config.nodes_to_score if phase.scheduler != DEFAULT else 0
    return str(percentage) if percentage else "adaptive"


def _rows(bench: Bench, shown: Sequence[Phase]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [
        ("pods bound", [f"{p.bound}/{p.pods}" for p in shown]),
        ("throughput (pods/s)", [f"{p.throughput:.1f}" for p in shown]),
        ("schedule time (s)", [f"{p.schedule_seconds:.1f}" for p in shown]),
        (f"nodes used (lower bound {bench.lower_bound})", [str(p.nodes_used) for p in shown]),
        ("percentageOfNodesToScore", [_nodes_to_score(bench.config, p) for p in shown]),
    ]
    for key, what in (("sli", "queued to bound"), ("attempt", "attempt (cycle + bind)")):
        cells = [" / ".join(_seconds(v) for v in p.latency[key].values()) for p in shown]
        rows.append((f"latency p50/p90/p99 s, {what}", cells))
    rows.append(("apiserver requests/s", [f"{p.apiserver_qps:.0f}" for p in shown]))
    rows.append(("configmaps created in (s)", [f"{p.configmap_seconds:.1f}" for p in shown]))
    procs = sorted({k for p in shown for k in p.cpu_ms_per_pod()} - {openb.MACHINE})
    for proc in [*procs, openb.MACHINE]:
        rows.append(
            (f"CPU ms/pod {proc}", [_cell(p.cpu_ms_per_pod(), proc, "{:.2f}") for p in shown])
        )
    for proc in sorted({k for p in shown for k in p.rss_mib}):
        rows.append((f"RSS MiB {proc}", [_cell(p.rss_mib, proc, "{:.0f}") for p in shown]))
    return rows


def format_table(bench: Bench) -> str:
    """The final table, one column per scheduler, then the rebuild lines."""
    shown = [bench.median(s) for s in bench.phases]
    rows = _rows(bench, shown)
    width = max(len(label) for label, _ in rows)
    cols = [
        max(len(p.scheduler), *(len(cells[i]) for _, cells in rows)) for i, p in enumerate(shown)
    ]
    lines = [
        "| "
        + " " * width
        + " | "
        + " | ".join(p.scheduler.rjust(w) for p, w in zip(shown, cols, strict=True))
        + " |",
        "|" + "-" * (width + 2) + "|" + "|".join("-" * (w + 2) for w in cols) + "|",
    ]
    for label, cells in rows:
        values = " | ".join(c.rjust(w) for c, w in zip(cells, cols, strict=True))
        lines.append(f"| {label.ljust(width)} | {values} |")
    if bench.config.rounds > 1:
        lines.append(f"(the round of median throughput of {bench.config.rounds})")
    for phase in shown:
        if phase.api_requests is not None:
            lines += ["", f"{phase.scheduler}, resumed to all bound:"]
            lines.append(api_requests.render(phase.api_requests, listed=API_ROWS))
    if bench.rebuild:
        lines.append("")
        lines.extend(format_rebuild(bench.rebuild))
    return "\n".join(lines)


def _kept(rollout: Mapping[str, Any]) -> str:
    """What a rollout kept; a run saved before the counts each figure is out of were recorded
    shows its figures out of all its pods, as it was printed then."""
    if "ip_pool" in rollout:
        return str(Kept.from_json(rollout))
    total = rollout["total"]
    return f"same node {rollout['same_node']}/{total}, same IP {rollout['same_ip']}/{total}"


def format_rebuild(rebuild: Mapping[str, Any]) -> list[str]:
    lines = ["local rebuild (`kubectl set env` on both Deployments at once):"]
    if "error" in rebuild:
        return [*lines, f"  failed: {rebuild['error']}"]
    for app in ("local", "plain"):
        r = rebuild[app]
        lines.append(
            f"  {app:6} {r['pods']} pods, all Running after {r['seconds']:.1f} s; per pod p50 "
            f"{r['p50']:.2f} s p99 {r['p99']:.2f} s; {_kept(r)}"
        )
    lines.append(f"  local/plain time: {rebuild['ratio']:.2f}")
    if "api_requests" in rebuild:
        lines += ["", "the local-rebuild roll, both Deployments created and rolled:"]
        lines.append(api_requests.render(rebuild["api_requests"], listed=API_ROWS))
    return lines
