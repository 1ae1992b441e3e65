"""StatefulSets with ``updateStrategy: OnDelete``: a change taken in place, or a local recreate.

The StatefulSet controller leaves an OnDelete pod alone after a template change; this step
brings it to the new revision, one pod of a StatefulSet at a time. When the whole difference
between the pod and the new template is images and cpu/memory, it is applied to the running pod
(same node, same IP, same volumes): images by a pod update, cpu/memory through the ``resize``
subresource. Anything else (env, probes, ``securityContext``, ``serviceAccountName``, ...) is a
recreate: the pod is evicted (``pods/eviction``, so PodDisruptionBudgets are honoured), and the
usual local rebuild brings it back on its node.

A pod is updated only while every other replica of its StatefulSet is present, Ready and not
terminating, so a quorum keeps all but one member; ``pre_rebuild`` hooks may postpone it too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube import api, objects
from kube.hooks import HookRegistry, combine, hooks_for
from kube.objects import ObjectMeta, Raw
from kube.resources import BIND
from rebuild.errors import TemporaryError
from rebuild.writes import Writes

PRE_REBUILD_RETRY_SECONDS = 5.0
PACE_RETRY_SECONDS = 2.0  # a pod waiting for its siblings looks again after this
EVICTION_RETRY_SECONDS = 5.0  # a PodDisruptionBudget refused the eviction (429)
STARTED_SECONDS = 30.0  # an update just made counts as in progress until the watch shows it

# what admission and the StatefulSet controller write into a pod that its template does not
# say, so never a difference: the binding, the ordinal's hostname, the webhook's scheduler,
# the priority admission plugin's fields, the RuntimeClass overhead. The containers, volumes,
# tolerations and service account are compared on their own, their additions set aside.
_WRITTEN_AT_CREATION = frozenset(
    {
        "nodeName",
        "hostname",
        "subdomain",
        "schedulerName",
        "priority",
        "preemptionPolicy",
        "overhead",
        "containers",
        "initContainers",
        "ephemeralContainers",
        "volumes",
        "tolerations",
        "serviceAccountName",
        "serviceAccount",
    }
)
# what the apiserver's defaulting sets on pods only (SetDefaults_Pod), not on templates
_POD_DEFAULTS: Mapping[str, Any] = {"enableServiceLinks": True}
# the tolerations the DefaultTolerationSeconds admission plugin adds to every pod
_DEFAULT_TOLERATIONS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})


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


@dataclass
class Pacing:
    """One update at a time per StatefulSet, across the controller's workers.

    The store shows a pod evicted or updated a moment ago only once the watch delivers it; until
    then (at most STARTED_SECONDS) the update ``begin`` recorded counts as in progress.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    started: dict[str, tuple[str, float]] = field(default_factory=dict)  # sts -> (uid, when)


def update(
    pod: Raw,
    meta: ObjectMeta,
    sts: Raw | None,
    hooks: HookRegistry,
    writes: Writes,
    *,
    sibling: Callable[[str], Raw | None] = lambda name: None,
    pacing: Pacing | None = None,
    prepull: Callable[[Raw, list[str]], str] | None = None,
) -> None:
    """Bring an OnDelete StatefulSet's pod to its update revision, in place where it can.

    ``sibling(name)``: the pod of that name in the pod's namespace, as the store has it.
    Raises ``TemporaryError`` while another replica is missing, not Ready or being replaced
    (status ``waiting``), while a ``pre_rebuild`` hook postpones it (``delayed``), while a
    PodDisruptionBudget refuses its eviction, or while ``prepull(pod, images)`` waits for the
    pod's node to pull the new template's images before the pod is evicted (what it returns,
    how the pull went, ends the ``recreating`` status).
    """
    if sts is None or (sts.get("spec") or {}).get("updateStrategy", {}).get("type") != "OnDelete":
        return
    revision = (sts.get("status") or {}).get("updateRevision")
    labels = meta.get("labels") or {}
    if not revision or labels.get("controller-revision-hash") == revision:
        return
    pacing = pacing if pacing is not None else Pacing()
    sts_key = f"{meta['namespace']}/{sts['metadata']['name']}"
    with pacing.lock:  # one worker at a time decides, and records, an update of this StatefulSet
        busy = _busy_sibling(meta, sts, sibling, pacing.started.get(sts_key))
        if busy:
            writes.report(pod, "waiting", f"revision {revision} waits: {busy}")
            raise TemporaryError(PACE_RETRY_SECONDS, busy)
        verdict = combine(h.pre_rebuild(pod) for h in hooks_for(meta.get("annotations"), hooks))
        if not verdict.allow:
            writes.report(pod, "delayed", verdict.reason)
            raise TemporaryError(verdict.retry_after or PRE_REBUILD_RETRY_SECONDS, verdict.reason)
        template = sts["spec"]["template"]["spec"]
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []}
        change = in_place_change(pod["spec"], template, claims)
        if isinstance(change, InPlace) and writes.resize(meta, change.resources):
            _apply(pod, meta, change, revision, writes)
        else:
            what = change if isinstance(change, str) else "cpu/memory (resize refused)"
            pulled = prepull(pod, api.template_images(sts)) if prepull is not None else ""
            if not writes.evict_pod(meta):
                reason = (
                    f"revision {revision} waits: a PodDisruptionBudget forbids evicting "
                    f"{meta['name']} now"
                )
                writes.report(pod, "waiting", reason)
                raise TemporaryError(EVICTION_RETRY_SECONDS, reason)
            writes.report(
                pod,
                "recreating",
                f"local recreate for revision {revision}: {what} differs"
                + (f"; {pulled}" if pulled else ""),
            )
        pacing.started[sts_key] = (meta["uid"], time.monotonic())


