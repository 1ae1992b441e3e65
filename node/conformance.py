"""The conformance kit every node plugin must pass, built-in or installed.

Run it on your own plugin class::

    from node.conformance import check_node_plugin
    check_node_plugin(MyPlugin)                      # raises ConformanceError on a violation
    check_node_plugin(MyPlugin, options={"my.key": "1"})

It configures the plugin with a :class:`FakeContext` (usable in your own tests: it records
Events, annotations and pulls) and drives every hook it overrides with pods a node sees: plain
ones, GPU pods with Fulcrum's decision, shares, pods whose ``fulcrum.io/`` annotations are
malformed, containers with and without environment. It checks that:

- the class declares a name (lower-case letters, digits, dashes), an order, a timeout between
  0 and the agent's budget, and a failure policy;
- ``create_container`` returns an :class:`Adjustment` or None (or raises :class:`Refuse`), with
  valid environment names and annotation keys, within the plugin's timeout, for every pod; a
  malformed annotation is not a reason to raise anything else;
- ``check`` returns :class:`CheckResult` items with a name and a :class:`Severity`;
- ``devices`` returns None or a :class:`DeviceSet` of distinct IDs, and ``allocate`` of some of
  them an :class:`Adjustment`;
- lifecycle notifications return, within the timeout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from kube import api
from kube.resources import GPU_MILLI_ANNOTATION
from node.agent import BUDGET
from node.plugin import (
    Adjustment,
    CheckResult,
    ContainerView,
    DeviceSet,
    NodePlugin,
    PodView,
    Refuse,
    Severity,
    hooks_of,
)

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ANNOTATION = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")


class ConformanceError(AssertionError):
    """A plugin broke one of the rules above; the message says which and with what input."""


@dataclass
class FakeContext:
    """An :class:`~node.plugin.AgentContext` without a node: records what plugins ask of it."""

    node: str = "node-1"
    kubelet_root: Path = Path("/var/lib/kubelet")
    kubelet_healthz: str = "http://127.0.0.1:10248/healthz"
    runtime_socket: Path = Path("/run/containerd/containerd.sock")
    options: Mapping[str, str] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (pod key, reason, msg)
    annotated: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)

    def pull_image(self, image: str, timeout: float) -> float:
        self.images.add(image)
        return 0.0

    def image_present(self, image: str) -> bool:
        return image in self.images

    def annotate_pod(self, pod: PodView, annotations: Mapping[str, str | None]) -> None:
        self.annotated.append((pod.key, dict(annotations)))

    def event(self, pod: PodView | None, reason: str, message: str, *, warning: bool) -> None:
        self.events.append((pod.key if pod else self.node, reason, message))

    def runtime_version(self) -> Mapping[str, str]:
        return {"runtime_name": "containerd", "runtime_version": "v2.4.2"}

    def kubelet_version(self) -> str | None:
        return "v1.34.4"

    def api_date(self) -> str:
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


def sample_pods() -> list[PodView]:
    """Pods a node sees, including ones whose Fulcrum annotations are malformed."""
    base = {"app": "web"}
    shapes: list[dict[str, str]] = [
        {},
        {api.GPU_DEVICES: "0"},
        {api.GPU_DEVICES: "0,1"},
        {api.GPU_DEVICES: "1", GPU_MILLI_ANNOTATION: "250"},
        {api.GPU_DEVICES: "x,,1"},
        {api.GPU_DEVICES: "99"},
        {GPU_MILLI_ANNOTATION: "nope"},
        {api.REBUILD: "local", api.ASSIGNED_IP: "10.244.128.7"},
        {api.ASSIGNED_IP: "not-an-ip"},
        {"example.com/env": "x" * 300},
    ]
    return [
        PodView("default", f"pod-{i}", f"uid-{i}", labels=base, annotations=a)
        for i, a in enumerate(shapes)
    ]


def sample_containers() -> list[ContainerView]:
    return [
        ContainerView("app", "c1", "registry.local/app:1"),
        ContainerView("app", "c2", "registry.local/app:1", env={"PATH": "/bin", "A": "b"}),
        ContainerView("gpu", "c3", "registry.local/app:1", env={"FULCRUM_GPU_ALLOCATED": "0"}),
    ]


def _timed(plugin: NodePlugin, what: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    result = fn()
    took = time.monotonic() - started
    if took > plugin.timeout:
        raise ConformanceError(f"{what} took {took:.3f} s, over the plugin's {plugin.timeout} s")
    return result


def _check_adjustment(got: object, what: str) -> None:
    if got is None:
        return
    if not isinstance(got, Adjustment):
        raise ConformanceError(f"{what} returned {type(got).__name__}, not Adjustment or None")
    for key, value in got.env.items():
        if not (isinstance(key, str) and _ENV.fullmatch(key) and isinstance(value, str)):
            raise ConformanceError(f"{what}: environment {key!r}={value!r} is not NAME=string")
    for key, value in got.annotations.items():
        if not (isinstance(key, str) and _ANNOTATION.fullmatch(key) and isinstance(value, str)):
            raise ConformanceError(f"{what}: annotation {key!r} is not a valid key with a string")
    for device in got.devices:
        if not (isinstance(device, str) and device.startswith("/dev/")):
            raise ConformanceError(f"{what}: device {device!r} is not a path under /dev")


def check_node_plugin(
    cls: type[NodePlugin], *, options: Mapping[str, str] | None = None
) -> FakeContext:
    """Raise :class:`ConformanceError` if ``cls`` breaks a rule; return the context it used."""
    if not (isinstance(cls, type) and issubclass(cls, NodePlugin)):
        raise ConformanceError(f"{cls!r} is not a subclass of node.plugin.NodePlugin")
    if not _NAME.fullmatch(cls.name or ""):
        raise ConformanceError(f"name {cls.name!r}: use lower-case letters, digits and dashes")
    if not 0 < cls.timeout <= BUDGET:
        raise ConformanceError(f"timeout {cls.timeout}: must be in (0, {BUDGET}] seconds")
    if cls.failure_policy not in ("ignore", "fail"):
        raise ConformanceError(f"failure_policy {cls.failure_policy!r}: use 'ignore' or 'fail'")
    if not isinstance(cls.order, int):
        raise ConformanceError(f"order {cls.order!r}: must be an int")
    context = FakeContext(options=dict(options or {}))
    plugin = cls()
    plugin.configure(context)
    hooks = hooks_of(plugin)
    for pod in sample_pods():
        for container in sample_containers():
            what = f"{cls.name}.create_container({pod.annotations}, {container.name})"
            if "create_container" in hooks:
                try:
                    got = _timed(plugin, what, partial(plugin.create_container, pod, container))
                except Refuse as verdict:
                    if not str(verdict):
                        raise ConformanceError(f"{what}: Refuse without a message") from None
                    continue
                except Exception as exc:
                    raise ConformanceError(f"{what} raised {type(exc).__name__}: {exc}") from exc
                _check_adjustment(got, what)
            for hook in ("container_started", "container_stopped"):
                if hook in hooks:
                    call = partial(getattr(plugin, hook), pod, container)
                    _timed(plugin, f"{cls.name}.{hook}", call)
        if "pod_changed" in hooks:
            _timed(plugin, f"{cls.name}.pod_changed", partial(plugin.pod_changed, pod, context))
        if "pod_removed" in hooks:
            _timed(plugin, f"{cls.name}.pod_removed", partial(plugin.pod_removed, pod))
    if "check" in hooks:
        results = list(_timed(plugin, f"{cls.name}.check", lambda: list(plugin.check(context))))
        for result in results:
            if not (isinstance(result, CheckResult) and result.check):
                raise ConformanceError(f"{cls.name}.check returned {result!r}, not a CheckResult")
            if not isinstance(result.severity, Severity):
                raise ConformanceError(f"{cls.name}.check {result.check}: severity not a Severity")
    if "devices" in hooks:
        found = plugin.devices()
        if found is not None:
            if not isinstance(found, DeviceSet) or len(set(found.ids)) != len(found.ids):
                raise ConformanceError(f"{cls.name}.devices returned {found!r}: distinct IDs")
            _check_adjustment(plugin.allocate(found.ids[:1]), f"{cls.name}.allocate")
    return context
