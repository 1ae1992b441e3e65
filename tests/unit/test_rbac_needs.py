"""Every RBAC rule Fulcrum grants is needed by a code path, and every code path has its rule.

``NEEDS`` maps each (ServiceAccount, apiGroup, resource, verb) the chart grants through its own
Roles and ClusterRoles to the code that makes the call: a file and a fragment of it, which must
still be there. A rule added to the chart without a row here fails, and so does a row whose code
is gone: the answer is to remove the rule, not to add a row. The built-in roles kube-scheduler is
bound to (system:kube-scheduler, system:volume-scheduler, extension-apiserver-authentication-
reader) are upstream's, as "Configure Multiple Schedulers" prescribes, and not listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.harness import chart
from fulcrum.harness.binaries import HELM, cache_dir

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
UPSTREAM = {"system:kube-scheduler", "system:volume-scheduler"}
UPSTREAM_ROLES = {"extension-apiserver-authentication-reader"}
# kube-scheduler's own leader election (client-go's LeaseLock), not Fulcrum's code
KUBE_SCHEDULER = ("charts/fulcrum/templates/configmap.yaml", "resourceLock: leases")
INFORMER_WATCH = ("kube/informer.py", "def _watch(")
LEADER = ("fulcrum/run/rebuild_serve.py", "LeaseLock(lease_name, lease_namespace")
NODE_SERVE = "fulcrum/run/node_serve.py"

Need = tuple[str, str, str, str]  # account, apiGroup, resource, verb
NEEDS: dict[Need, tuple[str, str]] = {
    # --- the extender (fulcrum serve) ---------------------------------------------------------
    ("fulcrum-extender", "", "nodes", "list"): ("fulcrum/run/serve.py", "api.list_node"),
    ("fulcrum-extender", "", "nodes", "watch"): INFORMER_WATCH,
    ("fulcrum-extender", "", "pods", "list"): (
        "fulcrum/run/serve.py",
        "api.list_pod_for_all_namespaces",
    ),
    ("fulcrum-extender", "", "pods", "watch"): INFORMER_WATCH,
    ("fulcrum-extender", "", "pods", "get"): (
        "extender/apiserver.py",
        '_call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")',
    ),
    ("fulcrum-extender", "", "pods/binding", "create"): (
        "extender/apiserver.py",
        'path = f"/api/v1/namespaces/{namespace}/pods/{name}/binding"',
    ),
    ("fulcrum-extender", "", "pods/status", "patch"): (
        "extender/apiserver.py",
        'path = f"/api/v1/namespaces/{namespace}/pods/{name}/status"',
    ),
    ("fulcrum-extender", "", "events", "create"): (
        "extender/apiserver.py",
        '_call("POST", f"/api/v1/namespaces/{namespace}/events", body)',
    ),
    ("fulcrum-extender", "fulcrum.io", "reservations", "list"): (
        "fulcrum/run/serve.py",
        "custom.list_cluster_custom_object, GROUP, VERSION, RESERVATIONS",
    ),
    ("fulcrum-extender", "fulcrum.io", "reservations", "watch"): INFORMER_WATCH,
    ("fulcrum-extender", "fulcrum.io", "ippools", "get"): (
        "extender/apiserver.py",
        'status, current = await self._call("GET", path)',
    ),
    ("fulcrum-extender", "fulcrum.io", "ippools", "update"): (
        "extender/apiserver.py",
        'status, written = await self._call("PUT", path, changed)',
    ),
    # no pod is trapped: with no rebuild controller renewing its Lease, the extender lets go
    ("fulcrum-extender", "", "pods", "patch"): ("rebuild/release.py", "self.writes.release(pod"),
    ("fulcrum-extender", "coordination.k8s.io", "leases", "get"): (
        "rebuild/writes.py",
        "self.coordination.read_namespaced_lease(",
    ),
    # --- the webhook (fulcrum webhook) ----------------------------------------------------------
    ("fulcrum-webhook", "fulcrum.io", "ippools", "list"): (
        "fulcrum/run/webhook_serve.py",
        "custom.list_cluster_custom_object(",
    ),
    # with webhook.certificate.source: generate (not deploy/'s source), it renews its certificate
    ("fulcrum-webhook", "", "secrets", "get"): (
        "fulcrum/run/webhook_certs.py",
        "self.core.read_namespaced_secret(",
    ),
    ("fulcrum-webhook", "", "secrets", "update"): (
        "fulcrum/run/webhook_certs.py",
        "self.core.replace_namespaced_secret(",
    ),
    ("fulcrum-webhook", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "get"): (
        "fulcrum/run/webhook_certs.py",
        "self.admission.read_mutating_webhook_configuration",
    ),
    (
        "fulcrum-webhook",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
    ): ("fulcrum/run/webhook_certs.py", "self.admission.patch_mutating_webhook_configuration"),
    (
        "fulcrum-webhook",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "get",
    ): ("fulcrum/run/webhook_certs.py", "self.admission.read_validating_webhook_configuration"),
    (
        "fulcrum-webhook",
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "patch",
    ): ("fulcrum/run/webhook_certs.py", "self.admission.patch_validating_webhook_configuration"),
    # --- kube-scheduler's own Lease (fulcrum-scheduler) ----------------------------------------
    ("fulcrum-scheduler", "coordination.k8s.io", "leases", "create"): KUBE_SCHEDULER,
    ("fulcrum-scheduler", "coordination.k8s.io", "leases", "get"): KUBE_SCHEDULER,
    ("fulcrum-scheduler", "coordination.k8s.io", "leases", "list"): KUBE_SCHEDULER,
    ("fulcrum-scheduler", "coordination.k8s.io", "leases", "watch"): KUBE_SCHEDULER,
    ("fulcrum-scheduler", "coordination.k8s.io", "leases", "update"): KUBE_SCHEDULER,
    # --- the rebuild controller (fulcrum rebuild) ----------------------------------------------
    ("fulcrum-rebuild", "", "pods", "list"): (
        "rebuild/writes.py",
        '"pods": self.core.list_pod_for_all_namespaces',
    ),
    ("fulcrum-rebuild", "", "pods", "watch"): INFORMER_WATCH,
    ("fulcrum-rebuild", "", "pods", "get"): ("rebuild/writes.py", "self.core.read_namespaced_pod("),
    ("fulcrum-rebuild", "", "pods", "patch"): ("rebuild/writes.py", "patch_namespaced_pod(meta"),
    ("fulcrum-rebuild", "", "pods/eviction", "create"): (
        "rebuild/writes.py",
        "create_namespaced_pod_eviction(",
    ),
    ("fulcrum-rebuild", "", "pods/resize", "patch"): (
        "rebuild/writes.py",
        "patch_namespaced_pod_resize(",
    ),
    ("fulcrum-rebuild", "", "events", "create"): ("rebuild/writes.py", "create_namespaced_event("),
    ("fulcrum-rebuild", "", "nodes", "get"): ("rebuild/writes.py", "self.core.read_node(node)"),
    ("fulcrum-rebuild", "", "nodes", "list"): (
        "rebuild/writes.py",
        "self.core.list_node(label_selector=",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "list"): (
        "rebuild/writes.py",
        '"reservations": functools.partial(custom, api.RESERVATIONS)',
    ),
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "watch"): INFORMER_WATCH,
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "get"): (
        "rebuild/controller.py",
        "self.writes.read_custom(api.RESERVATIONS",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "create"): (
        "rebuild/writes.py",
        "create_namespaced_custom_object(",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "update"): (
        "rebuild/controller.py",
        "self.writes.update_custom(api.RESERVATIONS",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "reservations", "delete"): (
        "rebuild/writes.py",
        "delete_namespaced_custom_object(",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "ippools", "list"): (
        "rebuild/writes.py",
        '"ippools": functools.partial(custom, api.IPPOOLS)',
    ),
    ("fulcrum-rebuild", "fulcrum.io", "ippools", "watch"): INFORMER_WATCH,
    ("fulcrum-rebuild", "fulcrum.io", "ippools", "get"): (
        "rebuild/writes.py",
        "lambda: self.custom.get_namespaced_custom_object(*where)",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "ippools", "update"): (
        "rebuild/writes.py",
        "self.update_custom(api.IPPOOLS",
    ),
    ("fulcrum-rebuild", "fulcrum.io", "ippools", "patch"): (
        "rebuild/writes.py",
        "patch_namespaced_custom_object(",
    ),
    ("fulcrum-rebuild", "apps", "statefulsets", "list"): (
        "rebuild/writes.py",
        "list_stateful_set_for_all_namespaces",
    ),
    ("fulcrum-rebuild", "apps", "statefulsets", "watch"): INFORMER_WATCH,
    ("fulcrum-rebuild", "apps", "deployments", "list"): (
        "rebuild/writes.py",
        "list_deployment_for_all_namespaces",
    ),
    ("fulcrum-rebuild", "apps", "deployments", "watch"): INFORMER_WATCH,
    ("fulcrum-rebuild", "apps", "deployments", "patch"): (
        "rebuild/writes.py",
        "self.apps.patch_namespaced_deployment(",
    ),
    ("fulcrum-rebuild", "coordination.k8s.io", "leases", "create"): LEADER,
    ("fulcrum-rebuild", "coordination.k8s.io", "leases", "get"): LEADER,
    ("fulcrum-rebuild", "coordination.k8s.io", "leases", "update"): LEADER,
    # --- the node agent (fulcrum node; the chart's node.enabled) ------------------------------
    ("fulcrum-node", "", "pods", "list"): (NODE_SERVE, "core.list_pod_for_all_namespaces"),
    ("fulcrum-node", "", "pods", "watch"): INFORMER_WATCH,
    ("fulcrum-node", "", "pods", "patch"): (NODE_SERVE, "self.core.patch_namespaced_pod("),
    ("fulcrum-node", "", "nodes", "get"): (NODE_SERVE, "core.read_node(node)"),
    ("fulcrum-node", "", "nodes", "patch"): (NODE_SERVE, "core.patch_node(node,"),
    # the FulcrumNodeChecks condition (node/check_report.py's strategic merge patch)
    ("fulcrum-node", "", "nodes/status", "patch"): (NODE_SERVE, "ctx.core.patch_node_status("),
    ("fulcrum-node", "", "events", "create"): (NODE_SERVE, "core.create_namespaced_event("),
}


# Rules only the chart's default webhook.certificate.source, generate, grants: deploy/ renders
# with source: secret (its certificate is the user's), so they are checked on a rendering.
GENERATE_ONLY = {need for need in NEEDS if need[0] == "fulcrum-webhook" and need[2] != "ippools"}
# The node agent's, granted only with node.enabled (off in deploy/): checked on a rendering.
NODE_ONLY = {need for need in NEEDS if need[0] == "fulcrum-node"}


def _docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return out


def _rendered(*sets: str) -> list[dict[str, Any]]:
    supplied = os.environ.get("FULCRUM_BIN_DIR")
    for helm in ([Path(supplied) / "helm"] if supplied else []) + [
        cache_dir() / "bin" / HELM.cache_key() / "helm"
    ]:
        if helm.is_file():
            break
    else:
        if not os.environ.get("CI"):
            pytest.skip(f"helm {HELM.version()} not built: run `fulcrum build` (make setup)")
        helm = chart.helm()
    text = chart.template(helm, set_values=sets)
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def granted(docs: list[dict[str, Any]] | None = None) -> set[Need]:
    """(account, apiGroup, resource, verb) of every rule of Fulcrum's own roles, by binding."""
    docs = _docs() if docs is None else docs
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    out: set[Need] = set()
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        ref = binding["roleRef"]
        if ref["name"] in UPSTREAM | UPSTREAM_ROLES:
            continue
        role = roles[(ref["kind"], ref["name"])]
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", binding["metadata"]["name"]
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((subject["name"], group, resource, verb))
    return out


