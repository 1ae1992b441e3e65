"""``fulcrum node``: the node agent's process, wired to its cluster, its kubelet and its runtime.

One per node (the chart's DaemonSet; ``fulcrum cluster up --real-nodes N`` starts one per real
node). It owns the Kubernetes client (the ``node`` package is given functions, never a client):

- an informer on the pods bound to this node: each change goes to the plugins' ``pod_changed``,
  each deletion to ``pod_removed``;
- the node's labels from the plugins (``nvidia.com/gpu.product``...), patched once at start;
- the transports the plugins need, and only those: NRI (``node.nri``) when a plugin takes a
  container hook, a device plugin (``node.deviceplugin``) per advertised resource;
- the checks every ``--check-interval``: the Node's ``fulcrum.io/node-checks`` annotation, a
  ``FulcrumNodeChecks`` condition, and gauges on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kubernetes import client
from prometheus_client import CollectorRegistry, start_http_server

from kube import objects
from node import check_report, deviceplugin, nri
from node import registry as node_registry
from node.agent import Agent
from node.cri import CRIClient
from node.plugin import Adjustment, CheckResult, DeviceSet, NodePlugin, PodView
from rebuild.writes import EventSender

log = logging.getLogger("fulcrum.node")
COMPONENT = "fulcrum-node"
AGENT = "fulcrum-node/0.1.0"
NRI_INDEX = "50"  # NRI plugins run in index order: leave room both sides


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta = objects.meta(pod)
    return PodView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(objects.labels(pod)),
        annotations=dict(objects.annotations(pod)),
    )


@dataclass
class NodeContext:
    """:class:`node.plugin.AgentContext` for one node of a real cluster."""

    node: str
    kubelet_root: Path
    kubelet_healthz: str
    runtime_socket: Path
    options: Mapping[str, str]
    core: Any  # kubernetes.client.CoreV1Api
    events: EventSender
    node_uid: str = ""
    pods: dict[str, PodView] = field(default_factory=dict)  # uid -> view: the informer's last

    def pull_image(self, image: str, timeout: float) -> float:
        with CRIClient(self.runtime_socket) as cri:
            return cri.pull_image(image, timeout=timeout).seconds

    def image_present(self, image: str) -> bool:
        with CRIClient(self.runtime_socket) as cri:
            return cri.image_present(image)

    def runtime_version(self) -> Mapping[str, str]:
        with CRIClient(self.runtime_socket, timeout=3) as cri:
            return vars(cri.version())

    def kubelet_version(self) -> str | None:
        info = self.core.read_node(self.node).status.node_info
        return str(info.kubelet_version) if info else None

    def api_date(self) -> str:
        """The API server's ``Date`` header (for the clock-offset check)."""
        _, _, headers = self.core.api_client.call_api(
            "/version", "GET", auth_settings=["BearerToken"], _preload_content=False
        )
        return str(headers.get("Date", ""))

    def annotate_pod(self, pod: PodView, annotations: Mapping[str, str | None]) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        self.core.patch_namespaced_pod(pod.name, pod.namespace, body)

    def event(self, pod: PodView | None, reason: str, message: str, *, warning: bool) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if pod is not None:
            involved = {
                "kind": "Pod",
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
                "apiVersion": "v1",
            }
            namespace = pod.namespace
        else:
            involved = {"kind": "Node", "name": self.node, "uid": self.node_uid, "apiVersion": "v1"}
            namespace = "default"
        body = {
            "metadata": {"generateName": f"{involved['name']}.fulcrum-node."},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.events.send(namespace, body)


class PodSink:
    """The informer's sink: pod changes on this node to the plugins."""

    def __init__(self, agent: Agent, context: NodeContext) -> None:
        self.agent, self.context = agent, context
        self.wants = agent.uses("pod_changed") or agent.uses("pod_removed")

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        view = pod_view(obj)
        if event == "DELETED":
            self.context.pods.pop(view.uid, None)
            self.agent.notify("pod_removed", view)
            return
        self.context.pods[view.uid] = view
        self.agent.notify("pod_changed", view, self.context)

    def replace(self, kind: str, objects_: Iterable[Mapping[str, Any]]) -> None:
        """A (re-)list: pods gone while the watch was down are removed, the rest changed."""
        views = {v.uid: v for v in map(pod_view, objects_)}
        gone = [v for uid, v in self.context.pods.items() if uid not in views]
        self.context.pods = views
        for view in gone:
            self.agent.notify("pod_removed", view)
        for view in views.values():
            self.agent.notify("pod_changed", view, self.context)


class NRIBridge:
    """``node.nri``'s handler: the runtime's messages to the agent's hooks, off the event loop."""

    NOTIFY: ClassVar[dict[str, str]] = {
        "StartContainer": "container_started",
        "StopContainer": "container_stopped",
    }  # pod_changed and pod_removed come from the API (the informer), not the runtime

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def events(self) -> set[str]:
        wanted = {"CreateContainer"} if self.agent.uses("create_container") else set()
        return wanted | {e for e, hook in self.NOTIFY.items() if self.agent.uses(hook)}

    async def create_container(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> Adjustment:
        loop = asyncio.get_running_loop()
        call = functools.partial(
            self.agent.create_container, nri.pod_view(pod), nri.container_view(container)
        )
        return await loop.run_in_executor(None, call)

    async def event(
        self, event: str, pod: Mapping[str, Any], container: Mapping[str, Any] | None
    ) -> None:
        hook = self.NOTIFY.get(event)
        if hook is None or container is None:
            return
        call = functools.partial(
            self.agent.notify, hook, nri.pod_view(pod), nri.container_view(container)
        )
        await asyncio.get_running_loop().run_in_executor(None, call)


class Transport(Protocol):
    def stop(self) -> None: ...


class NRIThread:
    """The NRI connection on an event loop of its own thread."""

    def __init__(self, connection: nri.NRIConnection) -> None:
        self.connection = connection
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, name="nri", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.connection.run())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=5)


