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

import logging
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from prometheus_client import CollectorRegistry, start_http_server

from kube import objects
from node import registry as node_registry
from node.agent import Agent
from node.plugin import PodView
from rebuild.writes import EventSender

log = logging.getLogger("fulcrum.node")
COMPONENT = "fulcrum-node"


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
    pods: dict[str, PodView] = field(default_factory=dict)  # uid -> view, from the informer

    def _cri(self) -> Any:
        from node.cri import ImageService

        return ImageService(self.runtime_socket)

    def pull_image(self, image: str, timeout: float) -> float:
        started = time.monotonic()
        self._cri().pull(image, timeout=timeout)
        return time.monotonic() - started

    def image_present(self, image: str) -> bool:
        return bool(self._cri().status(image))

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
        views = [pod_view(o) for o in objects_]
        self.context.pods = {v.uid: v for v in views}
        for view in views:
            self.agent.notify("pod_changed", view, self.context)


def _report_checks(agent: Agent, context: NodeContext, prom: CollectorRegistry) -> None:
    from node import check_report

    results = agent.checks()
    check_report.publish(results, context.core, context.node, prom)


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
    agent = Agent(node_registry.create(plugins), ctx, registry=prom)
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
        informer = Informer(
            "pods",
            core.list_pod_for_all_namespaces,
            sink,
            field_selector=f"spec.nodeName={node}",
        )
        informer.start()
    transports = _start_transports(agent, ctx, nri_socket, stop)
    try:
        while not stop.is_set():
            if agent.uses("check"):
                try:
                    _report_checks(agent, ctx, prom)
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