def test_every_granted_rule_is_needed_and_every_need_granted() -> None:
    rules = granted()
    unneeded = sorted(rules - NEEDS.keys())
    assert not unneeded, f"rules no code path needs (remove them, or name the code): {unneeded}"
    missing = sorted(NEEDS.keys() - GENERATE_ONLY - NODE_ONLY - rules)
    assert not missing, f"code paths without their rule: {missing}"


def test_a_generated_certificate_adds_exactly_the_rules_of_its_renewal() -> None:
    generate = granted(_rendered("namespace.create=true", "webhook.certificate.source=generate"))
    assert generate - granted() == GENERATE_ONLY, "rules of source: generate without a NEEDS row"


def test_the_node_agent_adds_exactly_its_rules() -> None:
    node = granted(
        _rendered("namespace.create=true", "webhook.certificate.source=secret", "node.enabled=true")
    )
    assert node - granted() == NODE_ONLY, "rules of node.enabled without a NEEDS row"


@pytest.mark.parametrize(("need", "code"), sorted(NEEDS.items()), ids=lambda v: "/".join(v))
def test_the_code_path_of_each_rule_is_still_there(need: Need, code: tuple[str, str]) -> None:
    path, fragment = code
    assert fragment in (ROOT / path).read_text(), (
        f"{need}: {path} no longer contains {fragment!r}: if the call is gone, remove the rule"
    )
