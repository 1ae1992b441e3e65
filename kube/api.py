"""Fulcrum's API: the ``fulcrum.io/*`` pod annotations, successor identity, Reservation objects.

A pod's annotations are read once into a :class:`RebuildOptions` (``read_options``), the typed
view the extender, the rebuild controller and admission all use. Everything here is a pure
function over Kubernetes objects as JSON-decoded mappings; reading and writing them is the
callers' job.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import orjson

from kube import objects
from kube.names import is_subdomain
from kube.resources import QuantityError, parse_devices

GROUP = "fulcrum.io"
VERSION = "v1alpha1"
API_VERSION = "fulcrum.io/v1alpha1"
RESERVATIONS = "reservations"  # CRD plural names
IPPOOLS = "ippools"

SCHEDULER_NAME = "fulcrum-scheduler"  # the kube-scheduler profile that calls the extender
REBUILD = "fulcrum.io/rebuild"  # opt-in; the only allowed value: "local"
FALLBACK = "fulcrum.io/rebuild-fallback"  # "wait" (default) | "reschedule"
WAIT = "fulcrum.io/rebuild-wait"  # how long "reschedule" waits first: "90s", "5m", "1m30s"
ORDER = "fulcrum.io/rebuild-order"  # "delete-first" (default) | "create-first"
ACCEPT_DATA_LOSS = "fulcrum.io/accept-data-loss"  # "true" | "false" (default)
IP_POOL = "fulcrum.io/ip-pool"  # name of an IPPool in the pod's own namespace
IP_REQUEST = "fulcrum.io/ip"  # optional: a specific address from that pool
ASSIGNED_IP = "fulcrum.io/assigned-ip"  # written at bind; a kwok Stage copies it to status.podIP
CALICO_IPS = "cni.projectcalico.org/ipAddrs"  # written at bind, Calico's format: '["10.0.0.5"]'
RESERVATION = "fulcrum.io/reservation"  # written at bind on a successor: the Reservation it claimed
DECISION = "fulcrum.io/decision"  # written at bind: why Fulcrum chose the node (extender.record)
STATUS = "fulcrum.io/rebuild-status"  # written by the controller: what it did and why
FINALIZER = "fulcrum.io/rebuild"
GPU_DEVICES = "fulcrum.io/gpu-devices"  # written at bind: the devices Fulcrum chose, "0,1"
# Pre-pull for local rebuild (``rebuild.prepull``, ``node.prepull``): the controller asks a
# predecessor's node to pull the new template's images (PREPULL, "<image>[,<image>...]"); the
# node's agent answers with PREPULLED (the same value) or PREPULL_ERROR (a message).
PREPULL = "fulcrum.io/prepull"
PREPULLED = "fulcrum.io/prepulled"
PREPULL_ERROR = "fulcrum.io/prepull-error"
# on a Deployment: the admission webhook paused it for a pre-pull at this time (RFC 3339); the
# controller unpauses it, and only a Deployment that carries this (a user's pause is theirs)
PREPULL_HOLD = "fulcrum.io/prepull-hold"
# on a Node: its ``fulcrum node`` runs the prepull plugin (the plugin's node label); only such
# nodes are asked, so a cluster without agents (kwok) never waits for an answer
PREPULL_NODE_LABEL = "fulcrum.io/node-prepull"
DEFAULT_PREPULL_WAIT_SECONDS = 60.0
MAX_PREPULL_IMAGES = 16
MAX_IMAGE_CHARS = 512
# Written by Fulcrum alone (the extender at bind, the rebuild controller): admission refuses
# them from anyone else, and every reader checks them (``written_problems``) all the same.
WRITTEN_BY_FULCRUM = (GPU_DEVICES, ASSIGNED_IP, RESERVATION, DECISION, STATUS)
MAX_WRITTEN_CHARS = 4096  # a decision record is about 1 KiB, a status reason at most 1 KiB

DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 24 * 3600.0
# An expired Reservation keeps its IP this long for its successor; the controller deletes it
# then, and ``fulcrum inspect`` calls one older than that stale.
EXPIRED_GRACE = timedelta(minutes=5)
PHASES = ("Held", "Expired", "Claimed")
FALLBACKS = ("wait", "reschedule")
ORDERS = ("delete-first", "create-first")

Fallback = Literal["wait", "reschedule"]
Order = Literal["delete-first", "create-first"]

_GPU_ANNOTATION_PREFIX = "fulcrum.io/gpu"
_POD_TEMPLATE_HASH = "pod-template-hash"
_POD_INDEX = "apps.kubernetes.io/pod-index"
_DURATION = re.compile(r"(?:[0-9]+(?:ms|h|m|s))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# an image reference as the distribution spec has it: an optional registry host (with a dot, a
# colon or "localhost"), lower-case path components, an optional tag and an optional digest
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PORT = r":[0-9]{1,5}"
_IMAGE = re.compile(
    rf"(?:(?:(?:localhost|{_HOST_PART}(?:\.{_HOST_PART})+)(?:{_PORT})?|{_HOST_PART}{_PORT})/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)


# --- annotations --------------------------------------------------------------------------------


QUOTED_CHARS = 64


def quoted(value: str, limit: int = QUOTED_CHARS) -> str:
    """``value`` for a message: at most ``limit`` characters of it, so that a status annotation
    or Event quoting a huge bad value still fits what the apiserver accepts."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"


