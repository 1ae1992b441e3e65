"""The one rule for which pods local rebuild takes: the controller and the extender both ask it;
and the one rule for which pods only Fulcrum's bind can bind: the webhook and the extender.

The controller refuses a pod (an Event, ``fulcrum.io/rebuild-status``, no finalizer) exactly
when ``refusal`` says why; the extender expects a Reservation for a deleted pod exactly when
``reserved_on_delete`` is true. One function, so the two can never disagree about a pod.

About hooks, the controller is the one authority (``kube.hooks``): it passes the hooks it
runs, and refuses a pod naming one it lacks; the extender and the webhook pass none and check
only the names' spelling, so a pod the controller takes is never refused, nor its room left
unheld, because they run without the hook's package. A pod naming a hook the controller lacks
is refused by the controller (so it holds no room), which the extender learns from the pod's
status (``refused_by_controller``).
"""

from __future__ import annotations

from collections.abc import Mapping

from kube import api, objects
from kube.hooks import HookRegistry, hooks_for, named_hooks
from kube.objects import Raw
from scheduler.pod import PodRequest


def refusal(pod: Raw, options: api.RebuildOptions, hooks: HookRegistry | None = None) -> str:
    """Why this pod's ``fulcrum.io/*`` annotations cannot be honoured, or "".

    ``options`` is ``api.read_options`` of the pod's annotations; ``hooks`` the rebuild hooks
    the controller runs (a name in ``fulcrum.io/rebuild-hooks`` it lacks is a refusal), or None
    where hooks are not run (the webhook, the extender): a badly spelt name is still refused.
    """
    if options.errors:
        return "; ".join(str(e) for e in options.errors)
    try:
        if hooks is None:
            named_hooks(objects.annotations(pod))
        else:
            hooks_for(objects.annotations(pod), hooks)
    except ValueError as exc:
        return str(exc)
    if not options.enabled:
        return ""
    loss = data_loss(pod, options)
    if loss:
        return loss
    if api.successor_key(pod) is None:
        owners = [r.get("kind") for r in objects.meta(pod).get("ownerReferences") or ()]
        return (
            f"pods owned by {', '.join(map(str, owners))} cannot be rebuilt locally; "
            "supported: bare pods, Deployments, ReplicaSets and StatefulSets"
        )
    return ""


def data_loss(pod: Raw, options: api.RebuildOptions) -> str:
    """Why a rebuild would lose this pod's (or pod template's) data, unless accepted; or ""."""
    lossy = api.data_loss_volumes(pod)
    if not lossy or options.accept_data_loss:
        return ""
    return (
        f"volume(s) {', '.join(lossy)} are emptyDir or ephemeral: their data would not "
        f'survive a rebuild; annotate {api.ACCEPT_DATA_LOSS}: "true" to accept that'
    )


def reserved_on_delete(
    pod: Raw, options: api.RebuildOptions, hooks: HookRegistry | None = None
) -> bool:
    """Whether the controller holds this pod's node for its successor when the pod goes.

    Opted in, not refused, and ``delete-first`` (a ``create-first`` successor starts beside
    its predecessor, so nothing is held). ``hooks``: as for ``refusal``.
    """
    return options.enabled and options.order == "delete-first" and not refusal(pod, options, hooks)


def refused_by_controller(pod: Raw) -> bool:
    """Whether the controller's last word on this pod (``fulcrum.io/rebuild-status``) is a
    refusal: then it holds nothing for it, whatever another process makes of its annotations
    (the controller runs the hooks, and may lack one a pod names)."""
    return api.rebuild_status(objects.annotations(pod)).get("action") == "refused"


def bind_reason(annotations: Mapping[str, str], request: PodRequest) -> str:
    """Why only Fulcrum's bind can bind this pod, or "" (kube-scheduler's own bind will do).

    Fulcrum's bind writes on the binding what the pod needs from its node: the GPU devices it
    chose, an address of the pod's IP pool, a local-rebuild successor's claim on its
    predecessor's hold. The admission webhook marks such pods with the extended resource
    ``fulcrum.io/bind`` (``kube.resources.BIND``), which is how kube-scheduler tells which pods
    to send to Fulcrum's bind; it binds every other pod itself, in Go.
    """
    if request.gpu_count:
        return "it uses GPUs (Fulcrum chooses the devices at bind)"
    if api.IP_POOL in annotations:
        return f"it takes an address from an IP pool ({api.IP_POOL})"
    if api.REBUILD in annotations:
        return f"it is opted in to local rebuild ({api.REBUILD})"
    return ""
