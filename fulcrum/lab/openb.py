"""The openb production trace on a kwok cluster: default-scheduler vs fulcrum-scheduler.

Both schedulers get the same pods (same manifests, same order) on the same nodes in the same
run, one after the other. GPUs are Kubernetes objects the way Fulcrum reads them: nodes have
``nvidia.com/gpu`` and the GPU model label; whole-GPU pods request ``nvidia.com/gpu``;
GPU-sharing pods carry ``fulcrum.io/gpu-milli`` (default-scheduler cannot see shares, so it may
over-commit a device: the report counts that). Pods with a GPU model constraint also carry
node affinity on the model label, which both schedulers honour.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kubernetes.client.exceptions import ApiException

from fulcrum.harness import cluster
from fulcrum.harness import processes as cluster_processes
from fulcrum.lab import traces
from fulcrum.lab.workload import (
    PAUSE_IMAGE,
    ensure_namespace,
    extender_calls,
    extender_seconds,
    scheduling_algorithm,
)
from kube.informer import Informer
from kube.resources import (
    GPU_MILLI_ANNOTATION,
    GPU_MODEL_ANNOTATION,
    GPU_MODEL_LABEL,
    assigned_devices,
    pod_request,
)
from scheduler.pod import MIB
from scheduler.replay import nodes_lower_bound
from scheduler.snapshot import Snapshot
from scheduler.trace import NodeTrace, PodTrace, load_nodes, load_pods


@dataclass(frozen=True)
class Sample:
    nodes: list[int]  # rows of the node trace
    pods: list[int]  # rows of the pod trace, in arrival order


def sample(
    nodes: NodeTrace, pods: PodTrace, n_nodes: int, n_pods: int, *, seed: int, fill: float = 0.8
) -> Sample:
    """``n_nodes`` random nodes and up to ``n_pods`` random pods that fit in ``fill`` of them.

    A pod is kept only while the kept pods' total cpu, memory and GPU stay within ``fill`` of
    the sampled nodes' capacity, and only if some sampled node has its GPU model and count.
    """
    rng = np.random.default_rng(seed)
    node_rows = sorted(rng.choice(len(nodes), size=n_nodes, replace=False).tolist())
    cpu_cap = fill * nodes.cpu_milli[node_rows].sum()
    mem_cap = fill * nodes.memory_mib[node_rows].sum()
    gpu_cap = fill * nodes.gpu_count[node_rows].sum() * 1000
    best: dict[str, int] = {}  # model -> most GPUs on one sampled node
    for row in node_rows:
        model, count = nodes.models[row], int(nodes.gpu_count[row])
        best[model] = max(best.get(model, 0), count)
    kept: list[int] = []
    cpu = mem = gpu = 0
    for row in rng.permutation(len(pods)).tolist():
        k, q = int(pods.num_gpu[row]), int(pods.gpu_milli[row])
        models = [m for m in pods.gpu_spec[row].split("|") if m] or list(best)
        if k and max((best.get(m, 0) for m in models), default=0) < k:
            continue
        c, m, g = int(pods.cpu_milli[row]), int(pods.memory_mib[row]), k * q
        if cpu + c > cpu_cap or mem + m > mem_cap or gpu + g > gpu_cap:
            continue
        kept.append(row)
        cpu, mem, gpu = cpu + c, mem + m, gpu + g
        if len(kept) == n_pods:
            break
    return Sample(node_rows, kept)


def node_name(nodes: NodeTrace, row: int) -> str:
    return nodes.names[row].lower()


def node_manifest(nodes: NodeTrace, row: int) -> dict[str, Any]:
    capacity = {
        "cpu": f"{int(nodes.cpu_milli[row])}m",
        "memory": f"{int(nodes.memory_mib[row])}Mi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
    }
    name = node_name(nodes, row)
    labels = {"kubernetes.io/hostname": name, "type": "kwok", cluster.NODE_LABEL: "true"}
    if nodes.gpu_count[row] > 0:
        capacity["nvidia.com/gpu"] = str(int(nodes.gpu_count[row]))
        labels[GPU_MODEL_LABEL] = nodes.models[row]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {cluster.FAKE_NODE_ANNOTATION: "fake"},
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def pod_manifest(pods: PodTrace, row: int, scheduler: str) -> dict[str, Any]:
    requests = {"cpu": f"{int(pods.cpu_milli[row])}m", "memory": f"{int(pods.memory_mib[row])}Mi"}
    annotations: dict[str, str] = {}
    k, q = int(pods.num_gpu[row]), int(pods.gpu_milli[row])
    models = [m for m in pods.gpu_spec[row].split("|") if m]
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": PAUSE_IMAGE, "resources": {}}],
    }
    if k and q >= 1000:
        requests["nvidia.com/gpu"] = str(k)
    elif k:
        annotations[GPU_MILLI_ANNOTATION] = str(q)
    if k:
        if models:
            annotations[GPU_MODEL_ANNOTATION] = "|".join(models)
        expression: dict[str, Any] = {"key": GPU_MODEL_LABEL, "operator": "Exists"}
        if models:
            expression = {"key": GPU_MODEL_LABEL, "operator": "In", "values": models}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [expression]}]
                }
            }
        }
    spec["containers"][0]["resources"] = {"requests": requests, "limits": requests}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pods.names[row].lower(),
            "labels": {"app": "openb"},
            "annotations": annotations,
        },
        "spec": spec,
    }


def sampled_snapshot(nodes: NodeTrace, sample_: Sample) -> Snapshot:
    """The sample's nodes, empty, as the placement core sees them."""
    snapshot = Snapshot(max_gpus_per_node=max(8, int(nodes.gpu_count.max())))
    for row in sample_.nodes:
        count = int(nodes.gpu_count[row])
        snapshot.add_node(
            node_name(nodes, row),
            cpu_milli=int(nodes.cpu_milli[row]),
            memory=int(nodes.memory_mib[row]) * MIB,
            gpu_count=count,
            gpu_model=nodes.models[row] if count else None,
        )
    return snapshot