class OptionError(ValueError):
    """A rebuild annotation with a value Fulcrum does not accept.

    ``allowed`` lists the accepted values when there is a fixed set (else it is
    empty and the message says what a valid value looks like).
    """

    def __init__(
        self, annotation: str, value: str, allowed: tuple[str, ...] = (), hint: str | None = None
    ) -> None:
        self.annotation = annotation
        self.value = value
        self.allowed = allowed
        advice = hint if hint is not None else "use one of: " + ", ".join(allowed)
        super().__init__(f'annotation {annotation}="{quoted(value)}" is not allowed; {advice}')


@dataclass(frozen=True)
class RebuildOptions:
    """A pod's ``fulcrum.io/*`` rebuild and IP annotations, defaults filled in.

    ``requested``: the opt-in annotation is present (``enabled``: and valid). ``errors``: every
    bad value, each left at its default here.
    """

    requested: bool = False
    enabled: bool = False
    fallback: Fallback = "wait"
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    order: Order = "delete-first"
    accept_data_loss: bool = False
    pool: str | None = None
    ip: str | None = None
    errors: tuple[OptionError, ...] = ()


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration made of ``<int><unit>`` parts (h, m, s, ms): "1m30s" -> 90."""
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a duration; write e.g. 90s, 5m, 1h or 1m30s (units h, m, s, ms)"
        )
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _wait_seconds(a: Mapping[str, str], errors: list[OptionError]) -> float:
    if WAIT not in a:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = parse_duration(a[WAIT])
    except ValueError:
        seconds = 0.0
    if 0 < seconds <= MAX_WAIT_SECONDS:
        return seconds
    hint = "use a duration like 90s, 5m or 1m30s, more than 0 and at most 24h"
    errors.append(OptionError(WAIT, a[WAIT], hint=hint))
    return DEFAULT_WAIT_SECONDS


def _pool(a: Mapping[str, str], errors: list[OptionError]) -> str | None:
    pool = a.get(IP_POOL)
    if pool is None or is_subdomain(pool):
        return pool
    if "/" in pool:
        hint = (
            "pools must be in the pod's own namespace: create the IPPool there "
            'and give its name alone, e.g. "web"'
        )
    else:
        hint = 'give the name of an IPPool in the pod\'s namespace (lower-case, e.g. "web")'
    errors.append(OptionError(IP_POOL, pool, hint=hint))
    return None


def parse_address(text: str) -> str:
    """An IPv4 or IPv6 address in canonical form; ValueError for anything else, a scoped IPv6
    address ("fe80::1%eth0") included: no pod address has a zone."""
    if "%" in text or len(text) > 64:
        raise ValueError(f"{quoted(text)!r} is not an IPv4 or IPv6 address without a zone")
    return str(ipaddress.ip_address(text))


def _ip(a: Mapping[str, str], errors: list[OptionError]) -> str | None:
    raw = a.get(IP_REQUEST)
    if raw is None:
        return None
    ip = None
    try:
        ip = parse_address(raw)
    except ValueError:
        hint = "it is not a valid IPv4 or IPv6 address; write e.g. 10.64.0.5 or fd00::5"
        errors.append(OptionError(IP_REQUEST, raw, hint=hint))
    if IP_POOL not in a:
        hint = f"an address comes from a pool: set {IP_POOL} to the IPPool's name too"
        errors.append(OptionError(IP_REQUEST, raw, hint=hint))
        return None
    return ip


def read_options(annotations: Mapping[str, str] | None) -> RebuildOptions:
    """A pod's options, bad values left at their defaults and listed in ``errors``.

    Pool and address annotations are read even without the rebuild opt-in. A requested address
    is in canonical form (``str(ip_address(...))``).
    """
    a = annotations or {}
    errors: list[OptionError] = []

    def choice(key: str, allowed: tuple[str, ...], default: str) -> str:
        value = a.get(key, default)
        if value in allowed:
            return value
        errors.append(OptionError(key, value, allowed))
        return default

    # in annotation order, so errors come in the order a reader of the table meets them
    enabled = REBUILD in a and choice(REBUILD, ("local",), "") == "local"
    fallback = cast(Fallback, choice(FALLBACK, FALLBACKS, "wait"))
    wait_seconds = _wait_seconds(a, errors)
    order = cast(Order, choice(ORDER, ORDERS, "delete-first"))
    accept_data_loss = choice(ACCEPT_DATA_LOSS, ("true", "false"), "false") == "true"
    pool = _pool(a, errors)
    return RebuildOptions(
        requested=REBUILD in a,
        enabled=enabled,
        fallback=fallback,
        wait_seconds=wait_seconds,
        order=order,
        accept_data_loss=accept_data_loss,
        pool=pool,
        ip=_ip(a, errors),
        errors=tuple(errors),
    )


def written_problems(annotations: Mapping[str, str] | None) -> list[OptionError]:
    """Every ``WRITTEN_BY_FULCRUM`` annotation whose value is not what Fulcrum writes: device
    indices in ASCII digits, an address without a zone, a Reservation's name, a JSON object of
    at most MAX_WRITTEN_CHARS. What the value must match beyond its form (the node's devices,
    the pool's addresses, the pod's GPU count) its readers check."""
    a = annotations or {}
    errors: list[OptionError] = []
    only = "only Fulcrum writes it; remove it"
    if GPU_DEVICES in a:
        try:
            parse_devices(a[GPU_DEVICES])
        except QuantityError:
            hint = f"expected distinct device indices in ASCII digits like 0,1; {only}"
            errors.append(OptionError(GPU_DEVICES, a[GPU_DEVICES], hint=hint))
    if ASSIGNED_IP in a:
        try:
            parse_address(a[ASSIGNED_IP])
        except ValueError:
            hint = f"expected an IPv4 or IPv6 address without a zone; {only}"
            errors.append(OptionError(ASSIGNED_IP, a[ASSIGNED_IP], hint=hint))
    claimed = a.get(RESERVATION)
    if claimed is not None and not is_subdomain(claimed):
        errors.append(
            OptionError(RESERVATION, claimed, hint=f"expected a Reservation's name; {only}")
        )
    for key in (DECISION, STATUS):
        if key in a and not _json_object(a[key]):
            hint = f"expected a JSON object of at most {MAX_WRITTEN_CHARS} characters; {only}"
            errors.append(OptionError(key, a[key], hint=hint))
    return errors


def rebuild_status(annotations: Mapping[str, str]) -> dict[str, Any]:
    """The controller's last ``fulcrum.io/rebuild-status`` on a pod, {} if none or unreadable."""
    raw = annotations.get(STATUS)
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _json_object(raw: str) -> bool:
    if len(raw) > MAX_WRITTEN_CHARS:
        return False
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


