"""Admission decisions (``admission.k8s.io/v1``) as pure functions of an AdmissionRequest.

- ``mutate``: a pod that uses Fulcrum (any ``fulcrum.io/*`` annotation, or created in a
  namespace labelled ``fulcrum.io/scheduling: enabled``) and names no scheduler, or
  ``default-scheduler``, is sent to ``fulcrum-scheduler``: the annotation is the whole opt-in.
  A pod naming another scheduler is left alone, with a warning. A fulcrum-scheduler pod that
  only Fulcrum's bind can bind (GPUs, an IP pool, local rebuild: ``eligibility.bind_reason``)
  gets the extended resource ``fulcrum.io/bind``, so kube-scheduler sends it to Fulcrum's bind
  and binds every other pod itself. A pod the rebuild controller will hold a room for when it
  goes (``eligibility.reserved_on_delete``) gets the finalizer ``fulcrum.io/rebuild`` at birth,
  which the controller would otherwise add with a write of its own once the pod exists.
  An opted-in Deployment's image change arrives paused, for the rebuild controller's
  pre-pull (``admission.prepull``).
- ``validate``: the ``fulcrum.io/*`` annotations of a pod, or of the pod template of a
  Deployment, StatefulSet or ReplicaSet, read by the parsers the controller and the extender
  use (``kube.api.read_options``, ``kube.api.written_problems``, ``kube.hooks``,
  ``kube.resources``): a bad value is denied with the field and the allowed values. Rebuild
  hooks are the controller's to know (``kube.hooks``): a well-spelt name is allowed, with a
  warning when it is not built in, and the controller refuses one it lacks. Warnings for
  what is legal but will not do what the user wants (a surge rollout of an opted-in Deployment,
  the opt-in on the workload's own metadata).

  The annotations only Fulcrum writes (``kube.api.WRITTEN_BY_FULCRUM``: the extender's at bind,
  which ride on ``pods/binding`` and never pass here, and the controller's status) are refused
  from anyone but the trusted users (Fulcrum's own service accounts, ``fulcrum webhook
  --trusted-user``), on CREATE and on an UPDATE that adds or changes one. An UPDATE judges only
  the annotations it changes, so a pod that is already bad (made while the webhook was down)
  can still be updated, its finalizer removed; a trusted user's UPDATE is never refused.

Which requests reach these at all is decided by the webhook configurations
(``admission.config``): the API server calls Fulcrum only for objects that carry a
``fulcrum.io/`` annotation, or pods of a labelled namespace.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from admission import prepull
from admission.ippools import PoolLister, ippool_refusal
from kube import api, eligibility
from kube.hooks import ANNOTATION, BUILTIN, INSTALL_HINT, named_hooks
from kube.resources import BIND, assigned_devices, marked_for_bind, pod_request

PREFIX = "fulcrum.io/"
NAMESPACE_LABEL = "fulcrum.io/scheduling"  # value "enabled": every new pod there goes to Fulcrum
DEFAULT_SCHEDULER = "default-scheduler"
WORKLOADS = ("Deployment", "StatefulSet", "ReplicaSet")
Obj = Mapping[str, Any]


@dataclass
class Decision:
    """An AdmissionResponse's substance: allowed or the reason why not, a JSON patch, warnings."""

    allowed: bool = True
    message: str = ""
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _annotations(meta: Mapping[str, Any]) -> dict[str, str]:
    raw = meta.get("annotations")
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def _fulcrum(annotations: Mapping[str, str]) -> list[str]:
    return sorted(k for k in annotations if k.startswith(PREFIX))


def mutate(request: Obj, *, scheduler_name: str = api.SCHEDULER_NAME) -> Decision:
    """Route a pod to fulcrum-scheduler, mark it for Fulcrum's bind if it needs it, guard it for
    local rebuild (see the module docstring). ``scheduler_name``: the kube-scheduler profile
    that calls this release's extender (the chart's ``schedulerName``)."""
    if (request.get("kind") or {}).get("kind") == "Deployment":
        return Decision(patch=prepull.hold(request))
    pod = request.get("object")
    if request.get("operation") != "CREATE" or not isinstance(pod, Mapping):
        return Decision()
    spec = pod.get("spec")
    scheduler = (spec.get("schedulerName") if isinstance(spec, Mapping) else None) or ""
    decision = Decision()
    if scheduler in ("", DEFAULT_SCHEDULER):
        path = "/spec/schedulerName"
        decision.patch.append({"op": "add", "path": path, "value": scheduler_name})
    elif scheduler != scheduler_name:
        uses = ", ".join(_fulcrum(_annotations(_meta(pod)))) or f"namespace label {NAMESPACE_LABEL}"
        return Decision(
            warnings=[
                f"spec.schedulerName is {scheduler!r}: Fulcrum ({uses}) neither places this pod "
                f"nor keeps its node on rebuild; use {scheduler_name} or remove the field"
            ]
        )
    decision.patch += bind_mark(pod) + guard(pod)
    return decision


