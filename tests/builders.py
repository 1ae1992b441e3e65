"""Kubernetes objects as the apiserver sends them (JSON-decoded), for unit and contract tests.

One builder per kind, options keyword-only; a test file that wants other defaults wraps them
(``functools.partial``) instead of writing its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kube import api

Obj = dict[str, Any]
GPU_MODEL_LABEL = "nvidia.com/gpu.product"


def node(
    name: str,
    *,
    cpu: str = "4",
    memory: str | None = None,
    pods: str = "110",
    gpus: int = 0,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    cordoned: bool = False,
) -> Obj:
    """A Node with ``status.allocatable`` (and its GPU model label when it has GPUs)."""
    allocatable = {"cpu": cpu, "pods": pods}
    if memory is not None:
        allocatable["memory"] = memory
    all_labels = dict(labels or {})
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    if model is not None:
        all_labels[GPU_MODEL_LABEL] = model
    out: Obj = {"metadata": {"name": name}, "status": {"allocatable": allocatable}}
    if all_labels:
        out["metadata"]["labels"] = all_labels
    if cordoned:
        out["spec"] = {"unschedulable": True}
    return out


def pod(
    uid: str,
    *,
    name: str | None = None,
    namespace: str = "ns",
    node_name: str = "",
    cpu: str | None = "1",
    memory: str | None = None,
    requests: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    finalizers: Iterable[str] = (),
    owners: Iterable[Obj] = (),
    volumes: Iterable[Obj] = (),
    deleting: bool = False,
    phase: str | None = None,
    container: str = "c",
    scheduler: str | None = None,
) -> Obj:
    """A Pod of one container requesting ``cpu`` and ``memory`` (plus ``requests``).

    ``name`` defaults to the uid; ``phase`` to Running when bound, else none.
    """
    meta: Obj = {"uid": uid, "name": name or uid, "namespace": namespace}
    if labels is not None:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if owners:
        meta["ownerReferences"] = list(owners)
    if deleting:
        meta["deletionTimestamp"] = "2026-11-27T08:00:00Z"
    wanted = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    wanted.update(requests or {})
    spec: Obj = {"containers": [{"name": container, "resources": {"requests": wanted}}]}
    if volumes:
        spec["volumes"] = list(volumes)
    if node_name:
        spec["nodeName"] = node_name
    if scheduler is not None:
        spec["schedulerName"] = scheduler
    status = phase if phase is not None else ("Running" if node_name else "")
    return {"metadata": meta, "spec": spec, "status": {"phase": status}}


def reservation(
    node: str,
    *,
    name: str = "rb-1",
    namespace: str = "ns",
    key: str = "Pod/ns/web-0",
    expires: datetime | None = None,
    phase: str = "Held",
) -> Obj:
    """A Reservation object holding ``node`` for pod web-0's successor (``expires``: the
    ``reschedule`` fallback's deadline; none waits)."""
    return api.Reservation(
        name=name,
        namespace=namespace,
        key=key,
        node=node,
        predecessor="web-0",
        predecessor_uid="1",
        template={"spec": {"containers": []}},
        devices=None,
        ip=None,
        pool=None,
        claims=(),
        fallback="reschedule" if expires else "wait",
        expires_at=expires,
        phase=phase,
    ).to_object()


def cluster_view(view: Any) -> Any:
    """A stand-in for ``fulcrum.inspect_cli.cluster_view`` (monkeypatched): runs what the
    command does within the metrics' window (its lists and inspection), then gives ``view``
    (a ``probe.ClusterView``, or None: no components inspected)."""

    def read(args: Any, meanwhile: Any) -> Any:
        meanwhile()
        return view

    return read
