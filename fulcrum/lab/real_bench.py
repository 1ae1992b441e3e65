"""Local rebuild against a plain rollout on real nodes, same run: change -> every successor Ready.

Two Deployments of the same pods (``real_rebuild.pod_spec``, on the real nodes), one opted in
to local rebuild with an IP pool and one not, get the same change, one after the other, in
alternating order per round: an image change (to an image of ``image_mb`` MiB that no node has
pulled yet, from the cluster's registry) and an env change. Each rollout is timed from the
change until all its successors are Ready, and each successor's time is split by where it went:

- ``held``: the change -> the rollout's first predecessor starting to terminate (for one
  rollout, not per successor): the Deployment controller's reaction, and for local rebuild with
  the pre-pull hold (``--prepull hold``) the hold, while the nodes pull the new image;
- ``wait``: its predecessor starting to terminate -> the successor bound to a node;
- ``sandbox``: bound -> the kubelet's first image Event for it (``Pulling`` or ``Pulled``),
  which it sends once the pod sandbox is up, network included (CNI ADD: for a local rebuild,
  after the predecessor's sandbox has let its address go);
- ``pull``: the image pull, as the kubelet reports it (``Pulled ... in Xs``); 0 when present;
- ``start``: the sandbox up -> the kubelet's ``Started`` Event, less the pull;
- ``ready``: ``Started`` -> Ready (the readiness probe's first success).

``--prepull``: ``hold`` (the default: the admission webhook pauses the opted-in Deployment's
image change until its nodes have pulled, ``admission.prepull``), or ``ahead`` (that webhook
removed: the controller asks the nodes to pull as soon as it sees the new template, while the
rollout goes on), or ``off`` (no hold, and the nodes' agents run without their ``prepull``
plugin: nobody answers, the successors pull as before pre-pull existed).

Times are when this process saw each watch event: a pod's status reaches the API server in
batches, the kubelet's Events one by one, so the split is good to about a tenth of a second.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fulcrum.harness import cluster, nodeagent
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from kube.informer import Informer
from node.prepull import PrePull
from node.registry import DEFAULT_PLUGINS

NS = "bench-real"
POOL = "10.244.210.0/26"
PHASES = ("held", "wait", "sandbox", "pull", "start", "ready")
PREPULL_MODES = ("hold", "ahead", "off")
HOLD_WEBHOOK = "deployments.prepull.fulcrum.io"
PULLED = re.compile(r'Successfully pulled image "([^"]+)" in ([0-9.]+)(ms|s)')


@dataclass(frozen=True)
class Config:
    name: str = "fulcrum-bench-real"
    real_nodes: int = 2
    replicas: int = 4
    image_mb: int = 200
    rounds: int = 3
    prepull: str = "hold"  # PREPULL_MODES


@dataclass
class Rollout:
    change: str
    workload: str
    round: int
    seconds: float
    phases: dict[str, float]  # median per successor
    kept: str

    def to_json(self) -> dict[str, Any]:
        return {
            "change": self.change,
            "workload": self.workload,
            "round": self.round,
            "seconds": round(self.seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "kept": self.kept,
        }


@dataclass
class Result:
    config: Config
    rollouts: list[Rollout] = field(default_factory=list)

    def ratio(self, change: str) -> float:
        """Local over plain, the median of the rounds' ratios (each round's pair ran back to
        back on the same nodes)."""
        ratios = []
        for r in range(self.config.rounds):
            pair = {
                x.workload: x.seconds for x in self.rollouts if (x.change, x.round) == (change, r)
            }
            if {"local", "plain"} <= set(pair):
                ratios.append(pair["local"] / pair["plain"])
        return statistics.median(ratios) if ratios else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "config": vars(self.config),
            "rollouts": [r.to_json() for r in self.rollouts],
            "ratio_local_over_plain": {c: round(self.ratio(c), 3) for c in ("image", "env")},
        }


class _Phases:
    """Watches the namespace's pods and Events: when each successor reached each step."""

    def __init__(self, kit: rr.Kit) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, dict[str, float]] = {}  # uid -> step -> monotonic time
        self.pulls: dict[str, float] = {}  # pod name -> pull seconds
        self.kubelet: dict[str, dict[str, float]] = {}  # pod name -> Event reason -> when seen
        self.names: dict[str, str] = {}
        self.changed: float | None = None  # when the current rollout's change was made
        self.informer = Informer("pods", functools.partial(kit.core.list_namespaced_pod, NS), self)
        self.events = Informer(
            "events", functools.partial(kit.core.list_namespaced_event, NS), _Pulls(self)
        )

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        now = time.monotonic()
        meta, status = obj["metadata"], obj.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        steps = {
            "deleting": bool(meta.get("deletionTimestamp")) or event == "DELETED",
            "bound": bool((obj.get("spec") or {}).get("nodeName")),
            "ready": conditions.get("Ready") == "True",
        }
        with self.lock:
            self.names[meta["uid"]] = meta["name"]
            mine = self.seen.setdefault(meta["uid"], {})
            for step, reached in steps.items():
                if reached:
                    mine.setdefault(step, now)

    def split(self, old: set[str], new: Iterable[str]) -> dict[str, float]:
        """Median time per phase over the successors ``new``; ``wait`` pairs the i-th
        predecessor to go with the i-th successor bound."""
        with self.lock:
            gone = sorted(
                self.seen[u]["deleting"] for u in old if "deleting" in self.seen.get(u, {})
            )
            rows = [
                (
                    self.seen[u] | self.kubelet.get(self.names[u], {}),
                    self.pulls.get(self.names[u], 0.0),
                )
                for u in new
            ]
        bound = sorted(s["bound"] for s, _ in rows if "bound" in s)
        phases: dict[str, list[float]] = {p: [] for p in PHASES}
        phases["wait"] = [max(0.0, b - g) for g, b in zip(gone, bound, strict=False)]
        if gone and self.changed is not None:
            phases["held"] = [max(0.0, gone[0] - self.changed)]
        for s, pull in rows:
            image = min((s[r] for r in ("Pulling", "Pulled") if r in s), default=None)
            if image is None or not {"bound", "Started", "ready"} <= set(s):
                continue
            phases["sandbox"].append(max(0.0, image - s["bound"]))
            phases["pull"].append(pull)
            phases["start"].append(max(0.0, s["Started"] - image - pull))
            phases["ready"].append(max(0.0, s["ready"] - s["Started"]))
        return {p: statistics.median(v) if v else float("nan") for p, v in phases.items()}