def lower_bound(nodes: NodeTrace, sample_: Sample, pods: PodTrace) -> int:
    """Fewest nodes that could hold the pods' total demand (``nodes_lower_bound``)."""
    rows = sample_.pods
    demand = {
        "cpu": int(pods.cpu_milli[rows].sum()),
        "memory": int(pods.memory_mib[rows].sum()) * MIB,
        "gpu": int((pods.num_gpu[rows] * pods.gpu_milli[rows]).sum()),
    }
    return nodes_lower_bound(sampled_snapshot(nodes, sample_), demand)


@dataclass(frozen=True)
class RunReport:
    scheduler: str
    pods: int
    bound: int
    nodes_used: int
    overcommitted_nodes: int  # by Fulcrum's device-level accounting
    create_seconds: float
    schedule_seconds: float  # scheduler resumed to last pod bound
    # CPU seconds per process, of the machine, and its context switches, resumed to all bound
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.bound / self.schedule_seconds if self.schedule_seconds else math.nan


def _overcommitted(nodes: NodeTrace, sample_: Sample, placed: list[dict[str, Any]]) -> set[str]:
    """Nodes whose pods do not fit, GPU devices included.

    Pods with recorded devices (``fulcrum.io/gpu-devices``) go where recorded; the others are
    packed onto devices largest share first, best fit (a node counts as over-committed when
    that fails, which can over-count but never misses a real over-commit of cpu or memory).
    """
    snapshot = sampled_snapshot(nodes, sample_)
    requests = [(pod, pod_request(pod), assigned_devices(pod)) for pod in placed]
    requests.sort(key=lambda item: (item[2] is None, -item[1].gpu_milli))
    bad: set[str] = set()
    for pod, request, devices in requests:
        uid, node = pod["metadata"]["uid"], pod["spec"]["nodeName"]
        try:
            snapshot.assign(uid, request, node, devices=devices)
        except ValueError:
            bad.add(node)
            fallback = tuple(range(request.gpu_count))
            snapshot.assign(uid, request, node, devices=fallback, check=False)
    return bad


