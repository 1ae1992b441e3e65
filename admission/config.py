"""The webhook configurations that make the API server call Fulcrum's admission, and only when
it concerns Fulcrum.

Two selections keep every other object away from Fulcrum (the API server evaluates them itself,
so an unrelated request costs Fulcrum nothing and is never blocked by it):

- ``matchConditions`` (CEL): only objects with a ``fulcrum.io/`` annotation (on the pod, or on
  a workload or its pod template), and fulcrum-scheduler pods with GPUs in their limits (to
  mark them for Fulcrum's bind, ``admission.review.bind_mark``);
- a ``namespaceSelector``: pods of a namespace labelled ``fulcrum.io/scheduling: enabled``,
  only when they name no scheduler or ``default-scheduler``.

``failurePolicy``, per webhook:

- holding an opted-in Deployment's image change for its pre-pull (mutating) is ``Ignore``:
  while Fulcrum is down a rollout goes on at once, only without its pre-pull;
- routing pods (mutating) is ``Fail``: while Fulcrum's webhook is down an opted-in pod is not
  created (the API server answers with the webhook's name, and a workload's controller retries),
  rather than slipping through to default-scheduler, where it would lose its node on the next
  rollout without a word;
- an IPPool whose addresses another namespace's pool has is refused, ``Fail`` (one address in
  two pools could go to two pods);
- validation of annotations is ``Ignore``: it is a convenience at ``kubectl apply``; the
  rebuild controller refuses the same bad values with an Event and a status, so nothing is
  lost while it is down, and no workload update waits for Fulcrum. It is also where the
  annotations only Fulcrum writes are refused from anyone else (on pods, CREATE and UPDATE);
  while it is down, every reader of those still checks them (``kube.api.written_problems``),
  so a forged one is reported and skipped, never followed.

A plain pod (no ``fulcrum.io/`` annotation, in an unlabelled namespace) never reaches Fulcrum.

No webhook sees ``kube-system`` or the namespace Fulcrum's webhook runs in (the Service's), by
every webhook's ``namespaceSelector`` on ``kubernetes.io/metadata.name``: the control plane's
own pods never wait for Fulcrum, and Fulcrum's own pods are created while its webhook is down,
even if someone labels or annotates them (otherwise the webhook's replacement pods would need
the webhook that is down: a deadlock).
"""

from __future__ import annotations

from typing import Any

from admission.review import DEFAULT_SCHEDULER, NAMESPACE_LABEL, PREFIX
from kube.api import GROUP, IPPOOLS, REBUILD, SCHEDULER_NAME, VERSION
from kube.resources import GPU

NAME = "fulcrum.io"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
ALWAYS_EXEMPT = ("kube-system",)
TIMEOUT_SECONDS = 5
_ANNOTATED = (
    "has({o}.metadata.annotations) && {o}.metadata.annotations.exists(k, k.startsWith('{p}'))"
)
_POD_ANNOTATED = _ANNOTATED.format(o="object", p=PREFIX)
_TEMPLATE_ANNOTATED = _ANNOTATED.format(o="object.spec.template", p=PREFIX)
_WORKLOAD_ANNOTATED = (
    f"({_POD_ANNOTATED}) || (has(object.spec.template.metadata) && ({_TEMPLATE_ANNOTATED}))"
)
_NOT_OWNED_BY_DEPLOYMENT = (
    "!has(object.metadata.ownerReferences) || "
    "!object.metadata.ownerReferences.exists(r, r.kind == 'Deployment')"
)
_GPU_LIMIT = "has({c}.resources) && has({c}.resources.limits) && '{gpu}' in {c}.resources.limits"
_FULCRUM_GPU_POD = (
    f"has(object.spec.schedulerName) && object.spec.schedulerName == '{SCHEDULER_NAME}' && ("
    f"object.spec.containers.exists(c, {_GPU_LIMIT.format(c='c', gpu=GPU)}) || "
    f"(has(object.spec.initContainers) && "
    f"object.spec.initContainers.exists(c, {_GPU_LIMIT.format(c='c', gpu=GPU)})))"
)
_TEMPLATE_OPTED_IN = (
    "has(object.spec.template.metadata) && has(object.spec.template.metadata.annotations) && "
    f"'{REBUILD}' in object.spec.template.metadata.annotations && "
    f"object.spec.template.metadata.annotations['{REBUILD}'] == 'local'"
)
# a container without an image is an error here, which (failurePolicy Ignore) skips the
# webhook: the apiserver refuses such a Deployment anyway
_IMAGES = "{o}.spec.template.spec.containers.map(c, c.image)"
_INIT_IMAGES = (
    "(has({o}.spec.template.spec.initContainers) ? "
    "{o}.spec.template.spec.initContainers.map(c, c.image) : [])"
)
_IMAGES_CHANGE = (
    f"{_IMAGES.format(o='object')} != {_IMAGES.format(o='oldObject')} || "
    f"{_INIT_IMAGES.format(o='object')} != {_INIT_IMAGES.format(o='oldObject')}"
)
_SPEC_CHANGES = "request.operation == 'CREATE' || object.spec != oldObject.spec"
_NO_SCHEDULER = (
    f"!has(object.spec.schedulerName) || object.spec.schedulerName == '{DEFAULT_SCHEDULER}'"
)