def assigned_ip(annotations: Mapping[str, str] | None) -> str | None:
    """``fulcrum.io/assigned-ip`` in canonical form; None if absent; ValueError (naming the
    annotation) if it is not an address."""
    raw = (annotations or {}).get(ASSIGNED_IP)
    if raw is None:
        return None
    try:
        return parse_address(raw)
    except ValueError:
        raise OptionError(
            ASSIGNED_IP, raw, hint="expected an IPv4 or IPv6 address; only Fulcrum writes it"
        ) from None


def parse_images(value: str) -> tuple[str, ...]:
    """The image references of a ``fulcrum.io/prepull`` value: comma-separated, each an image
    reference (``[host[:port]/]path[:tag][@digest]``), at most MAX_PREPULL_IMAGES of at most
    MAX_IMAGE_CHARS each. OptionError names the annotation and the bad reference."""
    if len(value) > MAX_PREPULL_IMAGES * (MAX_IMAGE_CHARS + 1):
        raise OptionError(PREPULL, value, hint="too long; list at most 16 image references")
    images = tuple(part.strip() for part in value.split(","))
    if len(images) > MAX_PREPULL_IMAGES:
        raise OptionError(
            PREPULL, value, hint=f"{len(images)} images; list at most {MAX_PREPULL_IMAGES}"
        )
    for image in images:
        if len(image) > MAX_IMAGE_CHARS or not _IMAGE.fullmatch(image):
            hint = (
                f"{quoted(image)!r} is not an image reference; write e.g. "
                "registry.example.com:5000/team/app:1.4 or app@sha256:<64 hex digits>, "
                "comma-separated"
            )
            raise OptionError(PREPULL, value, hint=hint)
    return images


