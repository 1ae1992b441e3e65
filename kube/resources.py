"""Resource arithmetic on raw Kubernetes objects (dicts as the apiserver sends them).

Units: cpu in millicores, memory and ephemeral-storage in bytes, everything else in whole units.
Pod requests follow upstream NodeResourcesFit: max(sum of app containers, each init container)
plus the pod overhead.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from scheduler.attributes import NOTHING, PodAttributes, Reads, Taint
from scheduler.pod import GPU_MILLI, PodRequest, effective_request, pod_request_from_resources

CPU = "cpu"
MEMORY = "memory"
PODS = "pods"
EPHEMERAL = "ephemeral-storage"
GPU = "nvidia.com/gpu"
# Marks a pod only Fulcrum's bind can bind (``kube.eligibility.bind_reason``): kube-scheduler's
# second extender entry manages it (``managedResources``, ignoredByScheduler), so only marked
# pods are sent to Fulcrum's bind. No node has it and no placement counts it.
BIND = "fulcrum.io/bind"

Resources = dict[str, int]
# The placement core counts in int64 arrays: a quantity beyond this (1 PiB of memory, a
# trillion cores) is counted as this, so sums over a node's pods never overflow.
MAX_QUANTITY = 2**50
MAX_GPUS = 256  # devices on one node or in one pod's request
# A quantity's exponent beyond this is no amount anyone means ("1e999999"): refused, where
# "1e309" is still counted at MAX_QUANTITY.
MAX_EXPONENT = 1000
LABEL_VALUE_CHARS = 63  # a node label's value, so a GPU model name, is at most this long
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DEVICES = re.compile(r"[0-9]{1,3}(,[0-9]{1,3})*")


class QuantityError(ValueError):
    """A resource quantity or annotation that cannot be read; the message names it."""


def quantity(resource: str, value: Any) -> int:
    """Convert a Kubernetes quantity to Fulcrum's integer unit for ``resource``."""
    try:
        if isinstance(value, str):
            return _cached_quantity(resource == CPU, value)
        return _parse_quantity(resource, value)
    except QuantityError as exc:
        raise QuantityError(f"{resource}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _cached_quantity(is_cpu: bool, value: str) -> int:
    return _parse_quantity(CPU if is_cpu else "", value)


def _parse_quantity(resource: str, value: Any) -> int:
    try:
        amount: Decimal = parse_quantity(value)
        if not amount.is_finite() or amount.adjusted() > MAX_EXPONENT:
            raise ArithmeticError("not a finite amount")
        if resource == CPU:
            amount = amount * 1000
    except (ValueError, TypeError, ArithmeticError) as exc:  # decimal's errors are arithmetic
        shown = _quoted(str(value)) if isinstance(value, str) else repr(value)
        raise QuantityError(
            f"{shown!r} is not a Kubernetes quantity; write e.g. 500m, 2, 4Gi"
        ) from exc
    if abs(amount) > MAX_QUANTITY:
        return MAX_QUANTITY if amount > 0 else -MAX_QUANTITY
    ceiling: int = math.ceil(amount)
    return ceiling


def _quoted(value: str, limit: int = 64) -> str:
    return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} characters)"


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object (or empty), else a QuantityError naming ``field``."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise QuantityError(f"{field}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if not value:
        return []
    if not isinstance(value, list):
        raise QuantityError(f"{field}: expected a list, got {type(value).__name__}")
    return value


def to_resources(values: Any, field: str = "resources") -> Resources:
    out: Resources = {}
    for name, value in _mapping(values, field).items():
        try:
            out[str(name)] = quantity(str(name), value)
        except QuantityError as exc:
            raise QuantityError(f"{field}.{exc}") from None
    return out


def _requests(container: Any) -> Resources:
    resources = _mapping(_mapping(container, "container").get("resources"), "resources")
    return to_resources(resources.get("requests"), "resources.requests")


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """The resources the scheduler reserves for ``pod`` (``scheduler.pod.effective_request``)."""
    spec = _mapping(pod.get("spec"), "spec")
    init = _list(spec.get("initContainers"), "spec.initContainers")
    total = effective_request(
        [_requests(c) for c in _list(spec.get("containers"), "spec.containers")],
        [_requests(c) for c in init],
        to_resources(spec.get("overhead"), "spec.overhead"),
        sidecars=[c.get("restartPolicy") == "Always" for c in init],
    )
    total[PODS] = 1
    return total


def node_allocatable(node: Mapping[str, Any]) -> Resources:
    status = _mapping(node.get("status"), "status")
    return to_resources(status.get("allocatable") or status.get("capacity"), "status.allocatable")


# --- Kubernetes objects -> the placement core's plain numbers --------------------------------