class _Pulls:
    def __init__(self, phases: _Phases) -> None:
        self.phases = phases

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        now, pod, reason = time.monotonic(), obj["involvedObject"]["name"], obj.get("reason")
        match = PULLED.search(obj.get("message") or "")
        with self.phases.lock:
            if reason in ("Pulling", "Pulled", "Started"):
                self.phases.kubelet.setdefault(pod, {}).setdefault(str(reason), now)
            if reason == "Pulled" and match:
                seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
                self.phases.pulls[pod] = seconds


def _roll(
    kit: rr.Kit,
    phases: _Phases,
    workload: str,
    change: str,
    command: list[str],
    want: Any,
    round_: int,
    replicas: int,
    say: Callable[[str], None],
) -> Rollout:
    """One workload's rollout after ``command``: its time, and its successors' phases."""
    before = {m.uid for m in rr.members(kit, NS, workload).values()}

    def make_change() -> None:
        phases.changed = time.monotonic()
        kit.kubectl(*command)

    rolled = rr.roll(kit, NS, {workload: replicas}, make_change, want, timeout=600)[workload]
    time.sleep(1)  # the last Events and pod updates reach the watches
    after = {m.uid for m in rr.members(kit, NS, workload).values()}
    split = phases.split(before, after - before)
    result = Rollout(change, workload, round_, rolled.seconds, split, str(rolled.kept))
    say(
        f"  round {round_ + 1} {change:5} {workload:5} {rolled.seconds:6.2f} s  "
        + "  ".join(f"{p} {v:5.2f}" for p, v in split.items())
        + f"  ({rolled.kept})"
    )
    return result


def run(config: Config, *, say: Callable[[str], None] = print) -> Result:
    """A cluster with ``config.real_nodes`` real nodes, the two Deployments, the rounds; the
    cluster is taken down at the end."""
    agent = None
    if config.prepull == "off":  # the agents without their pre-pull plugin: nobody pulls ahead
        plugins = ",".join(p for p in DEFAULT_PLUGINS if p != PrePull.name)
        agent = nodeagent.AgentOptions(plugins=plugins)
    cluster.up(config.name, nodes=0, real_nodes=config.real_nodes, node_agent=agent, log=say)
    try:
        return _measure(config, say)
    finally:
        cluster.down(config.name, log=say)