# --- pod facts ----------------------------------------------------------------------------------


def data_loss_volumes(pod: objects.Raw) -> list[str]:
    """Names of the volumes whose data a recreate loses: ``emptyDir`` and generic ``ephemeral``."""
    return [
        str(v.get("name", "")) for v in objects.volumes(pod) if "emptyDir" in v or "ephemeral" in v
    ]


def claim_names(pod: objects.Raw) -> tuple[str, ...]:
    """The PersistentVolumeClaims the pod mounts, in volume order, each once."""
    names: dict[str, None] = {}
    for volume in objects.volumes(pod):
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim:
            names[str(claim)] = None
    return tuple(names)


def template_images(workload: Any) -> list[str]:
    """The images of a workload's pod template, init containers first, in order."""
    spec = workload.get("spec") if isinstance(workload, Mapping) else None
    template = spec.get("template") if isinstance(spec, Mapping) else None
    pod_spec = template.get("spec") if isinstance(template, Mapping) else None
    if not isinstance(pod_spec, Mapping):
        return []
    images = []
    for key in ("initContainers", "containers"):
        for container in pod_spec.get(key) or []:
            if isinstance(container, Mapping) and isinstance(container.get("image"), str):
                images.append(container["image"])
    return images


def template_opted_in(workload: Any) -> bool:
    """Whether the workload's pod template opts in to local rebuild."""
    spec = workload.get("spec") if isinstance(workload, Mapping) else None
    template = spec.get("template") if isinstance(spec, Mapping) else None
    meta = template.get("metadata") if isinstance(template, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(annotations, Mapping) and annotations.get(REBUILD) == "local"


def successor_key(pod: objects.Raw) -> str | None:
    """What a pod and its successor share, or None when local rebuild does not support its owner.

    ``Deployment/<ns>/<name>``, ``ReplicaSet/<ns>/<name>`` (a ReplicaSet not made by a
    Deployment), ``StatefulSet/<ns>/<name>/<ordinal>`` or ``Pod/<ns>/<name>`` (a bare
    pod re-created under the same name).
    """
    meta = objects.meta(pod)
    namespace = meta.get("namespace") or "default"
    labels = meta.get("labels") or {}
    owner = objects.controller_of(pod)
    if owner is None:
        name = meta.get("name")
        return f"Pod/{namespace}/{name}" if name else None
    kind, owner_name = owner.get("kind"), str(owner.get("name", ""))
    if not owner_name:
        return None
    if kind == "ReplicaSet":
        template_hash = labels.get(_POD_TEMPLATE_HASH)
        suffix = f"-{template_hash}"
        if template_hash and owner_name.endswith(suffix) and len(owner_name) > len(suffix):
            return f"Deployment/{namespace}/{owner_name[: -len(suffix)]}"
        return f"ReplicaSet/{namespace}/{owner_name}"
    if kind == "StatefulSet":
        if _POD_INDEX in labels:
            ordinal = str(labels[_POD_INDEX])
        else:
            name = str(meta.get("name", ""))
            prefix = f"{owner_name}-"
            ordinal = name[len(prefix) :] if name.startswith(prefix) else ""
        if not (ordinal.isascii() and ordinal.isdigit()):
            return None
        return f"StatefulSet/{namespace}/{owner_name}/{int(ordinal)}"
    return None


def reservation_template(pod: objects.Raw) -> dict[str, Any]:
    """The part of a pod its resource request is computed from (containers, overhead, GPU notes)."""
    annotations = objects.annotations(pod)
    spec = objects.pod_spec(pod)

    def container(c: Mapping[str, Any], *extra: str) -> dict[str, Any]:
        out = {"name": c.get("name", ""), "resources": copy.deepcopy(c.get("resources") or {})}
        out.update({key: copy.deepcopy(c[key]) for key in extra if key in c})
        return out

    template_spec: dict[str, Any] = {
        "containers": [container(c) for c in spec.get("containers") or []],
        "initContainers": [container(c, "restartPolicy") for c in spec.get("initContainers") or []],
    }
    if "overhead" in spec:
        template_spec["overhead"] = copy.deepcopy(spec["overhead"])
    gpu_annotations = {k: v for k, v in annotations.items() if k.startswith(_GPU_ANNOTATION_PREFIX)}
    return {"metadata": {"annotations": gpu_annotations}, "spec": template_spec}


# --- Reservation objects ------------------------------------------------------------------------


def reservation_name(predecessor_uid: str) -> str:
    """The Reservation for a predecessor: deterministic, so a restarted controller finds it."""
    return f"rb-{predecessor_uid}"


def _format_time(when: datetime) -> str:
    when = when.astimezone(UTC)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if when.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return when.strftime(pattern)


@dataclass(frozen=True)
class Reservation:
    """A node's room (and devices, IP, volumes) held for a pod's successor.

    ``expires_at`` is None to wait forever; ``claimed_by`` is the successor's uid.
    """

    name: str
    namespace: str
    key: str
    node: str
    predecessor: str
    predecessor_uid: str
    template: dict[str, Any]
    devices: tuple[int, ...] | None
    ip: str | None
    pool: str | None
    claims: tuple[str, ...]
    fallback: str
    expires_at: datetime | None
    phase: str = "Held"
    claimed_by: str | None = None
    resource_version: str | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"status.phase {self.phase!r}: use one of {', '.join(PHASES)}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"spec.fallback {self.fallback!r}: use one of {', '.join(FALLBACKS)}")
        if self.expires_at is not None and self.expires_at.utcoffset() is None:
            raise ValueError("spec.expiresAt: give a timezone-aware datetime (UTC)")

    def active(self, now: datetime) -> bool:
        """Whether the reservation still holds its room at ``now`` (timezone-aware)."""
        return self.phase == "Held" and (self.expires_at is None or now < self.expires_at)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Reservation:
        """Parse a Reservation custom object; ValueError names the malformed field."""
        meta = _mapping(obj, "metadata", obj.get("metadata"))
        spec = _mapping(obj, "spec", obj.get("spec"))
        status = _mapping(obj, "status", obj.get("status") or {})
        predecessor = _mapping(obj, "spec.predecessor", spec.get("predecessor"))
        template = _mapping(obj, "spec.template", spec.get("template"))

        devices = _devices(obj, spec.get("devices"))
        claims_raw = spec.get("claims") or []
        if not isinstance(claims_raw, list) or not all(isinstance(c, str) for c in claims_raw):
            raise _field_error(obj, "spec.claims", claims_raw, "a list of PVC names")
        ip = _optional_str(obj, "spec.ip", spec.get("ip"))
        if ip is not None:
            try:
                ip = parse_address(ip)
            except ValueError:
                raise _field_error(obj, "spec.ip", ip, "an IPv4 or IPv6 address") from None
        expires_at = _expires_at(obj, _optional_str(obj, "spec.expiresAt", spec.get("expiresAt")))
        fallback = _optional_str(obj, "spec.fallback", spec.get("fallback")) or "wait"
        if fallback not in FALLBACKS:
            raise _field_error(obj, "spec.fallback", fallback, "one of " + ", ".join(FALLBACKS))
        phase = _optional_str(obj, "status.phase", status.get("phase")) or "Held"
        if phase not in PHASES:
            raise _field_error(obj, "status.phase", phase, "one of " + ", ".join(PHASES))

        return cls(
            name=_required_str(obj, "metadata.name", meta.get("name")),
            namespace=_required_str(obj, "metadata.namespace", meta.get("namespace")),
            key=_required_str(obj, "spec.key", spec.get("key")),
            node=_required_str(obj, "spec.node", spec.get("node")),
            predecessor=_required_str(obj, "spec.predecessor.name", predecessor.get("name")),
            predecessor_uid=_required_str(obj, "spec.predecessor.uid", predecessor.get("uid")),
            template=copy.deepcopy(dict(template)),
            devices=devices,
            ip=ip,
            pool=_optional_str(obj, "spec.pool", spec.get("pool")),
            claims=tuple(claims_raw),
            fallback=fallback,
            expires_at=expires_at,
            phase=phase,
            claimed_by=_optional_str(obj, "status.claimedBy", status.get("claimedBy")),
            resource_version=_optional_str(
                obj, "metadata.resourceVersion", meta.get("resourceVersion")
            ),
        )

    def to_object(self) -> dict[str, Any]:
        """The custom object (fields that are None are left out)."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        spec: dict[str, Any] = {
            "key": self.key,
            "node": self.node,
            "predecessor": {"name": self.predecessor, "uid": self.predecessor_uid},
            "template": copy.deepcopy(self.template),
            "claims": list(self.claims),
            "fallback": self.fallback,
        }
        optional = {
            "devices": None if self.devices is None else list(self.devices),
            "ip": self.ip,
            "pool": self.pool,
            "expiresAt": None if self.expires_at is None else _format_time(self.expires_at),
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        status: dict[str, Any] = {"phase": self.phase}
        if self.claimed_by is not None:
            status["claimedBy"] = self.claimed_by
        return {
            "apiVersion": API_VERSION,
            "kind": "Reservation",
            "metadata": metadata,
            "spec": spec,
            "status": status,
        }


def _devices(obj: Mapping[str, Any], raw: Any) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise _field_error(obj, "spec.devices", raw, "a list of device indices")
    return tuple(raw)


def _expires_at(obj: Mapping[str, Any], raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        expires_at = datetime.fromisoformat(raw)
    except ValueError:
        expires_at = None
    if expires_at is None or expires_at.utcoffset() is None:
        raise _field_error(obj, "spec.expiresAt", raw, "an RFC 3339 time like 2025-01-02T03:04:05Z")
    return expires_at.astimezone(UTC)


def _where(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and meta.get("name"):
        return f"Reservation {meta.get('namespace', '?')}/{meta['name']}"
    return "Reservation"


def _field_error(obj: Mapping[str, Any], field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{_where(obj)}: {field} is {value!r}; expected {expected}")


def _mapping(obj: Mapping[str, Any], field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _field_error(obj, field, value, "an object")
    return value


def _required_str(obj: Mapping[str, Any], field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _field_error(obj, field, value, "a non-empty string")
    return value


def _optional_str(obj: Mapping[str, Any], field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _field_error(obj, field, value, "a string")
    return value