GPU_MILLI_ANNOTATION = "fulcrum.io/gpu-milli"  # a GPU-sharing pod's share of one device
GPU_MODEL_ANNOTATION = "fulcrum.io/gpu-model"  # acceptable models, "A100|V100"
GPU_DEVICES_ANNOTATION = "fulcrum.io/gpu-devices"  # devices Fulcrum chose, "0,1"
GPU_MODEL_LABEL = "nvidia.com/gpu.product"  # set on nodes by GPU feature discovery
_NOT_SCALAR = {GPU, PODS, CPU, MEMORY, EPHEMERAL, BIND}


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    annotations = _mapping(_mapping(obj.get("metadata"), "metadata").get("annotations"), "")
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise QuantityError(f"annotation {key}: expected a string, got {type(value).__name__}")
    return annotations


def pod_request(pod: Mapping[str, Any], reads: Reads = NOTHING) -> PodRequest:
    """The pod's effective request; GPU shares come from ``fulcrum.io/gpu-milli``. With
    ``reads.pod`` (a configured policy reads them) it carries the pod's attributes."""
    requests = pod_requests(pod)
    annotations = _annotations(pod)
    gpu_count = requests.get(GPU, 0)
    gpu_milli = GPU_MILLI
    if GPU_MILLI_ANNOTATION in annotations:
        raw = annotations[GPU_MILLI_ANNOTATION]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 0 < int(raw) <= GPU_MILLI):
            raise QuantityError(
                f"annotation {GPU_MILLI_ANNOTATION}={_quoted(raw)!r}: use an integer 1..1000 "
                "in ASCII digits (milli of one GPU)"
            )
        gpu_milli = int(raw)
        if gpu_milli < GPU_MILLI:
            if gpu_count > 1:
                raise QuantityError(
                    f"annotation {GPU_MILLI_ANNOTATION}={raw!r} shares one GPU, but the pod "
                    f"requests {gpu_count} {GPU}: drop the {GPU} request"
                )
            gpu_count = 1
    if gpu_count > MAX_GPUS:
        raise QuantityError(f"{GPU}: {gpu_count} devices; a pod may request at most {MAX_GPUS}")
    models = gpu_models(annotations)
    scalars = {k: v for k, v in requests.items() if k not in (GPU, PODS, BIND)}
    return pod_request_from_resources(
        scalars,
        gpu_count=gpu_count,
        gpu_milli=gpu_milli,
        gpu_models=models,
        attributes=pod_attributes(pod) if reads.pod else None,
    )


def _strings(value: Any, field: str) -> Mapping[str, str]:
    mapping = _mapping(value, field)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise QuantityError(f"{field}.{key}: expected a string, got {type(item).__name__}")
    return mapping


def pod_attributes(pod: Mapping[str, Any]) -> PodAttributes:
    """What a policy declaring ``Reads(pod=True)`` sees of ``pod``: labels, namespace,
    priority and its controller."""
    meta = _mapping(pod.get("metadata"), "metadata")
    priority = _mapping(pod.get("spec"), "spec").get("priority") or 0
    if not isinstance(priority, int):
        raise QuantityError(f"spec.priority: expected an integer, got {priority!r}")
    owners = _list(meta.get("ownerReferences"), "metadata.ownerReferences")
    owner = next((o for o in owners if isinstance(o, Mapping) and o.get("controller")), {})
    return PodAttributes(
        namespace=str(meta.get("namespace") or ""),
        labels=tuple(sorted(_strings(meta.get("labels"), "metadata.labels").items())),
        priority=priority,
        owner_kind=str(owner.get("kind") or ""),
        owner_name=str(owner.get("name") or ""),
        owner_uid=str(owner.get("uid") or ""),
    )


def node_taints(node: Mapping[str, Any]) -> list[Taint]:
    taints = _list(_mapping(node.get("spec"), "spec").get("taints"), "spec.taints")
    out = []
    for i, taint in enumerate(taints):
        t = _mapping(taint, f"spec.taints[{i}]")
        if not isinstance(t.get("key"), str) or not t["key"]:
            raise QuantityError(f"spec.taints[{i}].key: expected a non-empty string")
        out.append(Taint(t["key"], str(t.get("value") or ""), str(t.get("effect") or "")))
    return out


