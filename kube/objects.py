"""Typed views of the Kubernetes objects Fulcrum reads: pods, nodes and their metadata.

Objects arrive as decoded JSON (the informers' events, admission reviews, kube-scheduler's
extender requests). The TypedDicts below name the fields Fulcrum reads, and the accessors read
them once, defaults included, so no reader re-derives an object's shape with
``(obj.get("metadata") or {})``. A view is the object itself, never a copy: an accessor costs one
function call on the hot path (the cache's pod events, the filter).

Accessors take any object (``Mapping[str, Any]``: a raw dict or one of these views) and return a
view, so a caller that has a raw dict needs no cast to read it typed.
"""

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, cast

Raw = Mapping[str, Any]  # an object as decoded, of any kind


class OwnerReference(TypedDict, total=False):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]
    finalizers: list[str]
    deletionTimestamp: str
    resourceVersion: str


class Container(TypedDict, total=False):
    name: str
    image: str
    resources: dict[str, dict[str, str]]


class PersistentVolumeClaimSource(TypedDict, total=False):
    claimName: str


class Volume(TypedDict, total=False):
    name: str
    persistentVolumeClaim: PersistentVolumeClaimSource
    emptyDir: dict[str, Any]
    ephemeral: dict[str, Any]


class PodSpec(TypedDict, total=False):
    nodeName: str
    schedulerName: str
    containers: list[Container]
    initContainers: list[Container]
    volumes: list[Volume]
    overhead: dict[str, str]


class Condition(TypedDict, total=False):
    type: str
    status: str


class PodStatus(TypedDict, total=False):
    phase: str
    podIP: str
    nominatedNodeName: str
    conditions: list[Condition]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus


class NodeSpec(TypedDict, total=False):
    unschedulable: bool


class Node(TypedDict, total=False):
    metadata: ObjectMeta
    spec: NodeSpec


# --- any object ---------------------------------------------------------------------------------


def meta(obj: Raw) -> ObjectMeta:
    """``metadata``, or an empty one."""
    return cast(ObjectMeta, obj.get("metadata") or {})


def name(obj: Raw) -> str:
    return str(meta(obj).get("name") or "")


def namespace(obj: Raw) -> str:
    return str(meta(obj).get("namespace") or "")


def uid(obj: Raw) -> str:
    return str(meta(obj).get("uid") or "")


def key(obj: Raw) -> str:
    """``<namespace>/<name>``: how caches and work queues name a namespaced object."""
    m = meta(obj)
    return f"{m.get('namespace', '')}/{m.get('name', '')}"


def annotations(obj: Raw) -> Mapping[str, str]:
    return meta(obj).get("annotations") or {}


def labels(obj: Raw) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def finalizers(obj: Raw) -> Sequence[str]:
    return meta(obj).get("finalizers") or ()


def deleting(obj: Raw) -> bool:
    """It has a deletion timestamp: it is going away, waiting only for its finalizers."""
    return bool(meta(obj).get("deletionTimestamp"))


def controller_of(obj: Raw) -> OwnerReference | None:
    """The owner reference with ``controller: true``, if any."""
    for ref in meta(obj).get("ownerReferences") or ():
        if ref.get("controller") is True:
            return ref
    return None


# --- pods ---------------------------------------------------------------------------------------


def pod_spec(pod: Raw) -> PodSpec:
    return cast(PodSpec, pod.get("spec") or {})


def pod_status(pod: Raw) -> PodStatus:
    return cast(PodStatus, pod.get("status") or {})


def node_name(pod: Raw) -> str:
    """The node the pod is bound to, or ``""``."""
    return pod_spec(pod).get("nodeName") or ""


def phase(pod: Raw) -> str:
    return pod_status(pod).get("phase") or ""


def containers(pod: Raw) -> Sequence[Container]:
    return pod_spec(pod).get("containers") or ()


def volumes(pod: Raw) -> Sequence[Volume]:
    return pod_spec(pod).get("volumes") or ()


def ready(obj: Raw) -> bool:
    """A pod's or a node's ``Ready`` condition is ``True``."""
    conditions = pod_status(obj).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# --- nodes --------------------------------------------------------------------------------------


def unschedulable(node: Raw) -> bool:
    """Cordoned: ``spec.unschedulable``."""
    return bool(cast(NodeSpec, node.get("spec") or {}).get("unschedulable"))