def _webhook(
    name: str,
    client_config: dict[str, Any],
    path: str,
    rules: list[dict[str, Any]],
    conditions: dict[str, str],
    failure: str,
) -> dict[str, Any]:
    config = dict(client_config)
    if "url" in config:
        config["url"] = config["url"].rstrip("/") + path
    else:
        config["service"] = {**config["service"], "path": path}
    return {
        "name": name,
        "clientConfig": config,
        "rules": rules,
        "matchConditions": [{"name": k, "expression": v} for k, v in conditions.items()],
        "failurePolicy": failure,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": TIMEOUT_SECONDS,
    }


def _rule(
    group: str, resources: list[str], operations: list[str], version: str = "v1"
) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": [version],
        "resources": resources,
        "operations": operations,
        "scope": "Namespaced",
    }


def webhook_configurations(
    client_config: dict[str, Any], *, prepull_hold: bool = True
) -> list[dict[str, Any]]:
    """The MutatingWebhookConfiguration and ValidatingWebhookConfiguration for Fulcrum.

    ``client_config``: ``{"url": "https://host:port", "caBundle": ...}`` (a local cluster) or
    ``{"service": {"namespace": ..., "name": ..., "port": ...}, "caBundle": ...}``.
    ``prepull_hold``: register ``deployments.prepull.fulcrum.io``, which pauses an opted-in
    Deployment's image change until the rebuild controller has pre-pulled it.
    """

    def pods() -> list[dict[str, Any]]:
        return [_rule("", ["pods"], ["CREATE"])]

    mutating = [
        _webhook(
            "pods.route.fulcrum.io",
            client_config,
            "/mutate",
            pods(),
            {"uses-fulcrum": f"({_POD_ANNOTATED}) || ({_FULCRUM_GPU_POD})"},
            "Fail",
        ),
        {
            **_webhook(
                "namespace-pods.route.fulcrum.io",
                client_config,
                "/mutate",
                pods(),
                {"no-scheduler-named": _NO_SCHEDULER},
                "Fail",
            ),
            "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "enabled"}},
        },
    ]
    if prepull_hold:
        # an opted-in Deployment's image change arrives paused, for the pre-pull
        # (admission.prepull); Ignore: while Fulcrum is down the rollout goes on without it
        mutating.append(
            _webhook(
                "deployments.prepull.fulcrum.io",
                client_config,
                "/mutate",
                [_rule("apps", ["deployments"], ["UPDATE"])],
                {"opted-in": _TEMPLATE_OPTED_IN, "images-change": _IMAGES_CHANGE},
                "Ignore",
            )
        )
    workloads = _rule("apps", ["deployments", "statefulsets", "replicasets"], ["CREATE", "UPDATE"])
    validating = [
        _webhook(
            "pods.validate.fulcrum.io",
            client_config,
            "/validate",
            # UPDATE too: the annotations only Fulcrum writes may not be added later. "pods"
            # matches no subresource, so status updates (pods/status) and binds (pods/binding,
            # which carry the extender's annotations) never come here
            [_rule("", ["pods"], ["CREATE", "UPDATE"])],
            {"uses-fulcrum": _POD_ANNOTATED},
            "Ignore",
        ),
        _webhook(
            "workloads.validate.fulcrum.io",
            client_config,
            "/validate",
            [workloads],
            {"uses-fulcrum": _WORKLOAD_ANNOTATED, "not-a-deployments": _NOT_OWNED_BY_DEPLOYMENT},
            "Ignore",
        ),
        # an IPPool whose addresses another namespace's pool has (admission.ippools): Fail, as
        # routing, since one address in two pools could go to two pods; only when its addresses
        # may change (not the allocations the extender and the controller write)
        _webhook(
            "ippools.validate.fulcrum.io",
            client_config,
            "/validate",
            [_rule(GROUP, [IPPOOLS], ["CREATE", "UPDATE"], VERSION)],
            {"addresses-may-change": _SPEC_CHANGES},
            "Fail",
        ),
    ]
    exempt = exempt_namespaces(client_config)
    return [
        _configuration(
            "MutatingWebhookConfiguration",
            [{**w, "reinvocationPolicy": "Never"} for w in mutating],
            exempt,
        ),
        _configuration("ValidatingWebhookConfiguration", validating, exempt),
    ]


def exempt_namespaces(client_config: dict[str, Any]) -> list[str]:
    """The namespaces no webhook sees: ``kube-system`` and the webhook Service's, if any."""
    own = client_config.get("service", {}).get("namespace")
    return [*ALWAYS_EXEMPT, *([own] if own and own not in ALWAYS_EXEMPT else [])]


def _exempt(webhook: dict[str, Any], namespaces: list[str]) -> dict[str, Any]:
    selector = dict(webhook.get("namespaceSelector", {}))
    rule = {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": namespaces}
    selector["matchExpressions"] = [*selector.get("matchExpressions", []), rule]
    return {**webhook, "namespaceSelector": selector}


def _configuration(kind: str, webhooks: list[dict[str, Any]], exempt: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": NAME},
        "webhooks": [_exempt(w, exempt) for w in webhooks],
    }
