"""StatefulSets with ``updateStrategy: OnDelete``: a change taken in place, or a local recreate.

The StatefulSet controller leaves an OnDelete pod alone after a template change; this step
brings it to the new revision. A change of images and cpu/memory only is applied to the
running pod (same node, same IP, same volumes): images by a pod update, cpu/memory through the
``resize`` subresource. Anything else is a recreate: the pod is deleted, and the usual local
rebuild brings it back on its node. ``pre_rebuild`` hooks may postpone either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube.hooks import HookRegistry, combine, hooks_for
from kube.objects import ObjectMeta, Raw
from kube.resources import BIND
from rebuild.errors import TemporaryError
from rebuild.writes import Writes

PRE_REBUILD_RETRY_SECONDS = 5.0

_SAME = (
    "name",
    "command",
    "args",
    "env",
    "envFrom",
    "resources",
    "volumeMounts",
    "ports",
    "workingDir",
)


@dataclass(frozen=True)
class InPlace:
    """What can change in a running pod: images (a pod update) and cpu/memory (a resize)."""

    images: dict[int, str]  # container index -> new image
    resources: dict[str, dict[str, Any]]  # container name -> new resources


def statefulset_key(meta: ObjectMeta) -> str | None:
    """``<namespace>/<name>`` of the StatefulSet controlling the pod ``meta`` describes."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "StatefulSet":
            return f"{meta['namespace']}/{ref['name']}"
    return None


def update(
    pod: Raw, meta: ObjectMeta, sts: Raw | None, hooks: HookRegistry, writes: Writes
) -> None:
    """Bring an OnDelete StatefulSet's pod to its update revision, in place where it can.

    Raises ``TemporaryError`` while a ``pre_rebuild`` hook postpones it (status ``delayed``).
    """
    if sts is None or (sts.get("spec") or {}).get("updateStrategy", {}).get("type") != "OnDelete":
        return
    revision = (sts.get("status") or {}).get("updateRevision")
    labels = meta.get("labels") or {}
    if not revision or labels.get("controller-revision-hash") == revision:
        return
    verdict = combine(h.pre_rebuild(pod) for h in hooks_for(meta.get("annotations"), hooks))
    if not verdict.allow:
        writes.report(pod, "delayed", verdict.reason)
        raise TemporaryError(verdict.retry_after or PRE_REBUILD_RETRY_SECONDS, verdict.reason)
    template = sts["spec"]["template"]["spec"]
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
    change = in_place_change(pod["spec"], template, claims)
    if change is not None and writes.resize(meta, change.resources):
        _apply(pod, meta, change, revision, writes)
    else:
        writes.report(pod, "recreating", f"local recreate for revision {revision}")
        writes.delete_pod(meta)


def _apply(pod: Raw, meta: ObjectMeta, change: InPlace, revision: str, writes: Writes) -> None:
    """The images and the revision label in one pod update (cpu/memory are resized already)."""
    patch: list[dict[str, Any]] = [
        {"op": "replace", "path": f"/spec/containers/{i}/image", "value": image}
        for i, image in change.images.items()
    ]
    patch.append(
        {"op": "replace", "path": "/metadata/labels/controller-revision-hash", "value": revision}
    )
    if not writes.patch_pod(meta, patch):
        return
    what = " and ".join(
        w for w, done in (("image", change.images), ("cpu/memory", change.resources)) if done
    )
    writes.report(pod, "in-place", f"{what} updated in place to revision {revision}")


def _own(items: Any) -> list[Any]:
    """``items`` without what the ServiceAccount admission plugin adds to every pod."""
    return [
        item for item in items or [] if not str(item.get("name", "")).startswith("kube-api-access-")
    ]


def in_place_change(pod_spec: Raw, template: Raw, claim_templates: set[str]) -> InPlace | None:
    """How to take ``template``'s change in place, or None if anything else differs.

    The StatefulSet controller adds a volume per claim template (``claim_templates``) to its
    pods, and the ServiceAccount admission plugin a token volume: neither is a difference.
    """
    have, want = pod_spec.get("containers") or [], template.get("containers") or []
    inits = [_as_admitted(c) for c in pod_spec.get("initContainers") or []]
    if (
        len(have) != len(want)
        or inits != [_as_admitted(c) for c in template.get("initContainers") or []]
        or [v for v in _own(pod_spec.get("volumes")) if v.get("name") not in claim_templates]
        != _own(template.get("volumes"))
    ):
        return None
    change = InPlace({}, {})
    for i, (a, b) in enumerate(zip(have, want, strict=True)):
        a, b = _as_admitted(a), _as_admitted(b)
        if any(a.get(k) != b.get(k) for k in _SAME if k != "resources"):
            return None
        if a.get("image") != b.get("image"):
            change.images[i] = str(b.get("image"))
        if a.get("resources") != b.get("resources"):
            if _without_cpu_memory(a.get("resources")) != _without_cpu_memory(b.get("resources")):
                return None
            change.resources[str(b["name"])] = b.get("resources") or {}
    return change if change.images or change.resources else None


def _without_cpu_memory(resources: Any) -> dict[str, Any]:
    return {
        kind: {r: q for r, q in (values or {}).items() if r not in ("cpu", "memory")}
        for kind, values in (resources or {}).items()
    }


def _as_admitted(container: Raw) -> dict[str, Any]:
    """A container as a pod made from it has it: the token mount dropped, requests defaulted,
    without the ``fulcrum.io/bind`` mark Fulcrum's webhook adds (a resize, a strategic merge,
    leaves it on the pod)."""
    out = {**container, "volumeMounts": _own(container.get("volumeMounts")) or None}
    resources = {
        kind: {r: q for r, q in values.items() if r != BIND}
        if isinstance(values, Mapping)
        else values
        for kind, values in (container.get("resources") or {}).items()
    }
    resources = {kind: values for kind, values in resources.items() if values}
    if resources.get("limits") and not resources.get("requests"):
        resources["requests"] = resources["limits"]  # the apiserver copies limits to requests
    out["resources"] = resources or None
    return out