def _measure(config: Config, say: Callable[[str], None]) -> Result:
    state = cluster.load_state(config.name)
    registry = f"127.0.0.1:{state.registry_port}"
    tags = ["v0"] + [f"r{r}-{w}" for r in range(config.rounds) for w in ("local", "plain")]
    say(f"pushing {len(tags)} images of {config.image_mb} MiB to {registry}")
    refs = rb.push_app_images(registry, tuple(tags), pad_mb=config.image_mb, say=say)
    kit = rr.Kit.of(config.name)
    if config.prepull in ("ahead", "off"):
        drop_hold_webhook(kit)
        say(f"pre-pull ahead: webhook {HOLD_WEBHOOK} removed, rollouts are not held")
    kit.kubectl("create", "namespace", NS)
    rr.apply(
        kit,
        [
            rr.ip_pool(NS, "local", POOL),
            rb.deployment(NS, "local", config.replicas, refs["v0"], opted=True, pool="local"),
            rb.deployment(NS, "plain", config.replicas, refs["v0"], opted=False, pool=None),
        ],
    )
    apps = {"local": config.replicas, "plain": config.replicas}
    rr.wait_running(kit, NS, apps, timeout=600)
    rr.wait_guarded(kit, NS, {"local": config.replicas})
    phases = _Phases(kit)
    phases.informer.start()
    phases.events.start()
    result = Result(config)
    try:
        for r in range(config.rounds):
            order = ("local", "plain") if r % 2 == 0 else ("plain", "local")
            for workload in order:
                image = refs[f"r{r}-{workload}"]
                command = ["set", "image", f"deployment/{workload}", f"main={image}", "-n", NS]
                result.rollouts.append(
                    _roll(
                        kit,
                        phases,
                        workload,
                        "image",
                        command,
                        rr.has_image(image),
                        r,
                        config.replicas,
                        say,
                    )
                )
            for workload in order:
                value = f"r{r}"
                command = ["set", "env", f"deployment/{workload}", f"REVISION={value}", "-n", NS]
                result.rollouts.append(
                    _roll(
                        kit,
                        phases,
                        workload,
                        "env",
                        command,
                        rr.has_env(value),
                        r,
                        config.replicas,
                        say,
                    )
                )
    finally:
        phases.informer.stop()
        phases.events.stop()
    return result


def drop_hold_webhook(kit: rr.Kit) -> None:
    """Remove the pre-pull hold (``HOLD_WEBHOOK``) from Fulcrum's mutating configuration."""
    config = json.loads(kit.kubectl("get", "mutatingwebhookconfiguration", "fulcrum.io", "-o=json"))
    names = [w["name"] for w in config["webhooks"]]
    if HOLD_WEBHOOK not in names:
        return
    i = names.index(HOLD_WEBHOOK)
    patch = [
        {"op": "test", "path": f"/webhooks/{i}/name", "value": HOLD_WEBHOOK},
        {"op": "remove", "path": f"/webhooks/{i}"},
    ]
    kit.kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        "fulcrum.io",
        "--type=json",
        f"-p={json.dumps(patch)}",
    )


def format_table(result: Result) -> str:
    lines = [
        f"local rebuild vs plain rollout on {result.config.real_nodes} real nodes, "
        f"{result.config.replicas} pods each, image {result.config.image_mb} MiB, "
        f"{result.config.rounds} rounds, pre-pull {result.config.prepull} "
        "(median per successor, seconds; held: per rollout)",
        f"{'change':6} {'workload':8} {'change->Ready':>13} " + " ".join(f"{p:>7}" for p in PHASES),
    ]
    for change in ("image", "env"):
        for workload in ("local", "plain"):
            rows = [x for x in result.rollouts if (x.change, x.workload) == (change, workload)]
            if not rows:
                continue
            total = statistics.median(x.seconds for x in rows)
            cells = [statistics.median(x.phases[p] for x in rows) for p in PHASES]
            lines.append(
                f"{change:6} {workload:8} {total:13.2f} " + " ".join(f"{c:7.2f}" for c in cells)
            )
        lines.append(f"{change:6} local/plain (median of rounds): {result.ratio(change):.2f}x")
    return "\n".join(lines)
