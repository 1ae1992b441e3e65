"""What ``fulcrum node`` costs a container start, on a real node, agent on against agent off.

One real node; rounds alternate between its agent running (every built-in plugin, fake GPUs,
so that each container passes through NRI ``CreateContainer`` and the plugins' hooks) and the
agent stopped (the runtime then has no NRI plugin). Each round starts ``pods`` pods on the node
and deletes them. Per round:

- ``create_ms``: the kubelet's own measure of the CRI ``CreateContainer`` call, mean per
  container (``kubelet_runtime_operations_duration_seconds{operation_type="create_container"}``
  from the kubelet's /metrics, read through the API server before and after): what the runtime,
  and the NRI round trip inside it, cost;
- ``start_ms``: the same for ``StartContainer``;
- ``ready_s``: the median pod's time from creation to Running, as seen on the watch;
- with the agent on, its resident memory and the time its hooks took
  (``fulcrum_node_hook_seconds``), per container.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fulcrum.harness import cluster, nodeagent, processes
from fulcrum.inspect import metrics
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr

NS = "bench-node"
NODE = "real-1"


@dataclass(frozen=True)
class Config:
    name: str = "fulcrum-bench-node"
    pods: int = 10
    rounds: int = 4
    gpus: int = 2


@dataclass
class Round:
    agent: bool
    round: int
    create_ms: float
    start_ms: float
    running_s: float
    rss_mib: float | None = None
    hook_ms: float | None = None  # the agent's own hooks, per container


@dataclass
class Result:
    config: Config
    rounds: list[Round] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for on in (True, False):
            rows = [r for r in self.rounds if r.agent is on]
            if not rows:
                continue
            rss = [r.rss_mib for r in rows if r.rss_mib is not None]
            hooks = [r.hook_ms for r in rows if r.hook_ms is not None]
            out["agent on" if on else "agent off"] = {
                "create_ms": statistics.median(r.create_ms for r in rows),
                "start_ms": statistics.median(r.start_ms for r in rows),
                "running_s": statistics.median(r.running_s for r in rows),
                "rss_mib": statistics.median(rss) if rss else None,
                "hook_ms": statistics.median(hooks) if hooks else None,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "rounds": [asdict(r) for r in self.rounds],
            "summary": self.summary(),
        }


def _histogram(text: str, metric: str, **match: str) -> tuple[float, float]:
    """(sum, count) of one histogram's samples whose labels include ``match``."""
    scrape = metrics.parse(text)
    return (
        scrape.total(f"{metric}_sum", **match) or 0.0,
        scrape.total(f"{metric}_count", **match) or 0.0,
    )


def _kubelet_ops(kit: rr.Kit) -> dict[str, tuple[float, float]]:
    text = kit.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/metrics")
    metric = "kubelet_runtime_operations_duration_seconds"
    return {
        op: _histogram(text, metric, operation_type=op)
        for op in ("create_container", "start_container")
    }


def _agent_hooks(port: int) -> tuple[float, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return _histogram(text, "fulcrum_node_hook_seconds", hook="create_container")


def _pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"bench": "node"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": False,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}},
                }
            ],
        },
    }


def _running_times(kit: rr.Kit, created: dict[str, float], timeout: float = 180) -> list[float]:
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(created):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(created) - len(seen)} pods not Running in {timeout} s")
        for pod in kit.core.list_namespaced_pod(NS, label_selector="bench=node").items:
            name = pod.metadata.name
            if name not in seen and name in created and pod.status.phase == "Running":
                seen[name] = time.monotonic() - created[name]
        time.sleep(0.1)
    return list(seen.values())


def _round(kit: rr.Kit, config: Config, index: int, image: str, agent_on: bool) -> Round:
    before = _kubelet_ops(kit)
    created: dict[str, float] = {}
    for i in range(config.pods):
        name = f"p{index}-{i}"
        kit.core.create_namespaced_pod(NS, _pod(name, image))
        created[name] = time.monotonic()
    running = _running_times(kit, created)
    after = _kubelet_ops(kit)
    kit.kubectl("delete", "pods", "-n", NS, "-l", "bench=node", "--wait=true", "--grace-period=0")

    def mean_ms(op: str) -> float:
        calls = after[op][1] - before[op][1]
        return 1000 * (after[op][0] - before[op][0]) / calls if calls else 0.0

    return Round(
        agent_on,
        index,
        mean_ms("create_container"),
        mean_ms("start_container"),
        statistics.median(running),
    )


def run(config: Config, *, say: Callable[[str], None]) -> Result:
    result = Result(config)
    agent = nodeagent.AgentOptions(gpus=config.gpus, gpu_model="T4")
    cluster.up(config.name, nodes=0, real_nodes=1, node_agent=agent, log=say)
    try:
        kit = rr.Kit.of(config.name)
        kit.kubectl("create", "namespace", NS)
        state = cluster.load_state(config.name)
        image = rb.push_app_images(f"127.0.0.1:{state.registry_port}", ("node",), say=say)["node"]
        directory = cluster.state_dir(config.name) / "real" / NODE
        _round(kit, config, 0, image, True)  # the image pulled, the node warm
        nodeagent.stop([directory])
        for index in range(1, 2 * config.rounds + 1):
            on = index % 2 == 1
            port = 0
            if on:
                port = nodeagent.start(
                    NODE,
                    directory,
                    kubeconfig=cluster.kubeconfig_path(config.name),
                    healthz_port=_healthz_port(directory),
                    options=agent,
                )
                time.sleep(2)  # registered with the runtime
            hooks_before = _agent_hooks(port) if on else (0.0, 0.0)
            row = _round(kit, config, index, image, on)
            if on:
                total, count = _agent_hooks(port)
                row.hook_ms = 1000 * (total - hooks_before[0]) / max(count - hooks_before[1], 1)
                pid = next(iter(processes.processes_under(directory / "nri.sock")), None)
                row.rss_mib = processes.rss_mib(pid) if pid else None
                nodeagent.stop([directory])
            result.rounds.append(row)
            say(
                f"  round {index}: agent {'on ' if on else 'off'} create {row.create_ms:.1f} ms, "
                f"start {row.start_ms:.1f} ms, running {row.running_s:.2f} s"
            )
    finally:
        cluster.down(config.name, log=say)
    return result


def _healthz_port(directory: Any) -> int:
    import yaml

    return int(yaml.safe_load((directory / "kubelet.yaml").read_text())["healthzPort"])


def format_table(result: Result) -> str:
    lines = [
        "| agent | CreateContainer (ms) | StartContainer (ms) | create→Running (s) "
        "| agent RSS (MiB) | hooks per container (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in result.summary().items():

        def cell(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)

        lines.append(
            f"| {label} | {cell(row['create_ms'], '.1f')} | {cell(row['start_ms'], '.1f')} | "
            f"{cell(row['running_s'], '.2f')} | {cell(row['rss_mib'], '.0f')} | "
            f"{cell(row['hook_ms'], '.2f')} |"
        )
    return "\n".join(lines)