def _usage(processes: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds so far of each of the cluster's ``processes`` (``cluster.process_labels``), of
    the whole machine (busy, and stolen), and the machine's context switches (``/proc/stat``)."""
    lines = Path("/proc/stat").read_text().splitlines()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, lines[0].split()[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    switches = next(int(line.split()[1]) for line in lines if line.startswith("ctxt "))
    return {
        **cluster_processes.cpu_seconds(processes),
        MACHINE: (user + nice + system + irq + softirq) / ticks,
        STEAL: steal / ticks,
        SWITCHES: switches,
    }


MACHINE, STEAL, SWITCHES = "(machine)", "(stolen)", "(context switches)"


# default-scheduler leaves a few of the sample's pods unschedulable (it spreads them); no
# binding for this long ends a phase
STALL_SECONDS = 30.0


class _Bindings:
    """A namespace's pods as a watch shows them: when each was first seen bound (a ``Sink``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bound: dict[str, float] = {}  # uid -> when first seen with a node (monotonic)

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        if (obj.get("spec") or {}).get("nodeName"):
            with self.lock:
                self.bound.setdefault(obj["metadata"]["uid"], time.monotonic())

    def progress(self, since: float) -> tuple[int, float]:
        """How many are bound, and when the last of them was (``since`` if none)."""
        with self.lock:
            return len(self.bound), max(self.bound.values(), default=since)


def _create_paused(
    api: Any,
    namespace: str,
    manifests: list[dict[str, Any]],
    pids: Sequence[int],
    informer: Informer,
) -> float:
    """Create the pods with the processes ``pids`` stopped (SIGSTOP; the caller resumes them)
    and start ``informer``; the seconds creating took."""
    creating = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda m: api.create_namespaced_pod(namespace, m), manifests))
        created = time.monotonic() - creating
        informer.start()
        informer.synced.wait(60)
        time.sleep(2)  # let the watchers that run catch up before the clock starts
    except BaseException:
        _resume(pids)
        raise
    return created


def _resume(pids: Sequence[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def _wait_bound(
    bindings: _Bindings,
    count: int,
    started: float,
    processes: Mapping[int, str],
    scheduler: str,
    timeout: float,
    log: Callable[[str], None],
) -> tuple[float, dict[str, float]]:
    """Until ``count`` pods are bound, or binding stalls: when the last one was bound, and the
    processes' CPU seconds up to then (not through a stall).

    A watch, not a list every tick: it loads the apiserver less and times each binding.
    """
    last_bound, bound_at, logged = -1, started, 0.0
    cpu_after: dict[str, float] = {}
    stalled_since = time.monotonic()
    while True:
        bound, bound_at = bindings.progress(started)
        if bound != last_bound:
            last_bound, stalled_since = bound, time.monotonic()
            cpu_after = _usage(processes)
            if stalled_since - logged >= 0.5 or bound == count:
                logged = stalled_since
                log(f"  {scheduler}: {bound}/{count} bound")
        if bound == count:
            return bound_at, cpu_after
        now = time.monotonic()
        if now - started > timeout or now - stalled_since > STALL_SECONDS:
            log(f"  {scheduler}: stopped waiting, {count - bound} pods unbound")
            return bound_at, cpu_after
        time.sleep(0.1)


@dataclass(frozen=True)
class Placement:
    """Pods placed by a paused-then-resumed scheduler: what was bound, and how fast."""

    manifests: int
    placed: list[dict[str, Any]]  # the namespace's bound pods, as JSON
    create_seconds: float
    schedule_seconds: float  # scheduler resumed to last pod bound
    cpu_seconds: dict[str, float]  # per process, ``_usage`` deltas, resumed to all bound


def place_paused(
    name: str,
    namespace: str,
    manifests: list[dict[str, Any]],
    scheduler: str,
    *,
    timeout: float = 600,
    log: Callable[[str], None],
    on_resume: Callable[[], object] = lambda: None,
    paused_with: Sequence[int] = (),
) -> Placement:
    """Create ``manifests`` in ``namespace`` with ``scheduler`` paused (SIGSTOP), and the
    processes ``paused_with`` (the extender: what it does about the new pods counts in the
    window, as the scheduler's own does), resume them (``on_resume`` is called just before) and
    wait until the pods are bound or binding stalls: the time to bind them all measures the
    scheduler, not how fast this process creates pods."""
    api = cluster.core_api(name)
    ensure_namespace(api, namespace)
    pid = cluster.scheduler_pid(name, scheduler)
    port = cluster.scheduler_metrics_port(name, scheduler)
    processes = cluster.process_labels(name)  # read once: /proc is scanned for them
    algorithm_before = scheduling_algorithm(port)  # while it runs: a stopped one cannot answer
    bindings = _Bindings()
    informer = Informer("pods", functools.partial(api.list_namespaced_pod, namespace), bindings)
    paused = [*paused_with, pid]
    created = _create_paused(api, namespace, manifests, paused, informer)
    log(f"  {scheduler}: {len(manifests)} pods created in {created:.1f} s (scheduler paused)")
    try:
        on_resume()
    except BaseException:
        _resume(paused)
        raise
    cpu_before = _usage(processes)
    started = time.monotonic()
    _resume(paused)
    try:
        bound_at, cpu_after = _wait_bound(
            bindings, len(manifests), started, processes, scheduler, timeout, log
        )
    finally:
        informer.stop()
    raw = api.list_namespaced_pod(namespace, _preload_content=False).data
    placed = [p for p in orjson.loads(raw)["items"] if p["spec"].get("nodeName")]
    algorithm = [b - a for a, b in zip(algorithm_before, scheduling_algorithm(port), strict=True)]
    seconds, filters, attempts = algorithm
    if attempts:
        log(
            f"  {scheduler}: its scheduling algorithm took {1000 * seconds / attempts:.2f} ms per "
            f"attempt, of which its own Filter plugins {1000 * filters / attempts:.2f} ms "
            f"({attempts:.0f} attempts)"
        )
    cpu = {p: cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after}
    return Placement(len(manifests), placed, created, bound_at - started, cpu)


def run_phase(
    name: str,
    nodes: NodeTrace,
    pods: PodTrace,
    sample_: Sample,
    scheduler: str,
    *,
    timeout: float = 600,
    log: Callable[[str], None],
) -> RunReport:
    """Place the sample's pods for ``scheduler`` in a fresh namespace (``place_paused``),
    measure, clean up."""
    namespace = f"openb-{scheduler}"
    manifests = [pod_manifest(pods, row, scheduler) for row in sample_.pods]
    done = place_paused(name, namespace, manifests, scheduler, timeout=timeout, log=log)
    report = RunReport(
        scheduler=scheduler,
        pods=len(manifests),
        bound=len(done.placed),
        nodes_used=len({p["spec"]["nodeName"] for p in done.placed}),
        overcommitted_nodes=len(_overcommitted(nodes, sample_, done.placed)),
        create_seconds=done.create_seconds,
        schedule_seconds=done.schedule_seconds,
        cpu_seconds=done.cpu_seconds,
    )
    delete_namespace(cluster.core_api(name), namespace)
    return report


def delete_namespace(api: Any, namespace: str) -> None:
    """Delete ``namespace`` and wait until it is gone: its pods, then its events (the next
    phase should not pay for this one's clean-up)."""
    api.delete_namespace(namespace)
    while _namespace_exists(api, namespace):
        time.sleep(0.5)


def _namespace_exists(api: Any, namespace: str) -> bool:
    try:
        api.read_namespace(namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


@dataclass
class Comparison:
    """Both schedulers on the same pods, round by round, and the lower bound on nodes."""

    rounds: list[tuple[RunReport, RunReport]]  # (default-scheduler, fulcrum-scheduler)
    lower_bound: int

    def to_json(self) -> dict[str, Any]:
        """The comparison as ``fulcrum compare -o json`` prints it."""
        rounds = [
            {r.scheduler: {**asdict(r), "throughput": r.throughput} for r in pair}
            for pair in self.rounds
        ]
        return {"lower_bound": self.lower_bound, "rounds": rounds, "throughput_ratios": self.ratios}

    @property
    def ratios(self) -> list[float]:
        """fulcrum-scheduler's throughput as a fraction of default-scheduler's, per round."""
        return [ours.throughput / baseline.throughput for baseline, ours in self.rounds]


def compare(
    name: str,
    *,
    n_nodes: int,
    n_pods: int,
    seed: int = 42,
    workload: str = "default",
    rounds: int = 1,
    log: Callable[[str], None] = print,
) -> Comparison:
    """On a running cluster ``name`` with no nodes: add the sampled openb nodes, then run the
    same pods through default-scheduler and fulcrum-scheduler, ``rounds`` times, in turns
    (default first in even rounds, fulcrum first in odd ones, so neither always follows the
    other's clean-up)."""
    nodes = load_nodes(traces.node_list("all_node"))
    pods = load_pods(traces.pod_list(workload))
    picked = sample(nodes, pods, n_nodes, n_pods, seed=seed)
    api = cluster.core_api(name)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda row: api.create_node(node_manifest(nodes, row)), picked.nodes))
    cluster.wait_nodes_ready(name, len(picked.nodes), log=log)
    port = cluster.load_state(name).extender_port or 0
    done: list[tuple[RunReport, RunReport]] = []
    for i in range(rounds):
        if rounds > 1:
            log(f"round {i + 1}/{rounds}")
        reports: dict[str, RunReport] = {}
        order = ["default-scheduler", cluster.FULCRUM_SCHEDULER][:: -1 if i % 2 else 1]
        for scheduler in order:
            phase = functools.partial(run_phase, name, nodes, pods, picked, scheduler, log=log)
            ours = scheduler == cluster.FULCRUM_SCHEDULER
            reports[scheduler] = _timing_extender(port, phase, log) if ours else phase()
        done.append((reports["default-scheduler"], reports[cluster.FULCRUM_SCHEDULER]))
        log(format_cpu(*done[-1]))
    return Comparison(done, lower_bound(nodes, picked, pods))


def _timing_extender(
    port: int, phase: Callable[[], RunReport], log: Callable[[str], None]
) -> RunReport:
    """Run ``phase``, then log the extender's mean time per call of each verb during it."""
    calls, seconds = extender_calls(port), extender_seconds(port)
    report = phase()
    calls_after, seconds_after = extender_calls(port), extender_seconds(port)
    log(
        "  extender time per call: "
        + ", ".join(
            f"{verb} {1000 * (seconds_after[verb] - seconds.get(verb, 0)) / n:.2f} ms"
            for verb in sorted(calls_after)
            if (n := calls_after[verb] - calls.get(verb, 0))
        )
    )
    return report


def format_cpu(*reports: RunReport) -> str:
    """Each process's CPU milliseconds per bound pod while each scheduler ran, and how busy the
    machine was (100 % = every core)."""
    procs = sorted({proc for r in reports for proc in r.cpu_seconds} - {MACHINE, STEAL, SWITCHES})

    def cpu(r: RunReport, proc: str) -> float:
        seconds = r.cpu_seconds
        if proc == "cluster total":
            return sum(seconds.get(p, 0.0) for p in procs)
        if proc == "anything else":  # this process's watch, and whatever else the host runs
            return seconds.get(MACHINE, 0.0) - cpu(r, "cluster total")
        return seconds.get(proc, 0.0)

    lines = ["CPU ms (and context switches) per bound pod, scheduler resumed to last binding:"]
    lines.append(f"  {'process':20}" + "".join(f"{r.scheduler:>20}" for r in reports))
    for proc in [*procs, "cluster total", "anything else", STEAL, SWITCHES]:
        scale = 1 if proc == SWITCHES else 1000
        cells = "".join(f"{scale * cpu(r, proc) / max(r.bound, 1):>20.2f}" for r in reports)
        lines.append(f"  {proc:20}{cells}")
    cores = os.cpu_count() or 1
    busy = [r.cpu_seconds.get(MACHINE, 0.0) / (r.schedule_seconds * cores) for r in reports]
    lines.append(f"  {'machine busy':20}" + "".join(f"{b:>20.0%}" for b in busy))
    # on a busy machine, throughput relative to the first column follows this ratio
    per_pod = [cpu(r, "cluster total") / max(r.bound, 1) for r in reports]
    ratios = "".join(f"{per_pod[0] / p if p else math.nan:>20.2f}" for p in per_pod)
    lines.append(f"  {'first/this per pod':20}{ratios}")
    return "\n".join(lines)


def format_reports(comparison: Comparison) -> str:
    lines = [
        f"{'round':>5} {'scheduler':20} {'bound':>11} {'nodes used':>10} {'over-committed':>14} "
        f"{'pods/s':>7} {'create s':>8}",
    ]
    for i, pair in enumerate(comparison.rounds):
        for r in pair:
            lines.append(
                f"{i + 1:>5} {r.scheduler:20} {r.bound:>5}/{r.pods:<5} {r.nodes_used:>10} "
                f"{r.overcommitted_nodes:>14} {r.throughput:>7.1f} {r.create_seconds:>8.1f}"
            )
    lines.append(f"lower bound on nodes: {comparison.lower_bound}")
    ratios = comparison.ratios
    nodes = [ours.nodes_used / baseline.nodes_used for baseline, ours in comparison.rounds]
    lines.append(
        f"fulcrum/default: nodes used {np.median(nodes):.2f}, throughput "
        f"{np.median(ratios):.2f}"
        + (
            f" (median of {len(ratios)} rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            if len(ratios) > 1
            else ""
        )
    )
    return "\n".join(lines)