def _device_plugin(
    agent: Agent, plugin: NodePlugin, found: DeviceSet, kubelet_root: Path
) -> deviceplugin.DevicePlugin:
    def devices() -> list[tuple[str, bool]]:
        current = agent.call(plugin, "devices", plugin.devices) or found
        return deviceplugin.device_list(current)

    def allocate(requests: list[list[str]]) -> list[Adjustment]:
        return [
            agent.call(plugin, "allocate", functools.partial(plugin.allocate, ids))
            for ids in requests
        ]

    def preferred(available: list[str], must: list[str], size: int) -> list[str]:
        call = functools.partial(plugin.preferred, available, must, size)
        return list(agent.call(plugin, "preferred", call))

    return deviceplugin.DevicePlugin(
        found.resource, kubelet_root, devices=devices, allocate=allocate, preferred=preferred
    ).start()


def _start_transports(agent: Agent, ctx: NodeContext, nri_socket: Path) -> list[Transport]:
    """NRI when a plugin takes a container hook; a device plugin per advertised resource."""
    started: list[Transport] = []
    bridge = NRIBridge(agent)
    events = bridge.events()
    if events:
        connection = nri.NRIConnection(nri_socket, "fulcrum-node", NRI_INDEX, bridge, events)
        started.append(NRIThread(connection))
        log.info("nri: %s on %s, events %s", connection.plugin, nri_socket, sorted(events))
    for plugin, found in agent.device_sets():
        started.append(_device_plugin(agent, plugin, found, ctx.kubelet_root))
        log.info("device plugin: %s, %d devices (%s)", found.resource, len(found.ids), plugin.name)
    return started


def _report_checks(
    agent: Agent, ctx: NodeContext, metrics: check_report.CheckMetrics
) -> list[CheckResult]:
    """Run the checks; the Node's annotation and condition, and the gauges."""
    results = agent.checks()
    now = datetime.now(UTC)
    metrics.update(results)
    ctx.core.patch_node(ctx.node, check_report.annotation_patch(results, agent=AGENT, now=now))
    node = ctx.core.read_node(ctx.node)
    conditions = [
        {"type": c.type, "status": c.status, "lastTransitionTime": c.last_transition_time}
        for c in node.status.conditions or []
    ]
    patch = check_report.status_patch(results, now, conditions)
    ctx.core.patch_node_status(ctx.node, patch)
    return results


def _unused_options(options: Mapping[str, str], plugins: Iterable[NodePlugin]) -> list[str]:
    names = {p.name.lower() for p in plugins}
    return sorted(k for k in options if k.partition(".")[0] not in names)


def run(
    *,
    node: str,
    plugins: list[str],
    options: Mapping[str, str],
    kubeconfig_path: Path | None,
    context: str | None,
    nri_socket: Path,
    kubelet_root: Path,
    kubelet_healthz: str,
    runtime_socket: Path,
    metrics_host: str,
    metrics_port: int,
    check_interval: float,
) -> None:
    """Run the agent for ``node`` until SIGTERM or SIGINT."""
    from fulcrum.run import kubeconfig
    from kube.informer import Informer

    cfg, source = kubeconfig.load(kubeconfig_path, context=context)
    core = client.CoreV1Api(client.ApiClient(cfg))
    node_uid = str(core.read_node(node).metadata.uid)
    events = EventSender(lambda ns, body: core.create_namespaced_event(ns, body))
    ctx = NodeContext(
        node, kubelet_root, kubelet_healthz, runtime_socket, options, core, events, node_uid
    )
    prom = CollectorRegistry()
    chosen = node_registry.create(plugins)
    for unused in _unused_options(options, chosen):
        log.warning("--plugin-option %s: no plugin %r runs here", unused, unused.split(".")[0])
    try:
        agent = Agent(chosen, ctx, registry=prom)
    except ValueError as exc:  # a plugin's options
        raise SystemExit(f"fulcrum node: {exc}") from None
    log.info("node %s: plugins %s; cluster from %s", node, ", ".join(agent.hooks), source)
    labels = agent.node_labels()
    if labels:
        core.patch_node(node, {"metadata": {"labels": labels}})
    start_http_server(metrics_port, metrics_host, registry=prom)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sink = PodSink(agent, ctx)
    informer = None
    if sink.wants:
        selector = f"spec.nodeName={node}"
        informer = Informer("pods", core.list_pod_for_all_namespaces, sink, field_selector=selector)
        informer.start()
    transports = _start_transports(agent, ctx, nri_socket)
    metrics = check_report.CheckMetrics(prom)
    try:
        while not stop.is_set():
            if agent.uses("check"):
                try:
                    _report_checks(agent, ctx, metrics)
                except Exception as exc:  # the API down for a while: try again next round
                    log.warning("could not publish the checks: %s", exc)
            stop.wait(check_interval)
    finally:
        for transport in transports:
            transport.stop()
        if informer is not None:
            informer.stop()
        agent.close()
        events.flush()