def guard(pod: Obj) -> list[dict[str, Any]]:
    """A JSON patch adding the finalizer ``fulcrum.io/rebuild`` if the controller will hold this
    pod's room when it goes and nothing put the finalizer there yet; else none."""
    meta = _meta(pod)
    options = api.read_options(_annotations(meta))
    finalizers = meta.get("finalizers")
    if not eligibility.reserved_on_delete(pod, options):
        return []
    if not isinstance(finalizers, list) or not finalizers:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [api.FINALIZER]}]
    if api.FINALIZER in finalizers:
        return []
    return [{"op": "add", "path": "/metadata/finalizers/-", "value": api.FINALIZER}]


def bind_mark(pod: Obj) -> list[dict[str, Any]]:
    """A JSON patch giving the pod's first container ``fulcrum.io/bind: 1`` (requests and
    limits) if only Fulcrum's bind can bind it (``eligibility.bind_reason``) and nothing marks
    it yet; else none. A pod whose request cannot be read is left to the validating webhook."""
    try:
        reason = eligibility.bind_reason(_annotations(_meta(pod)), pod_request(pod))
    except ValueError:
        return []
    containers = (pod.get("spec") or {}).get("containers") or []
    if not reason or not containers or marked_for_bind(pod):
        return []
    path, resources = "/spec/containers/0/resources", containers[0].get("resources") or {}
    one = {BIND: "1"}
    if not resources:
        return [{"op": "add", "path": path, "value": {"requests": one, "limits": one}}]
    key = BIND.replace("~", "~0").replace("/", "~1")  # a JSON pointer token
    return [
        {"op": "add", "path": f"{path}/{part}/{key}", "value": "1"}
        if resources.get(part)
        else {"op": "add", "path": f"{path}/{part}", "value": one}
        for part in ("requests", "limits")
    ]


def annotation_problems(
    where: str,
    annotations: Mapping[str, str],
    options: api.RebuildOptions,
    spec: Any,
) -> list[str]:
    """Every bad ``fulcrum.io/*`` annotation of one pod (or pod template), each naming its
    field (``where``: the path of the pod's metadata) and what is allowed; ``options``: the
    annotations as ``api.read_options`` reads them."""
    written = api.written_problems(annotations)
    errors = [*options.errors, *written]
    problems = [f"{where}.annotations[{e.annotation}]: {e}" for e in errors]
    try:
        named_hooks(annotations)
    except ValueError as exc:
        problems.append(f"{where}.annotations[{ANNOTATION}]: {exc}")
    pod = {"metadata": {"annotations": annotations}, "spec": spec or {}}
    try:
        request = pod_request(pod)
        if not any(e.annotation == api.GPU_DEVICES for e in written):
            assigned_devices(pod, request)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
    return problems


def changed_annotations(request: Obj, template: bool = False) -> set[str] | None:
    """The ``fulcrum.io/`` annotations an UPDATE adds or changes (of the pod template with
    ``template``); None for a CREATE (everything is new)."""
    if request.get("operation") != "UPDATE":
        return None

    def of(obj: Any) -> dict[str, str]:
        if not isinstance(obj, Mapping):
            return {}
        if template:
            spec = obj.get("spec")
            obj = (spec.get("template") if isinstance(spec, Mapping) else None) or {}
        return _annotations(_meta(obj))

    old, new = of(request.get("oldObject")), of(request.get("object"))
    return {k for k in _fulcrum(new) if old.get(k) != new[k]}


def requester(request: Obj) -> str:
    """The user the API server says sent ``request`` (``userInfo.username``), "" if none."""
    user = request.get("userInfo")
    name = user.get("username") if isinstance(user, Mapping) else None
    return name if isinstance(name, str) else ""


def forged(where: str, keys: list[str], user: str) -> str:
    """The refusal of Fulcrum-written annotations set by someone else."""
    who = api.quoted(user) if user else "an unknown user"
    return (
        f"{where}.annotations: {', '.join(keys)} only Fulcrum writes (its extender at bind, its "
        f"rebuild controller), and {who} is not one of its service accounts: remove them"
    )


