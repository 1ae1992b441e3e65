"""The node agent as an external NRI plugin of containerd: registration, events, adjustments.

NRI (github.com/containerd/nri) lets a process on the node connect to the runtime's socket
(``[plugins.'io.containerd.nri.v1.nri'] socket_path``), register as ``<index>-<name>``, and be
called on pod and container lifecycle events; for ``CreateContainer`` it may adjust the
container (environment, annotations, device nodes, CDI devices) or fail its creation. The
messages below follow ``pkg/api/api.proto`` of NRI v0.12.3, the version containerd 2.4.2 vendors
(field numbers are the wire contract; only what we read or write is declared, unknown fields
are skipped). The transport is :mod:`node.ttrpc`.

The runtime's side (``pkg/adaptation``), which decides how the agent must behave:

- Sequence: we connect, call ``Runtime.RegisterPlugin`` (name, two-digit index); the runtime
  calls ``Plugin.Configure`` (we answer the event mask) then ``Plugin.Synchronize`` with every
  existing pod and container (possibly split: ``more`` is set on all but the last part and
  must be echoed, with no updates). Only then is the plugin added, in index order.
- Timeouts (containerd's ``plugin_registration_timeout``, default 5 s, and
  ``plugin_request_timeout``, default 2 s; both are sent in ConfigureRequest and exposed here
  as :attr:`NRIConnection.request_timeout`): a plugin that has not registered within the
  registration timeout of connecting is closed. A request that overruns the request timeout
  counts as fatal: the runtime closes the plugin's connection, drops it, and carries on as if
  it had answered nothing (the container is created unadjusted). So must we answer in time:
  :class:`NRIConnection` answers a CreateContainer whose handler has not finished within
  ``request_timeout - GUARD`` with no adjustment (logged), and stays connected.
- Errors: any other error status from a handler (our refusals) fails the runtime's operation:
  for CreateContainer, the kubelet shows the container waiting with reason
  ``CreateContainerError`` and a ``Failed`` Event, both with the message (seen with containerd
  2.4.2): ``failed to create containerd container: failed to get NRI adjustment for container:
  rpc error: code = FailedPrecondition desc = 50-fulcrum: <the exception's text>``; the kubelet
  retries with backoff. The plugin stays connected.
- Serialisation: the runtime holds one lock while it calls the plugins for an event, so each
  round trip through the agent adds to every container creation on the node, one at a time.
- Events: a mask of ``1 << (event - 1)`` bits; a zero mask means *all* events, so an empty
  subscription is refused here. Since v0.12, every event has its own RPC; older runtimes send
  non-adjusting events (start, stop, remove...) as ``StateChange``; both are handled.
- Restarts: when containerd stops, the socket closes (``Shutdown`` is not sent by v0.12's
  runtime); containerd removes and re-creates the socket when it starts. :meth:`run`
  reconnects with exponential backoff (``BACKOFF``), registers again and is re-synchronised.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from node import ttrpc
from node.plugin import Adjustment, ContainerView, PodView
from node.proto import Field, Message

log = logging.getLogger(__name__)
T = TypeVar("T")

NRI_VERSION = "v0.12.3"  # containerd 2.4.2 vendors it (go.mod); its api.proto = v0.12.2's
PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
GUARD = 0.3  # seconds of the runtime's request timeout kept for the answer's way back
BACKOFF = (0.2, 10.0)  # reconnect delays: first, most (doubling)

# api.proto's Event enum, by RPC name (the mask bit is 1 << (value - 1)).
EVENTS = {
    "RunPodSandbox": 1,
    "StopPodSandbox": 2,
    "RemovePodSandbox": 3,
    "CreateContainer": 4,
    "PostCreateContainer": 5,
    "StartContainer": 6,
    "PostStartContainer": 7,
    "UpdateContainer": 8,
    "PostUpdateContainer": 9,
    "StopContainer": 10,
    "RemoveContainer": 11,
    "UpdatePodSandbox": 12,
    "PostUpdatePodSandbox": 13,
}
EVENT_NAMES = {value: name for name, value in EVENTS.items()}

EMPTY = Message("Empty")
KEY_VALUE = Message("KeyValue", Field(1, "key"), Field(2, "value"))
REGISTER = Message(
    "RegisterPluginRequest",
    Field(1, "plugin_name"),
    Field(2, "plugin_idx"),
    Field(3, "nri_version"),
)
CONFIGURE = Message(
    "ConfigureRequest",
    Field(1, "config"),
    Field(2, "runtime_name"),
    Field(3, "runtime_version"),
    Field(4, "registration_timeout", "int"),  # milliseconds
    Field(5, "request_timeout", "int"),  # milliseconds
    Field(6, "nri_version"),
)
CONFIGURE_RESPONSE = Message("ConfigureResponse", Field(2, "events", "int"))
POD = Message(
    "PodSandbox",
    Field(1, "id"),
    Field(2, "name"),
    Field(3, "uid"),
    Field(4, "namespace"),
    Field(5, "labels", map=("string", "string")),
    Field(6, "annotations", map=("string", "string")),
    Field(7, "runtime_handler"),
    Field(9, "pid", "uint"),
    Field(10, "ips", repeated=True),
)
IMAGE = Message("Image", Field(1, "name"), Field(2, "digest"), Field(3, "config_digest"))
CDI_DEVICE = Message("CDIDevice", Field(1, "name"))
CONTAINER = Message(
    "Container",
    Field(1, "id"),
    Field(2, "pod_sandbox_id"),
    Field(3, "name"),
    Field(4, "state", "int"),
    Field(5, "labels", map=("string", "string")),
    Field(6, "annotations", map=("string", "string")),
    Field(7, "args", repeated=True),
    Field(8, "env", repeated=True),
    Field(12, "pid", "uint"),
    Field(14, "created_at", "int"),
    Field(15, "started_at", "int"),
    Field(16, "finished_at", "int"),
    Field(17, "exit_code", "int"),
    Field(18, "status_reason"),
    Field(19, "status_message"),
    Field(20, "cdi_devices", CDI_DEVICE, repeated=True),
    Field(22, "image", IMAGE),
)
SYNCHRONIZE = Message(
    "SynchronizeRequest",
    Field(1, "pods", POD, repeated=True),
    Field(2, "containers", CONTAINER, repeated=True),
    Field(3, "more", "bool"),
)
SYNCHRONIZE_RESPONSE = Message("SynchronizeResponse", Field(2, "more", "bool"))
POD_EVENT = Message("PodSandboxRequest", Field(1, "pod", POD))  # Run/Stop/Remove/UpdatePodSandbox
CONTAINER_EVENT = Message(
    "ContainerRequest", Field(1, "pod", POD), Field(2, "container", CONTAINER)
)
STATE_CHANGE = Message(
    "StateChangeEvent",
    Field(1, "event", "int"),
    Field(2, "pod", POD),
    Field(3, "container", CONTAINER),
)
OPTIONAL_UINT = Message("OptionalUInt32", Field(1, "value", "uint"))
LINUX_DEVICE = Message(
    "LinuxDevice",
    Field(1, "path"),
    Field(2, "type"),
    Field(3, "major", "int"),
    Field(4, "minor", "int"),
    Field(5, "file_mode", OPTIONAL_UINT),  # OptionalFileMode: the same shape
    Field(6, "uid", OPTIONAL_UINT),
    Field(7, "gid", OPTIONAL_UINT),
)
LINUX_ADJUSTMENT = Message(
    "LinuxContainerAdjustment", Field(1, "devices", LINUX_DEVICE, repeated=True)
)
ADJUSTMENT = Message(
    "ContainerAdjustment",
    Field(2, "annotations", map=("string", "string")),
    Field(4, "env", KEY_VALUE, repeated=True),
    Field(6, "linux", LINUX_ADJUSTMENT),
    Field(8, "cdi_devices", CDI_DEVICE, repeated=True),
)
CREATE_RESPONSE = Message("CreateContainerResponse", Field(1, "adjust", ADJUSTMENT))


class NRIHandler(Protocol):
    """What the agent gives :class:`NRIConnection`. Pods and containers are the decoded
    ``PodSandbox`` / ``Container`` dicts (fields as declared above); :func:`pod_view` and
    :func:`container_view` turn them into the plugin API's views. Methods may be coroutines."""

    def create_container(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> Adjustment | Awaitable[Adjustment | None] | None:
        """The adjustment for a container about to be created; raise (``node.plugin.Refuse``
        or anything) to fail its creation with the exception's message."""
        ...

    def event(
        self, event: str, pod: Mapping[str, Any], container: Mapping[str, Any] | None
    ) -> Awaitable[None] | None:
        """Any other subscribed event, by its RPC name ("PostStartContainer", "StopContainer",
        "RemovePodSandbox"...); ``container`` is None for pod events. Errors are logged."""
        ...


def event_mask(events: set[str]) -> int:
    """The ConfigureResponse mask for ``events`` (RPC names). Raises ValueError naming an
    unknown event, or for an empty set (0 would subscribe to everything)."""
    if not events:
        raise ValueError("NRI events: subscribe to at least one event (an empty mask means all)")
    unknown = sorted(events - EVENTS.keys())
    if unknown:
        raise ValueError(f"NRI events: unknown {unknown}; known: {sorted(EVENTS)}")
    mask = 0
    for name in events:
        mask |= 1 << (EVENTS[name] - 1)
    return mask


# What the kubelet and containerd add to a pod's labels and annotations in the sandbox (seen
# with kubelet 1.34 and containerd 2.4.2): dropped from the view, which then matches the pod's.
ADDED_LABELS = frozenset(
    {
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.uid",
        "io.cri-containerd.kind",
        "oci_runtime_type",
    }
)
ADDED_ANNOTATIONS = frozenset({"kubernetes.io/config.seen", "kubernetes.io/config.source"})
RUNTIME_ANNOTATION_PREFIX = "io.kubernetes.cri."  # containerd's own sandbox/container annotations


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """The plugin API's view of an NRI PodSandbox. The kubelet copies the pod's labels and
    annotations into the sandbox config; what it and containerd add there is dropped."""
    labels = {k: v for k, v in pod.get("labels", {}).items() if k not in ADDED_LABELS}
    annotations = {
        k: v
        for k, v in pod.get("annotations", {}).items()
        if not k.startswith(RUNTIME_ANNOTATION_PREFIX) and k not in ADDED_ANNOTATIONS
    }
    return PodView(
        namespace=pod.get("namespace", ""),
        name=pod.get("name", ""),
        uid=pod.get("uid", ""),
        labels=labels,
        annotations=annotations,
    )


def container_view(container: Mapping[str, Any]) -> ContainerView:
    """The plugin API's view of an NRI Container: env "K=V" strings as a dict (a later
    duplicate wins, as in the OCI spec); the image from ``image`` or containerd's annotation."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        key, _, value = entry.partition("=")
        env[key] = value
    annotations = container.get("annotations", {})
    image = container.get("image", {}).get("name") or annotations.get(
        RUNTIME_ANNOTATION_PREFIX + "image-name", ""
    )
    return ContainerView(
        name=container.get("name", ""),
        id=container.get("id", ""),
        image=image,
        env=env,
        annotations=annotations,
    )


def linux_device(path: str) -> dict[str, Any]:
    """A host device node as an NRI LinuxDevice (type, major/minor, mode, owner from stat)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(
            f"device {path}: {exc.strerror}; the adjustment names a missing node"
        ) from exc
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ValueError(f"device {path}: not a character or block device node")
    return {
        "path": path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "file_mode": {"value": stat.S_IMODE(st.st_mode)},
        "uid": {"value": st.st_uid},
        "gid": {"value": st.st_gid},
    }


def adjustment_message(adjustment: Adjustment | None) -> dict[str, Any]:
    """A CreateContainerResponse for ``adjustment`` (None or empty: no change)."""
    if not adjustment:
        return {}
    adjust: dict[str, Any] = {}
    if adjustment.env:
        adjust["env"] = [{"key": k, "value": v} for k, v in adjustment.env.items()]
    if adjustment.annotations:
        adjust["annotations"] = dict(adjustment.annotations)
    if adjustment.devices:
        adjust["linux"] = {"devices": [linux_device(p) for p in adjustment.devices]}
    if adjustment.cdi_devices:
        adjust["cdi_devices"] = [{"name": n} for n in adjustment.cdi_devices]
    return {"adjust": adjust}


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class NRIConnection:
    """The agent's NRI plugin connection: ``await run()`` until cancelled.

    ``ready`` is set once the runtime has configured and synchronised the plugin (from then on
    it is called for new containers) and cleared when the connection is lost; ``runtime``,
    ``request_timeout`` and ``registration_timeout`` are what the last ConfigureRequest said."""

    def __init__(
        self, socket: Path, name: str, index: str, handler: NRIHandler, events: set[str]
    ) -> None:
        if not name or not all(c.isascii() and (c.isalnum() or c in "-_.+") for c in name):
            raise ValueError(f"NRI plugin name {name!r}: use [a-zA-Z0-9_.+-], not empty")
        if len(index) != 2 or not (index.isascii() and index.isdigit()):
            raise ValueError(f"NRI plugin index {index!r}: two digits, e.g. '50'")
        self.socket = socket
        self.name = name
        self.index = index
        self.handler = handler
        self.events = frozenset(events)
        self.mask = event_mask(set(events))
        self.ready = asyncio.Event()
        self.runtime = ""
        self.request_timeout = 2.0  # containerd's defaults until Configure says otherwise
        self.registration_timeout = 5.0
        self.connections = 0  # successful registrations, reconnections included

    @property
    def plugin(self) -> str:
        return f"{self.index}-{self.name}"

    async def run(self) -> None:
        """Connect, register and serve; reconnect with backoff whenever the runtime goes away
        (containerd restarting) or refuses us. Returns only by cancellation."""
        delay = BACKOFF[0]
        while True:
            before = self.connections
            try:
                await self.serve_once()
                log.warning("nri: %s: the runtime closed the connection", self.plugin)
            except Exception as exc:  # refused, timed out, broken: all mean "try again later"
                log.warning("nri: %s: %s (%s)", self.plugin, exc, type(exc).__name__)
            if self.connections != before:
                delay = BACKOFF[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def serve_once(self) -> None:
        """One connection: connect, register, serve until the runtime closes it."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        mux = ttrpc.Mux(reader, writer)
        ttrpc.Server(mux, ttrpc.PLUGIN_SERVICE_CONN, self._handlers())
        client = ttrpc.Client(mux, ttrpc.RUNTIME_SERVICE_CONN)
        reading = asyncio.get_running_loop().create_task(mux.run())
        try:
            request = {"plugin_name": self.name, "plugin_idx": self.index}
            request["nri_version"] = NRI_VERSION
            await client.call(
                RUNTIME_SERVICE,
                "RegisterPlugin",
                REGISTER.encode(request),
                self.registration_timeout,
            )
            self.connections += 1
            log.info("nri: %s registered on %s", self.plugin, self.socket)
            await reading
        finally:
            self.ready.clear()
            mux.close()
            if not reading.done():
                reading.cancel()

    def _handlers(self) -> dict[tuple[str, str], ttrpc.Handler]:
        handlers: dict[tuple[str, str], ttrpc.Handler] = {
            (PLUGIN_SERVICE, "Configure"): self._configure,
            (PLUGIN_SERVICE, "Synchronize"): self._synchronize,
            (PLUGIN_SERVICE, "Shutdown"): self._shutdown,
            (PLUGIN_SERVICE, "StateChange"): self._state_change,
        }
        for event in self.events:
            if event == "CreateContainer":
                handlers[(PLUGIN_SERVICE, event)] = self._create_container
            else:
                handlers[(PLUGIN_SERVICE, event)] = self._notification(event)
        return handlers

    async def _configure(self, payload: bytes) -> bytes:
        request = CONFIGURE.decode(payload)
        self.runtime = f"{request.get('runtime_name', '?')} {request.get('runtime_version', '?')}"
        if request.get("request_timeout", 0) > 0:
            self.request_timeout = request["request_timeout"] / 1000
        if request.get("registration_timeout", 0) > 0:
            self.registration_timeout = request["registration_timeout"] / 1000
        log.info(
            "nri: %s configured by %s (NRI %s, request timeout %.1f s), events %s",
            self.plugin,
            self.runtime,
            request.get("nri_version", "?"),
            self.request_timeout,
            ",".join(sorted(self.events)),
        )
        return CONFIGURE_RESPONSE.encode({"events": self.mask})

    async def _synchronize(self, payload: bytes) -> bytes:
        """No updates; ``more`` echoed (the runtime drops a plugin that answers a split sync
        otherwise)."""
        request = SYNCHRONIZE.decode(payload)
        more = bool(request.get("more", False))
        if not more:
            self.ready.set()
        return SYNCHRONIZE_RESPONSE.encode({"more": more})

    async def _shutdown(self, payload: bytes) -> bytes:
        log.info("nri: %s: the runtime is shutting down", self.plugin)
        return b""

    async def _create_container(self, payload: bytes) -> bytes:
        request = CONTAINER_EVENT.decode(payload)
        pod, container = request.get("pod", {}), request.get("container", {})
        budget = max(self.request_timeout - GUARD, 0.1)
        try:
            result = await asyncio.wait_for(
                self._call(self.handler.create_container, pod, container), budget
            )
        except TimeoutError:
            log.warning(
                "nri: %s: CreateContainer %s/%s took over %.1f s: created unadjusted",
                self.plugin,
                pod.get("namespace", ""),
                pod.get("name", ""),
                budget,
            )
            return b""
        except Exception as exc:
            raise ttrpc.TTRPCError(ttrpc.FAILED_PRECONDITION, f"{self.plugin}: {exc}") from exc
        try:
            return CREATE_RESPONSE.encode(adjustment_message(result))
        except ValueError as exc:
            raise ttrpc.TTRPCError(ttrpc.INVALID_ARGUMENT, f"{self.plugin}: {exc}") from exc

    def _notification(self, event: str) -> ttrpc.Handler:
        message = POD_EVENT if "PodSandbox" in event else CONTAINER_EVENT

        async def handle(payload: bytes) -> bytes:
            request = message.decode(payload)
            await self._notify(event, request.get("pod", {}), request.get("container"))
            return b""  # every notification's response is empty (StopContainer: no updates)

        return handle

    async def _state_change(self, payload: bytes) -> bytes:
        """Older runtimes' form of the notifications (and v0.12's fallback)."""
        request = STATE_CHANGE.decode(payload)
        event = EVENT_NAMES.get(request.get("event", 0), "")
        if event in self.events:
            await self._notify(event, request.get("pod", {}), request.get("container"))
        return b""

    async def _notify(
        self, event: str, pod: Mapping[str, Any], container: Mapping[str, Any] | None
    ) -> None:
        try:
            await asyncio.wait_for(
                self._call(self.handler.event, event, pod, container),
                max(self.request_timeout - GUARD, 0.1),
            )
        except Exception:
            log.exception("nri: %s: %s handler failed (ignored)", self.plugin, event)

    @staticmethod
    async def _call(function: Any, *args: Any) -> Any:
        """A coroutine function awaited; a plain one in a thread, so that the guard timeout
        holds (and the loop keeps serving) even when it blocks."""
        if inspect.iscoroutinefunction(function):
            return await function(*args)
        return await _maybe_await(await asyncio.to_thread(function, *args))