def _busy_sibling(
    meta: ObjectMeta,
    sts: Raw,
    sibling: Callable[[str], Raw | None],
    started: tuple[str, float] | None,
) -> str:
    """Why another replica of ``sts`` is not up now (missing, terminating, not Ready, or
    updated moments ago and not yet seen so), or "" if every other one is."""
    name = str(sts["metadata"]["name"])
    spec = sts.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    first = int((spec.get("ordinals") or {}).get("start", 0))  # spec.ordinals.start, 1.31+
    for ordinal in range(first, first + replicas):
        other = f"{name}-{ordinal}"
        if other == meta["name"]:
            continue
        found = sibling(other)
        if found is None:
            return f"replica {other} is missing"
        if objects.deleting(found):
            return f"replica {other} is being replaced"
        if not objects.ready(found):
            return f"replica {other} is not Ready"
        if (
            started is not None
            and started[0] == objects.uid(found)
            and started[0] != meta["uid"]
            and time.monotonic() - started[1] < STARTED_SECONDS
            and (objects.labels(found).get("controller-revision-hash"))
            != (sts.get("status") or {}).get("updateRevision")
        ):
            return f"replica {other} is being updated"
    return ""


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


def in_place_change(pod_spec: Raw, template: Raw, claim_templates: set[str]) -> InPlace | str:
    """How to take ``template``'s change in place, or, when anything but images and cpu/memory
    differs, what does (a field path, for the recreate's reason): every field of the pod spec
    and of each container is compared.

    The StatefulSet controller adds a volume per claim template (``claim_templates``) to its
    pods, and admission a token volume, default tolerations, the service account ``default``
    and the fields of ``_WRITTEN_AT_CREATION``: none of these is a difference.
    """
    have, want = pod_spec.get("containers") or [], template.get("containers") or []
    if len(have) != len(want):
        return "spec.containers"
    inits = [_as_admitted(c) for c in pod_spec.get("initContainers") or []]
    if inits != [_as_admitted(c) for c in template.get("initContainers") or []]:
        return "spec.initContainers"
    volumes = [v for v in _own(pod_spec.get("volumes")) if v.get("name") not in claim_templates]
    if volumes != _own(template.get("volumes")):
        return "spec.volumes"
    fields, wanted = _pod_fields(pod_spec), _pod_fields(template)
    for key in sorted(fields.keys() | wanted.keys()):
        if fields.get(key) != wanted.get(key):
            return f"spec.{key}"
    if _account(pod_spec) != _account(template):
        return "spec.serviceAccountName"
    if _tolerations(pod_spec) != _tolerations(template):
        return "spec.tolerations"
    change = InPlace({}, {})
    for i, (a, b) in enumerate(zip(have, want, strict=True)):
        a, b = _as_admitted(a), _as_admitted(b)
        for key in sorted((a.keys() | b.keys()) - {"image", "resources"}):
            if a.get(key) != b.get(key):
                return f"spec.containers[{i}].{key}"
        if a.get("image") != b.get("image"):
            change.images[i] = str(b.get("image"))
        if a.get("resources") != b.get("resources"):
            if _without_cpu_memory(a.get("resources")) != _without_cpu_memory(b.get("resources")):
                return f"spec.containers[{i}].resources (beyond cpu/memory)"
            change.resources[str(b["name"])] = b.get("resources") or {}
    if not change.images and not change.resources:
        return "the pod template's metadata"  # the spec is the same: labels or annotations
    return change


def _pod_fields(spec: Raw) -> dict[str, Any]:
    """The pod-level fields a template decides, unset ones left out, with the defaults the
    apiserver gives pods but not templates filled in."""
    return {
        k: v
        for k, v in {**_POD_DEFAULTS, **spec}.items()
        if k not in _WRITTEN_AT_CREATION and v not in (None, {}, [])
    }


def _account(spec: Raw) -> str:
    """The service account: ``default`` when the template names none (admission sets it)."""
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def _tolerations(spec: Raw) -> list[Any]:
    """The tolerations without the defaults admission adds (unless the template set them)."""
    return [
        t
        for t in spec.get("tolerations") or []
        if not (t.get("key") in _DEFAULT_TOLERATIONS and t.get("tolerationSeconds") == 300)
    ]


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