def _workload_warnings(
    kind: str, obj: Obj, template: Mapping[str, str], options: api.RebuildOptions
) -> list[str]:
    warnings = []
    own = [k for k in _fulcrum(_annotations(_meta(obj))) if k not in template]
    if own:
        warnings.append(
            f"{', '.join(own)} on the {kind}'s own metadata does nothing: Fulcrum reads its pods; "
            "move it to spec.template.metadata.annotations"
        )
    if kind == "Deployment" and options.enabled:
        strategy = (obj.get("spec") or {}).get("strategy") or {}
        surge = (strategy.get("rollingUpdate") or {}).get("maxSurge", "25%")
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and str(surge) not in (
            "0",
            "0%",
        ):
            warnings.append(
                f"maxSurge {surge}: surge pods start before old ones leave, so they cannot come "
                "back on their node; set spec.strategy.rollingUpdate.maxSurge: 0"
            )
    return warnings


def validate(
    request: Obj,
    *,
    trusted: frozenset[str] = frozenset(),
    pools: PoolLister | None = None,
) -> Decision:
    """Deny bad ``fulcrum.io/*`` annotations of a pod or a workload's pod template, the ones
    only Fulcrum writes unless the requester is one of ``trusted`` (usernames as the API server
    reports them: ``system:serviceaccount:<namespace>:<name>``), and an IPPool whose addresses
    another namespace's pool has (``pools``: the cluster's IPPools)."""
    obj = request.get("object")
    kind = str((request.get("kind") or {}).get("kind", ""))
    if not isinstance(obj, Mapping) or request.get("operation") not in ("CREATE", "UPDATE"):
        return Decision()
    if kind == "IPPool":
        refusal = ippool_refusal(obj, str(request.get("namespace") or ""), pools)
        return Decision(allowed=not refusal, message=refusal)
    if kind == "Pod":
        pod, where = obj, "metadata"
    elif kind in WORKLOADS:
        spec = obj.get("spec")
        template = spec.get("template") if isinstance(spec, Mapping) else None
        pod, where = template if isinstance(template, Mapping) else {}, "spec.template.metadata"
    else:
        return Decision()
    user = requester(request)
    changed = changed_annotations(request, template=kind != "Pod")
    if changed is not None and (user in trusted or not changed):
        return Decision()  # Fulcrum's own writes, or an update of nothing Fulcrum reads
    annotations = _annotations(_meta(pod))
    written = [k for k in api.WRITTEN_BY_FULCRUM if k in annotations]
    written = [k for k in written if changed is None or k in changed]
    if written and user not in trusted:
        return Decision(allowed=False, message=forged(where, written, user))
    options = api.read_options(annotations)
    problems = annotation_problems(where, annotations, options, pod.get("spec"))
    if changed is not None:  # judge only what this update changes
        problems = [p for p in problems if _names_any(p, changed)]
    warnings = _workload_warnings(kind, obj, annotations, options) if kind != "Pod" else []
    loss = eligibility.data_loss(pod, options) if options.enabled else ""
    if loss:
        warnings.append(f"the controller will refuse local rebuild: {loss}")
    if changed is None or ANNOTATION in changed:
        warnings += plugin_hook_warnings(where, annotations)
    if problems:
        return Decision(allowed=False, message="; ".join(problems), warnings=warnings)
    return Decision(warnings=warnings)


def plugin_hook_warnings(where: str, annotations: Mapping[str, str]) -> list[str]:
    """A warning for each hook the pod names that is not built in: the rebuild controller runs
    it only if its package is installed there, and refuses the pod otherwise."""
    try:
        names = named_hooks(annotations)
    except ValueError:
        return []  # a problem, reported as such
    builtin = {name.lower() for name in BUILTIN}
    return [
        f"{where}.annotations[{ANNOTATION}]: {name!r} is not a built-in rebuild "
        f"hook: the rebuild controller refuses this pod (an Event) unless it has it; if it does "
        f"not, {INSTALL_HINT}"
        for name in dict.fromkeys(names)
        if name.lower() not in builtin
    ]


def _names_any(problem: str, changed: set[str]) -> bool:
    """Whether a problem is about one of the ``changed`` annotations (a problem of the pod's
    request names its GPU annotations, or none, when a quantity is bad: such a pod was bad
    before this update)."""
    marks = ("[{}]", "annotation {}=", "annotation {}:")
    return any(mark.format(key) in problem for key in changed for mark in marks)


def response(request: Obj, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview to answer ``request`` with."""
    out: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": decision.allowed}
    if not decision.allowed:
        out["status"] = {"code": 422, "reason": "Invalid", "message": decision.message}
    if decision.patch:
        out["patchType"] = "JSONPatch"
        out["patch"] = base64.b64encode(orjson.dumps(decision.patch)).decode()
    if decision.warnings:
        out["warnings"] = decision.warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": out}
