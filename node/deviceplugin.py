"""A kubelet device plugin (``deviceplugin/v1beta1``) for one extended resource, over grpcio.

Registration is per kubelet, through the kubelet's **plugin watcher**, not the classic
``Registration.Register`` call:

- The classic path is the kubelet's own socket ``/var/lib/kubelet/device-plugins/kubelet.sock``,
  which kubelet v1.34 hard-codes (``pluginapi.KubeletSocket`` in ``devicemanager.NewManagerImpl``)
  whatever its ``--root-dir``; it also joins the plugin's endpoint to that directory. With
  several kubelets on one host (the harness's real nodes) that socket belongs to whichever
  kubelet started last, so a plugin registered there would advertise to the wrong node.
- The plugin watcher (``pkg/kubelet/pluginmanager``) watches ``<root-dir>/plugins_registry/``:
  for each unix socket created there it calls ``pluginregistration.Registration/GetInfo``;
  ``type: "DevicePlugin"`` goes to the device manager (``GetPluginRegistrationHandlers``),
  which checks the version (``v1beta1``) and that ``name`` is an extended resource name, then
  dials ``endpoint`` (any absolute path; the registration socket itself when empty) and runs
  ``GetDevicePluginOptions`` and ``ListAndWatch``; last, ``NotifyRegistrationStatus``.

So :class:`DevicePlugin` serves both services on one socket in the node's kubelet's
``plugins_registry``. No kubelet flag is needed. A restarted kubelet walks that directory at
start and registers the socket again; if the socket file disappears (a wiped root dir), the
plugin binds it anew, which the watcher sees as a new plugin. When the plugin stops, the
socket is removed: the kubelet's ``ListAndWatch`` ends, it marks every device unhealthy
(allocatable 0, capacity unchanged) and, 5 minutes later (``endpointStopGracePeriod``), drops
the resource (capacity 0).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from node.plugin import Adjustment, DeviceSet
from node.proto import Field, Message

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
PLUGIN_TYPE = "DevicePlugin"  # pluginregistration's name for the device manager's handler
REGISTRY_DIR = "plugins_registry"  # under the kubelet's --root-dir
DEVICE_SERVICE = "v1beta1.DevicePlugin"
REGISTRATION_SERVICE = "pluginregistration.Registration"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL

# --- deviceplugin/v1beta1 (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto) ----------

EMPTY = Message("Empty")
OPTIONS = Message(
    "DevicePluginOptions",
    Field(1, "pre_start_required", "bool"),
    Field(2, "get_preferred_allocation_available", "bool"),
)
NUMA_NODE = Message("NUMANode", Field(1, "ID", "int"))
TOPOLOGY = Message("TopologyInfo", Field(1, "nodes", NUMA_NODE, repeated=True))
DEVICE = Message("Device", Field(1, "ID"), Field(2, "health"), Field(3, "topology", TOPOLOGY))
LIST_AND_WATCH = Message("ListAndWatchResponse", Field(1, "devices", DEVICE, repeated=True))
PRE_START_REQUEST = Message("PreStartContainerRequest", Field(1, "devices_ids", repeated=True))
PRE_START_RESPONSE = Message("PreStartContainerResponse")
PREFERRED_CONTAINER_REQUEST = Message(
    "ContainerPreferredAllocationRequest",
    Field(1, "available_deviceIDs", repeated=True),
    Field(2, "must_include_deviceIDs", repeated=True),
    Field(3, "allocation_size", "int"),
)
PREFERRED_REQUEST = Message(
    "PreferredAllocationRequest",
    Field(1, "container_requests", PREFERRED_CONTAINER_REQUEST, repeated=True),
)
PREFERRED_CONTAINER_RESPONSE = Message(
    "ContainerPreferredAllocationResponse", Field(1, "deviceIDs", repeated=True)
)
PREFERRED_RESPONSE = Message(
    "PreferredAllocationResponse",
    Field(1, "container_responses", PREFERRED_CONTAINER_RESPONSE, repeated=True),
)
ALLOCATE_CONTAINER_REQUEST = Message(
    "ContainerAllocateRequest", Field(1, "devices_ids", repeated=True)
)
ALLOCATE_REQUEST = Message(
    "AllocateRequest", Field(1, "container_requests", ALLOCATE_CONTAINER_REQUEST, repeated=True)
)
MOUNT = Message(
    "Mount", Field(1, "container_path"), Field(2, "host_path"), Field(3, "read_only", "bool")
)
DEVICE_SPEC = Message(
    "DeviceSpec", Field(1, "container_path"), Field(2, "host_path"), Field(3, "permissions")
)
CDI_DEVICE = Message("CDIDevice", Field(1, "name"))
ALLOCATE_CONTAINER_RESPONSE = Message(
    "ContainerAllocateResponse",
    Field(1, "envs", map=("string", "string")),
    Field(2, "mounts", MOUNT, repeated=True),
    Field(3, "devices", DEVICE_SPEC, repeated=True),
    Field(4, "annotations", map=("string", "string")),
    Field(5, "cdi_devices", CDI_DEVICE, repeated=True),
)
ALLOCATE_RESPONSE = Message(
    "AllocateResponse",
    Field(1, "container_responses", ALLOCATE_CONTAINER_RESPONSE, repeated=True),
)

# --- pluginregistration/v1 (k8s.io/kubelet/pkg/apis/pluginregistration/v1/api.proto) --------

INFO_REQUEST = Message("InfoRequest")
PLUGIN_INFO = Message(
    "PluginInfo",
    Field(1, "type"),
    Field(2, "name"),
    Field(3, "endpoint"),
    Field(4, "supported_versions", repeated=True),
)
REGISTRATION_STATUS = Message(
    "RegistrationStatus", Field(1, "plugin_registered", "bool"), Field(2, "error")
)
REGISTRATION_STATUS_RESPONSE = Message("RegistrationStatusResponse")

# --- the caller's callbacks ------------------------------------------------------------------

DevicesFn = Callable[[], Iterable[tuple[str, bool]]]  # (device ID, healthy)
AllocateFn = Callable[[list[list[str]]], Sequence[Adjustment]]  # per container, in order
PreferredFn = Callable[[list[str], list[str], int], Sequence[str]]  # available, must, size
PreStartFn = Callable[[list[str]], None]

# an extended resource name as the kubelet's ValidatePlugin accepts it: a domain prefix that
# is not kubernetes.io, and a name part (IsExtendedResourceName)
_RESOURCE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class DevicePluginError(RuntimeError):
    """The plugin could not start or register; the message names the cause and the fix."""


def device_list(devices: DeviceSet) -> list[tuple[str, bool]]:
    """A plugin API :class:`DeviceSet` as the ``devices`` callback returns it."""
    return [(i, devices.healthy is None or i in devices.healthy) for i in devices.ids]


@dataclass(frozen=True)
class Registration:
    """What the kubelet last said through ``NotifyRegistrationStatus``."""

    registered: bool
    error: str = ""


def socket_path(kubelet_root: Path, resource: str) -> Path:
    """Where the plugin's socket goes: ``<root-dir>/plugins_registry/<vendor>_<name>.sock``
    (the watcher skips names starting with a dot, and a ``/`` would make a directory)."""
    return kubelet_root / REGISTRY_DIR / (resource.replace("/", "_") + ".sock")


def _check_resource(resource: str) -> None:
    prefix = resource.split("/", 1)[0]
    if (
        not _RESOURCE.fullmatch(resource)
        or "." not in prefix
        or prefix == "kubernetes.io"
        or prefix.endswith(".kubernetes.io")
        or len(resource) > 253
    ):
        raise DevicePluginError(
            f"resource {resource!r}: the kubelet takes an extended resource name, "
            "<domain>/<name> outside kubernetes.io (like nvidia.com/gpu)"
        )


class DevicePlugin:
    """Advertise ``resource`` to the kubelet whose ``--root-dir`` is ``kubelet_root``.

    ``devices()`` is read every ``poll_interval`` seconds (and on :meth:`refresh`); when the
    list or a device's health changes, every open ``ListAndWatch`` stream is sent the new list.
    ``allocate(container_requests)`` gets the device IDs of each container of a pod and returns
    one :class:`~node.plugin.Adjustment` per container (env, annotations, device nodes, CDI
    devices). ``preferred`` and ``pre_start`` are offered to the kubelet only when given.
    """

    def __init__(
        self,
        resource: str,
        kubelet_root: Path,
        *,
        devices: DevicesFn,
        allocate: AllocateFn,
        preferred: PreferredFn | None = None,
        pre_start: PreStartFn | None = None,
        poll_interval: float = 1.0,
        socket: Path | None = None,
    ) -> None:
        _check_resource(resource)
        self.resource = resource
        self.socket = socket or socket_path(kubelet_root, resource)
        self._devices_fn = devices
        self._allocate_fn = allocate
        self._preferred_fn = preferred
        self._pre_start_fn = pre_start
        self._poll_interval = poll_interval
        self._cond = threading.Condition()
        self._devices: tuple[tuple[str, bool], ...] = ()
        self._version = 0
        self._streams = 0
        self._registration: Registration | None = None
        self.registrations = 0  # successful registrations: one more after each kubelet restart
        self._registered = threading.Event()
        self._stopping = threading.Event()
        self._server: Any = None
        self._poller: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> DevicePlugin:
        """Read the devices, bind the socket (the kubelet's watcher then registers it) and
        start polling. Raises :class:`DevicePluginError` when the socket cannot be bound."""
        self._stopping.clear()
        self._poll()
        self._bind()
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"deviceplugin {self.resource}", daemon=True
        )
        self._poller.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        """End every stream, close the server and remove the socket (the kubelet deregisters
        the plugin and marks its devices unhealthy)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._poller is not None:
            self._poller.join(timeout=self._poll_interval + 2)
            self._poller = None
        self._unbind(grace)

    def __enter__(self) -> DevicePlugin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> None:
        directory = self.socket.parent
        if not directory.parent.is_dir():
            raise DevicePluginError(
                f"{directory.parent} does not exist: is it the kubelet's --root-dir? "
                f"(the kubelet watches {REGISTRY_DIR}/ in it for plugin sockets)"
            )
        # made here if the kubelet has not yet: at its start it registers what it finds there
        directory.mkdir(mode=0o750, exist_ok=True)
        if len(str(self.socket).encode()) > MAX_SOCKET_PATH:
            raise DevicePluginError(
                f"socket path {self.socket} is longer than a unix socket's {MAX_SOCKET_PATH} "
                "bytes: use a shorter kubelet --root-dir (or pass socket=)"
            )
        with suppress(FileNotFoundError):
            self.socket.unlink()  # a previous run's: binding fails on an existing path
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="dp"))
        server.add_generic_rpc_handlers((self._device_handler(), self._registration_handler()))
        if server.add_insecure_port(f"unix://{self.socket}") == 0:
            raise DevicePluginError(f"could not bind {self.socket}: is the path writable?")
        self._registered.clear()
        self._registration = None
        server.start()
        self._server = server
        log.info("device plugin %s on %s", self.resource, self.socket)

    def _unbind(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()
        with suppress(FileNotFoundError):
            self.socket.unlink()

    # --- state ------------------------------------------------------------------------------

    @property
    def registration(self) -> Registration | None:
        """The kubelet's last word on this plugin (None before its first)."""
        return self._registration

    @property
    def streams(self) -> int:
        """Open ``ListAndWatch`` streams (1 while a kubelet watches the plugin)."""
        return self._streams

    def devices(self) -> list[tuple[str, bool]]:
        """The devices as last read (what the streams were sent)."""
        with self._cond:
            return list(self._devices)

    def wait_registered(self, timeout: float) -> Registration:
        """Block until the kubelet reports a registration; raise if it refused or never came."""
        if not self._registered.wait(timeout):
            raise DevicePluginError(
                f"no kubelet registered {self.resource} within {timeout:.0f} s: is a kubelet "
                f"running with --root-dir {self.socket.parent.parent}?"
            )
        registration = self._registration
        assert registration is not None
        if not registration.registered:
            raise DevicePluginError(f"the kubelet refused {self.resource}: {registration.error}")
        return registration

    def refresh(self) -> None:
        """Read the devices now (a health change the caller knows of), not at the next poll."""
        self._poll()

    def _poll(self) -> None:
        try:
            listed = [(str(i), bool(ok)) for i, ok in self._devices_fn()]
        except Exception:
            log.exception(
                "device plugin %s: devices() failed; keeping the last list", self.resource
            )
            return
        first: dict[str, bool] = {}
        for device, healthy in listed:
            first.setdefault(device, healthy)
        unique = tuple(first.items())
        if len(unique) != len(listed):
            log.warning("device plugin %s: devices() repeats IDs; sent once", self.resource)
        with self._cond:
            if unique != self._devices:
                self._devices = unique
                self._version += 1
                self._cond.notify_all()

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self._poll_interval):
            self._poll()
            if not self.socket.exists() and not self._stopping.is_set():
                log.warning(
                    "device plugin %s: %s vanished; binding again", self.resource, self.socket
                )
                try:
                    self._unbind(0)
                    self._bind()
                except (DevicePluginError, RuntimeError) as exc:
                    log.error("device plugin %s: %s", self.resource, exc)

    # --- the services -----------------------------------------------------------------------

    def _device_handler(self) -> Any:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            DEVICE_SERVICE,
            {
                "GetDevicePluginOptions": unary(self._options, EMPTY.decode, OPTIONS.encode),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                    self._list_and_watch, EMPTY.decode, LIST_AND_WATCH.encode
                ),
                "GetPreferredAllocation": unary(
                    self._preferred, PREFERRED_REQUEST.decode, PREFERRED_RESPONSE.encode
                ),
                "Allocate": unary(
                    self._allocate, ALLOCATE_REQUEST.decode, ALLOCATE_RESPONSE.encode
                ),
                "PreStartContainer": unary(
                    self._pre_start, PRE_START_REQUEST.decode, PRE_START_RESPONSE.encode
                ),
            },
        )

    def _registration_handler(self) -> Any:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            REGISTRATION_SERVICE,
            {
                "GetInfo": unary(self._info, INFO_REQUEST.decode, PLUGIN_INFO.encode),
                "NotifyRegistrationStatus": unary(
                    self._notify, REGISTRATION_STATUS.decode, REGISTRATION_STATUS_RESPONSE.encode
                ),
            },
        )

    def _info(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "type": PLUGIN_TYPE,
            "name": self.resource,
            "endpoint": str(self.socket),  # this same socket serves the DevicePlugin service
            "supported_versions": [API_VERSION],
        }

    def _notify(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        self._registration = Registration(
            bool(request.get("plugin_registered")), request.get("error", "")
        )
        if self._registration.registered:
            self.registrations += 1
            log.info("device plugin %s: registered with the kubelet", self.resource)
        else:
            log.error(
                "device plugin %s: the kubelet refused it: %s",
                self.resource,
                self._registration.error,
            )
        self._registered.set()
        return {}

    def _options(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "pre_start_required": self._pre_start_fn is not None,
            "get_preferred_allocation_available": self._preferred_fn is not None,
        }

    def _list_and_watch(self, request: dict[str, Any], context: Any) -> Iterator[dict[str, Any]]:
        """The device list now, then again at every change, until the kubelet hangs up or the
        plugin stops."""
        sent = -1
        with self._cond:
            self._streams += 1
        try:
            while context.is_active() and not self._stopping.is_set():
                with self._cond:
                    if self._version == sent:
                        self._cond.wait(timeout=0.5)  # wakes to notice a cancelled stream
                        continue
                    sent, devices = self._version, self._devices
                yield {
                    "devices": [
                        {"ID": i, "health": HEALTHY if ok else UNHEALTHY} for i, ok in devices
                    ]
                }
        finally:
            with self._cond:
                self._streams -= 1

    def _known(self, ids: Iterable[str], context: Any) -> None:
        known = {i for i, _ in self.devices()}
        unknown = sorted(set(ids) - known)
        if unknown:
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{self.resource}: no device {', '.join(unknown)} (devices: {sorted(known)})",
            )

    def _allocate(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        containers = [list(c.get("devices_ids", [])) for c in request.get("container_requests", [])]
        for ids in containers:
            self._known(ids, context)
        try:
            adjustments = list(self._allocate_fn(containers))
        except Exception as exc:
            log.exception("device plugin %s: allocate failed", self.resource)
            _abort(context, grpc.StatusCode.INTERNAL, f"{self.resource}: allocate failed: {exc}")
        if len(adjustments) != len(containers):
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"{self.resource}: allocate returned {len(adjustments)} answers for "
                f"{len(containers)} containers (one Adjustment per container, in order)",
            )
        return {"container_responses": [container_response(a) for a in adjustments]}

    def _preferred(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        if self._preferred_fn is None:
            _abort(context, grpc.StatusCode.UNIMPLEMENTED, f"{self.resource}: no preference")
        answers = []
        for c in request.get("container_requests", []):
            available = list(c.get("available_deviceIDs", []))
            must = list(c.get("must_include_deviceIDs", []))
            size = int(c.get("allocation_size", 0))
            try:
                chosen = list(self._preferred_fn(available, must, size))
            except Exception:
                log.exception("device plugin %s: preferred failed; no preference", self.resource)
                chosen = []
            answers.append({"deviceIDs": _preference(chosen, available, must, size)})
        return {"container_responses": answers}

    def _pre_start(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        ids = list(request.get("devices_ids", []))
        if self._pre_start_fn is not None:
            try:
                self._pre_start_fn(ids)
            except Exception as exc:
                _abort(context, grpc.StatusCode.INTERNAL, f"{self.resource}: pre-start: {exc}")
        return {}


def _abort(context: Any, code: Any, message: str) -> NoReturn:
    """End the call with ``code``: grpc's ``abort`` raises, this says so to the type checker."""
    context.abort(code, message)
    raise AssertionError("grpc's abort returned")


def _preference(chosen: list[str], available: list[str], must: list[str], size: int) -> list[str]:
    """The callback's choice made valid: the must-include devices first, then its picks from
    the available ones, ``size`` in all at most (the kubelet fills any shortfall itself)."""
    out = list(dict.fromkeys(must))
    offered = set(available)
    for device in chosen:
        if len(out) >= size:
            break
        if device in offered and device not in out:
            out.append(device)
    return out[: max(size, len(must))]


def container_response(adjustment: Adjustment) -> dict[str, Any]:
    """One container's ``ContainerAllocateResponse``: a device node is mapped to the same
    path inside the container, read-write."""
    return {
        "envs": dict(adjustment.env),
        "annotations": dict(adjustment.annotations),
        "devices": [
            {"container_path": d, "host_path": d, "permissions": "rw"} for d in adjustment.devices
        ],
        "cdi_devices": [{"name": name} for name in adjustment.cdi_devices],
    }
