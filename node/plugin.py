"""The node plugin API: what a plugin of ``fulcrum node`` sees and may do.

A plugin is a class deriving from :class:`NodePlugin`; it declares the hooks it needs by
overriding them, and the agent subscribes to only what some plugin overrides (a node whose
plugins take no container hook costs its runtime no NRI round trip):

- ``create_container(pod, container)``: before the runtime creates a container (NRI
  ``CreateContainer``); returns an :class:`Adjustment` (environment, annotations, device nodes,
  CDI devices) or None, or raises :class:`Refuse` to fail the container with a reason;
- ``container_started`` / ``container_stopped``: the runtime started / stopped a container;
- ``pod_changed(pod, agent)`` / ``pod_removed(pod)``: a pod bound to this node changed / was
  deleted in the API (from the agent's informer), for work that starts before any container
  does (pre-pull) or claims to track;
- ``devices()`` / ``allocate(ids)`` / ``preferred(...)``: a device-plugin resource advertised to
  the kubelet;
- ``node_labels()``: labels the agent sets on its Node;
- ``check(agent)``: periodic node checks, each a :class:`CheckResult` with a severity.

Plugins see :class:`PodView` (the pod's ``fulcrum.io/`` facts, parsed by ``kube``) and
:class:`ContainerView`, never the runtime's messages. Each hook runs with the plugin's
``timeout``; a hook that raises or overruns is reported (log, metric, Event) and, with
``failure_policy = "ignore"`` (the default), the container goes on unadjusted; with ``"fail"``
the container is refused. No hook blocks a container for longer than its timeout.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from kube import api
from kube.resources import GPU_MILLI_ANNOTATION, parse_devices


class Severity(enum.IntEnum):
    """A check's outcome, from the seed's inspection briefs: Error > Alarm > Warn > Info."""

    INFO = 0
    WARN = 1
    ALARM = 2
    ERROR = 3

    @property
    def label(self) -> str:
        return self.name.capitalize()


@dataclass(frozen=True)
class CheckResult:
    check: str  # "disk.kubelet", "kubelet.health"...
    severity: Severity
    message: str
    value: float | str | None = None
    threshold: float | str | None = None


class Refuse(Exception):
    """Raised by ``create_container`` to refuse a container; the message names the conflict."""


@dataclass(frozen=True)
class PodView:
    """A pod as a node plugin sees it: identity, labels, annotations and Fulcrum's decisions."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def gpu_devices(self) -> tuple[int, ...] | None:
        """``fulcrum.io/gpu-devices``: the devices Fulcrum chose at bind; None when absent.
        Raises ``kube.resources.QuantityError`` (naming the annotation) when malformed."""
        raw = self.annotations.get(api.GPU_DEVICES)
        return None if raw is None else parse_devices(raw)

    @property
    def gpu_milli(self) -> int | None:
        """``fulcrum.io/gpu-milli``: a share of one device (1..1000), None for whole GPUs."""
        raw = self.annotations.get(GPU_MILLI_ANNOTATION)
        if raw is None or not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 1000:
            return None
        return int(raw)

    @property
    def assigned_ip(self) -> str | None:
        return api.assigned_ip(self.annotations)

    @property
    def rebuild(self) -> bool:
        """Opted in to local rebuild."""
        return self.annotations.get(api.REBUILD) == "local"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ContainerView:
    name: str
    id: str = ""
    image: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Adjustment:
    """What ``create_container`` changes: merged over plugins in order (a later plugin's value
    for the same key wins, and the agent logs the override)."""

    env: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)  # host device node paths
    cdi_devices: list[str] = field(default_factory=list)  # "vendor.com/class=name"

    def __bool__(self) -> bool:
        return bool(self.env or self.annotations or self.devices or self.cdi_devices)


@dataclass(frozen=True)
class DeviceSet:
    """A device-plugin resource: ``nvidia.com/gpu`` with device IDs "0".."N-1"."""

    resource: str
    ids: tuple[str, ...]
    healthy: frozenset[str] | None = None  # None: all healthy


class AgentContext(Protocol):
    """What the agent offers its plugins (``node.agent`` implements it)."""

    node: str  # this node's name
    kubelet_root: Path  # the kubelet's --root-dir
    kubelet_healthz: str  # "http://127.0.0.1:10248/healthz"
    runtime_socket: Path  # the CRI socket (containerd's)
    options: Mapping[str, str]  # --plugin-option PLUGIN.KEY=VALUE, as {"PLUGIN.KEY": VALUE}

    def pull_image(self, image: str, timeout: float) -> float:
        """Pull through the CRI image service; the seconds it took. Raises on failure."""
        ...

    def image_present(self, image: str) -> bool: ...

    def annotate_pod(self, pod: PodView, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch the pod's annotations (None removes one)."""
        ...

    def event(self, pod: PodView | None, reason: str, message: str, *, warning: bool) -> None:
        """An Event on the pod, or on the node when ``pod`` is None."""
        ...

    def runtime_version(self) -> Mapping[str, str]:
        """The runtime's CRI ``Version`` (runtime_name, runtime_version...). Raises when the
        runtime does not answer."""
        ...

    def kubelet_version(self) -> str | None:
        """The kubelet's version, as its Node reports it."""
        ...

    def api_date(self) -> str:
        """The API server's HTTP ``Date`` header now: a reference clock."""
        ...


FailurePolicy = Literal["ignore", "fail"]
HOOKS = (
    "create_container",
    "container_started",
    "container_stopped",
    "pod_removed",
    "pod_changed",
    "devices",
    "check",
    "node_labels",
)


class NodePlugin:
    """Base class of node plugins. Override the hooks you need; the rest cost nothing."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    order: ClassVar[int] = 100  # lower runs first
    timeout: ClassVar[float] = 0.5  # seconds per hook call (NRI gives the agent 2 s in all)
    failure_policy: ClassVar[FailurePolicy] = "ignore"

    def configure(self, agent: AgentContext) -> None:
        """Called once before any hook, with the agent's context (node name, options)."""

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        return None

    def container_started(self, pod: PodView, container: ContainerView) -> None:
        return None

    def container_stopped(self, pod: PodView, container: ContainerView) -> None:
        return None

    def pod_removed(self, pod: PodView) -> None:
        return None

    def pod_changed(self, pod: PodView, agent: AgentContext) -> None:
        return None

    def devices(self) -> DeviceSet | None:
        return None

    def allocate(self, ids: Iterable[str]) -> Adjustment:
        """The kubelet allocated ``ids`` (of :meth:`devices`) to one container."""
        return Adjustment()

    def preferred(self, available: list[str], must_include: list[str], size: int) -> list[str]:
        """The ``size`` devices to prefer among ``available`` (the kubelet asks before it
        allocates); empty leaves the choice to the kubelet."""
        return []

    def node_labels(self) -> Mapping[str, str]:
        """Labels the agent puts on its Node (a GPU model...)."""
        return {}

    def check(self, agent: AgentContext) -> Iterable[CheckResult]:
        return ()


def hooks_of(plugin: NodePlugin | type[NodePlugin]) -> list[str]:
    """The hooks ``plugin`` overrides (``allocate`` and ``preferred`` go with ``devices``)."""
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return [hook for hook in HOOKS if getattr(cls, hook) is not getattr(NodePlugin, hook)]