def gpu_models(annotations: Mapping[str, str]) -> list[str]:
    """The models of ``fulcrum.io/gpu-model`` ("A100|V100"); each must be a node label value
    (what ``nvidia.com/gpu.product`` can hold), or QuantityError names the annotation."""
    if GPU_MODEL_ANNOTATION not in annotations:
        return []
    raw = annotations[GPU_MODEL_ANNOTATION]
    models = [m.strip() for m in raw.split("|") if m.strip()] if len(raw) <= 4096 else []
    bad = [m for m in models if len(m) > LABEL_VALUE_CHARS or not _LABEL_VALUE.fullmatch(m)] or (
        [raw] if len(raw) > 4096 else []
    )
    if bad:
        raise QuantityError(
            f"annotation {GPU_MODEL_ANNOTATION}: {_quoted(bad[0])!r} is not a node label value "
            f"(at most {LABEL_VALUE_CHARS} characters of A-Z a-z 0-9 - _ . , alphanumeric at "
            "both ends): give models as nvidia.com/gpu.product names them, e.g. 'A100|V100'"
        )
    if not models:
        raise QuantityError(
            f"annotation {GPU_MODEL_ANNOTATION}={_quoted(raw)!r} names no "
            "model: give one or more, e.g. 'A100' or 'A100|V100', or remove it to accept any"
        )
    return models


def marked_for_bind(pod: Mapping[str, Any]) -> bool:
    """Whether a container of ``pod`` requests or limits ``fulcrum.io/bind`` (as
    kube-scheduler's ``managedResources`` test does)."""
    spec = pod.get("spec") or {}
    for container in [*(spec.get("containers") or ()), *(spec.get("initContainers") or ())]:
        resources = container.get("resources") or {}
        if BIND in (resources.get("requests") or {}) or BIND in (resources.get("limits") or {}):
            return True
    return False


def assigned_devices(
    pod: Mapping[str, Any], request: PodRequest | None = None
) -> tuple[int, ...] | None:
    """The devices Fulcrum's bind chose (``fulcrum.io/gpu-devices``), or None. QuantityError
    unless they are distinct device indices in ASCII digits, below MAX_GPUS, and as many as
    the pod takes GPUs (``request``, default ``pod_request(pod)``); ``devices_on_node``
    checks them against a node."""
    raw = _annotations(pod).get(GPU_DEVICES_ANNOTATION)
    if raw is None:
        return None
    devices = parse_devices(raw)
    wanted = (request or pod_request(pod)).gpu_count
    if len(devices) != wanted:
        raise QuantityError(
            f"annotation {GPU_DEVICES_ANNOTATION}={_quoted(raw)!r} names {len(devices)} "
            f"devices, but the pod takes {wanted} GPUs: only Fulcrum's bind writes it; remove it"
        )
    return devices


def parse_devices(raw: str) -> tuple[int, ...]:
    """Device indices as ``fulcrum.io/gpu-devices`` writes them ("0,1"; "" for none)."""
    devices = tuple(int(d) for d in raw.split(",")) if _DEVICES.fullmatch(raw) else None
    if raw and (devices is None or len(set(devices)) != len(devices) or max(devices) >= MAX_GPUS):
        raise QuantityError(
            f"annotation {GPU_DEVICES_ANNOTATION}={_quoted(raw)!r}: expected distinct device "
            f"indices below {MAX_GPUS} in ASCII digits, like '0,1'; only Fulcrum's bind writes it"
        )
    return devices or ()


def devices_on_node(devices: tuple[int, ...], node_gpus: int, node: str) -> None:
    """QuantityError unless every one of ``devices`` is one of the node's ``node_gpus``."""
    beyond = [d for d in devices if d >= node_gpus]
    if beyond:
        raise QuantityError(
            f"annotation {GPU_DEVICES_ANNOTATION}: node {node} has {node_gpus} GPUs, "
            f"no device {beyond[0]}"
        )


def node_spec(node: Mapping[str, Any], reads: Reads = NOTHING) -> dict[str, Any]:
    """Keyword arguments of ``Snapshot.add_node`` for a Kubernetes node, with the labels and
    taints that ``reads`` names (what the configured policies declared)."""
    allocatable = node_allocatable(node)
    labels = _mapping(_mapping(node.get("metadata"), "metadata").get("labels"), "labels")
    spec: dict[str, Any] = {}
    if reads.labels:
        spec["labels"] = {k: str(labels[k]) for k in reads.labels if k in labels}
    if reads.taints:
        spec["taints"] = node_taints(node)
    return spec | {
        "cpu_milli": allocatable.get(CPU, 0),
        "memory": allocatable.get(MEMORY, 0),
        "ephemeral_storage": allocatable.get(EPHEMERAL, 0),
        "max_pods": allocatable.get(PODS, 110),
        "gpu_count": min(allocatable.get(GPU, 0), MAX_GPUS),
        "gpu_model": labels.get(GPU_MODEL_LABEL) or None,
        "extended": {k: v for k, v in allocatable.items() if k not in _NOT_SCALAR},
    }
