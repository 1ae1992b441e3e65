"""The manifests under deploy/ are well formed, agree with the harness, and grant minimal RBAC.

No cluster: YAML is parsed here; where the built binaries are in the cache, kube-scheduler
v1.34.4 itself decodes (strictly) and validates the KubeSchedulerConfigurations, and
``kubectl kustomize`` renders the kustomization. tests/integration/test_deploy_dryrun.py sends the
manifests to a real kube-apiserver.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from admission.config import webhook_configurations
from extender.config import load_settings
from fulcrum.cli import build_parser
from fulcrum.harness.binaries import cache_dir
from fulcrum.harness.cluster import FULCRUM_SCHEDULER, ExtenderRegistration, scheduler_config
from fulcrum.harness.registration import SCHEDULER_GC
from fulcrum.run.rebuild_serve import LEASE_NAME as REBUILD_LEASE
from policies.registry import default_registry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAMESPACE = "fulcrum-system"
SERVICE_ACCOUNT = "fulcrum-scheduler"
CONFIG_DIR = "/etc/fulcrum"
EXAMPLE = "kube-scheduler-config.example.yaml"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REBUILD = "fulcrum-rebuild"  # the controller's Deployment, ServiceAccount and ClusterRole
REBUILD_SERVICE_ACCOUNT = REBUILD
GROUP = "fulcrum.io"

# kind -> apiVersion of every API object the manifests may contain
API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "Secret": "v1",  # only the extender's ServiceAccount token (rbac.yaml)
    "ConfigMap": "v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "PriorityClass": "scheduling.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "Service": "v1",
    "MutatingWebhookConfiguration": "admissionregistration.k8s.io/v1",
    "ValidatingWebhookConfiguration": "admissionregistration.k8s.io/v1",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
NOT_API_OBJECTS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "KubeSchedulerConfiguration": "kubescheduler.config.k8s.io/v1",
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$")  # RBAC names may contain ':'

# (apiGroups, resources, verbs) the extender needs, and nothing else
EXTENDER_RULES = {
    (("",), ("nodes",), ("list", "watch")),
    (("",), ("pods",), ("get", "list", "watch")),
    (("",), ("pods/binding",), ("create",)),
    (("",), ("pods/status",), ("patch",)),
    (("",), ("events",), ("create",)),
    ((GROUP,), ("reservations",), ("list", "watch")),
    ((GROUP,), ("ippools",), ("get", "update")),
    (("",), ("pods",), ("patch",)),  # the finalizers of a stopped controller (rebuild.release)
    (("coordination.k8s.io",), ("leases",), ("get",)),  # that controller's Lease, by name
}
EXTENDER_SERVICE_ACCOUNT = "fulcrum-extender"

# (apiGroups, resources, verbs) of the rebuild controller's ClusterRole
REBUILD_RULES = {
    (("",), ("pods",), ("get", "list", "watch", "patch")),
    (("",), ("pods/eviction",), ("create",)),
    (("",), ("pods/resize",), ("patch",)),
    (("",), ("events",), ("create",)),
    (("",), ("nodes",), ("get", "list")),
    ((GROUP,), ("reservations",), ("get", "list", "watch", "create", "update", "delete")),
    ((GROUP,), ("ippools",), ("get", "list", "watch", "update", "patch")),
    (("apps",), ("statefulsets",), ("list", "watch")),
    (("apps",), ("deployments",), ("list", "watch", "patch")),
}

# json tags of k8s.io/kube-scheduler/config/v1 Extender, ExtenderTLSConfig, ExtenderManagedResource
EXTENDER_FIELDS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}
TLS_FIELDS = {
    "insecure",
    "serverName",
    "certFile",
    "keyFile",
    "caFile",
    "certData",
    "keyData",
    "caData",
}
MANAGED_RESOURCE_FIELDS = {"name", "ignoredByScheduler"}
# A throw-away self-signed CA (its key was discarded): the extender loads the CA file for real.
TEST_CA = """\
-----BEGIN CERTIFICATE-----
MIIBijCCATGgAwIBAgIUK/DG9JtDet6NFuzaabnFS+fyGrUwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZnVsY3J1bS10ZXN0LWNhMCAXDTI2MTEyNzA2MzA1MloYDzIx
MjYxMTAzMDYzMDUyWjAaMRgwFgYDVQQDDA9mdWxjcnVtLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATFuZ4VMNvStvRG2uMYy3A73KQu76cBb7ZIRYjq
lM4Tn2Ppz28iE9ppGKCmfM/Yz7xK1W3a+v71UqAfVUuxdPDCo1MwUTAdBgNVHQ4E
FgQUWYpQdxU6rvnWdDbbKRZZReEPN2EwHwYDVR0jBBgwFoAUWYpQdxU6rvnWdDbb
KRZZReEPN2EwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAq62Pj
7dBOUmyKHlEFRzAuDg9X6OEdEZLwEQsmCyA2UQIgKYxPYOHFtbChULVve0+yRYOp
SCO22ydf5xPEYGmE5jM=
-----END CERTIFICATE-----
"""
KUBE_SCHEDULER_TYPES = Path.home() / "go/pkg/mod/k8s.io/kube-scheduler@v0.34.4/config/v1/types.go"


# --- loading ---------------------------------------------------------------------------------


def _manifest_files() -> list[str]:
    """Every YAML file under deploy/ (the CRDs are in crds/), relative to deploy/."""
    return sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml"))


def _load_all() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in _manifest_files():
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            if doc is not None:
                docs.append((name, doc))
    return docs


DOCS = _load_all()


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in objects(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    doc: dict[str, Any] = found[0]
    return doc


def config_map() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "fulcrum-config")["data"]
    return data


def scheduler_configuration() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(config_map()["kube-scheduler.yaml"])
    return config


def deployment(name: str = FULCRUM_SCHEDULER) -> dict[str, Any]:
    return one("Deployment", name)


def pod_spec(name: str = FULCRUM_SCHEDULER) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(name)["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    found = [c for c in pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    spec: dict[str, Any] = found[0]
    return spec


def flag(args: list[str], name: str) -> str:
    """Value of ``--name=value`` or ``--name value`` in a container's command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    raise AssertionError(f"--{name} not in {args}")


def config_file(path: str) -> str:
    """The ConfigMap key mounted at ``path`` (the whole ConfigMap is mounted at CONFIG_DIR)."""
    assert path.startswith(CONFIG_DIR + "/"), path
    key = path.removeprefix(CONFIG_DIR + "/")
    assert key in config_map(), f"{path}: no key {key!r} in ConfigMap fulcrum-config"
    return config_map()[key]


def the_extender() -> dict[str, Any]:
    """The extenders[] entry that filters (every pod); the_binder(): the one that binds."""
    entry: dict[str, Any] = scheduler_configuration()["extenders"][0]
    return entry


def the_binder() -> dict[str, Any]:
    extenders = scheduler_configuration()["extenders"]
    assert len(extenders) == 2
    entry: dict[str, Any] = extenders[1]
    return entry


def _binary(name: str) -> Path | None:
    supplied = os.environ.get("FULCRUM_BIN_DIR")
    candidates = [Path(supplied) / name] if supplied else []
    candidates += sorted((cache_dir() / "bin").glob(f"kubernetes-v1.34.4-*/{name}"))
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


# --- every document ----------------------------------------------------------------------------


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for _, doc in DOCS}
    assert set(API_VERSIONS) <= kinds


@pytest.mark.parametrize(("file", "doc"), DOCS, ids=[f"{f}:{d.get('kind')}" for f, d in DOCS])
def test_every_document_is_well_formed(file: str, doc: dict[str, Any]) -> None:
    kind = doc.get("kind")
    assert isinstance(kind, str), f"{file}: a document without kind"
    if kind in NOT_API_OBJECTS:
        assert doc.get("apiVersion") == NOT_API_OBJECTS[kind], file
        assert file in {"kustomization.yaml", EXAMPLE}, f"{file}: {kind} is not an API object"
        return
    assert kind in API_VERSIONS, f"{file}: unexpected kind {kind}"
    assert doc.get("apiVersion") == API_VERSIONS[kind], f"{file}: {kind}"
    meta = doc["metadata"]
    assert DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253, meta["name"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec", "data", "rules", "roleRef"} | {
        "subjects",
        "value",
        "globalDefault",
        "preemptionPolicy",
        "description",
        "webhooks",
        "automountServiceAccountToken",
        "type",
    }, f"{file}: {kind} {meta['name']} has unknown top-level fields"
    for key, value in {**meta.get("labels", {}), **meta.get("annotations", {})}.items():
        assert isinstance(value, str), f"{kind} {meta['name']}: {key} must be a string"
    if kind in CLUSTER_SCOPED:
        assert "namespace" not in meta, f"{kind} {meta['name']} is cluster-scoped"
    elif kind == "RoleBinding" and meta["name"].endswith("authentication-reader"):
        assert meta["namespace"] == "kube-system"
    else:
        assert meta.get("namespace") == NAMESPACE, f"{kind} {meta['name']}"


def test_names_are_unique_per_kind_and_namespace() -> None:
    keys = [
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        for _, d in DOCS
        if d["kind"] in API_VERSIONS
    ]
    assert len(keys) == len(set(keys))


def test_the_kustomization_lists_every_manifest_but_the_example() -> None:
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    on_disk = set(_manifest_files()) - {"kustomization.yaml", EXAMPLE}
    assert sorted(listed) == sorted(on_disk)
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


# --- the KubeSchedulerConfiguration ----------------------------------------------------------


def test_scheduler_config_agrees_with_the_harness() -> None:
    """Same profile and extender registration as ``fulcrum cluster up`` tests every day."""
    deployed = scheduler_configuration()
    harness = scheduler_config(ExtenderRegistration(port=8888), Path("unused"))
    assert deployed["apiVersion"] == harness["apiVersion"]
    assert deployed["kind"] == harness["kind"]
    assert deployed["profiles"] == harness["profiles"]
    assert deployed["extenders"] == harness["extenders"]
    assert deployed["percentageOfNodesToScore"] == harness["percentageOfNodesToScore"]
    assert deployed["podMaxBackoffSeconds"] == harness["podMaxBackoffSeconds"]
    # in-cluster: the pod's ServiceAccount, no kubeconfig file
    assert "kubeconfig" not in deployed.get("clientConnection", {})


def test_kube_scheduler_collects_garbage_as_in_the_harness_and_within_its_limit() -> None:
    kube_scheduler = container("kube-scheduler")
    env = {e["name"]: e["value"] for e in kube_scheduler["env"]}
    assert env == SCHEDULER_GC
    mib = {"Mi": 1, "Gi": 1024}
    limit = kube_scheduler["resources"]["limits"]["memory"]
    assert int(env["GOMEMLIMIT"].removesuffix("MiB")) < int(limit[:-2]) * mib[limit[-2:]]


def test_the_extender_is_called_on_loopback_to_filter_every_pod_and_bind_marked_ones() -> None:
    entry, binder = the_extender(), the_binder()
    for e in (entry, binder):
        url = urlparse(e["urlPrefix"])
        assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", 8888)
        assert e["nodeCacheCapable"] is True
        assert e["ignorable"] is False
        assert re.fullmatch(r"\d+(ms|s)", e["httpTimeout"])
    assert (entry["filterVerb"], entry["prioritizeVerb"]) == ("filter", "prioritize")
    assert "managedResources" not in entry and "bindVerb" not in entry
    assert entry["weight"] > 0
    assert binder["bindVerb"] == "bind" and "filterVerb" not in binder
    assert binder["managedResources"] == [{"name": "fulcrum.io/bind", "ignoredByScheduler": True}]


def test_leader_election_uses_a_lease_of_its_own() -> None:
    election = scheduler_configuration()["leaderElection"]
    assert election["leaderElect"] is True
    assert election.get("resourceLock", "leases") == "leases"
    assert election["resourceNamespace"] == NAMESPACE
    assert election["resourceName"] not in {"", "kube-scheduler"}
    profiles = scheduler_configuration()["profiles"]
    assert [p["schedulerName"] for p in profiles] == [FULCRUM_SCHEDULER]


# --- the extender's own files ------------------------------------------------------------------


def test_the_extender_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "extender.yaml"
    path.write_text(config_map()["extender.yaml"])
    settings = load_settings(path, default_registry(plugins=False))
    args = container("extender")["command"]
    assert args[:2] == ["fulcrum", "serve"]
    assert config_file(flag(args, "config")) == config_map()["extender.yaml"]
    url = urlparse(the_extender()["urlPrefix"])
    assert settings.host == flag(args, "host") == url.hostname == "127.0.0.1"
    assert settings.port == int(flag(args, "port")) == url.port
    assert settings.tls is None and the_extender()["enableHTTPS"] is False


def _local_kubeconfig(tmp_path: Path) -> Path:
    """The deployed extender kubeconfig, its ServiceAccount paths moved under ``tmp_path``."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("header.payload.signature")
    (sa / "ca.crt").write_text(TEST_CA)
    text = config_file(flag(container("extender")["command"], "kubeconfig"))
    assert text.count(SA_DIR) == 2
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(text.replace(SA_DIR, str(sa)))
    return path


def test_the_extender_kubeconfig_is_the_pods_service_account(tmp_path: Path) -> None:
    kubeconfig = yaml.safe_load(config_file(flag(container("extender")["command"], "kubeconfig")))
    (cluster,) = kubeconfig["clusters"]
    (user,) = kubeconfig["users"]
    assert cluster["cluster"] == {
        "server": "https://kubernetes.default.svc",
        "certificate-authority": f"{SA_DIR}/ca.crt",
    }
    assert user["user"] == {"tokenFile": f"{SA_DIR}/token"}
    assert pod_spec().get("automountServiceAccountToken", True) is True

    from fulcrum.run.serve import core_api  # the extender's own loader

    configuration = core_api(_local_kubeconfig(tmp_path)).api_client.configuration
    assert configuration.host == "https://kubernetes.default.svc"
    assert configuration.ssl_ca_cert == str(tmp_path / "serviceaccount" / "ca.crt")
    assert configuration.auth_settings()["BearerToken"]["value"] == (
        "Bearer header.payload.signature"
    )


def test_binder_authenticates_with_the_deployed_kubeconfig(tmp_path: Path) -> None:
    from extender.apiserver import KubeBinder
    from fulcrum.run.serve import core_api

    binder = KubeBinder(core_api(_local_kubeconfig(tmp_path)).api_client.configuration)
    assert binder.authorization() == {"Authorization": "Bearer header.payload.signature"}


# --- RBAC --------------------------------------------------------------------------------------


def _rules(role: dict[str, Any]) -> set[tuple[tuple[str, ...], ...]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard {key}"
        out.add(tuple(tuple(rule.get(k, ())) for k in ("apiGroups", "resources", "verbs")))
    return out


def _bound_to_the_service_account(binding: dict[str, Any], account: str = SERVICE_ACCOUNT) -> None:
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"


def test_the_extender_cluster_role_is_exactly_the_minimal_rules() -> None:
    role = one("ClusterRole", "fulcrum-extender")
    assert _rules(role) == EXTENDER_RULES
    named = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert [rule["resourceNames"] for rule in named] == [["fulcrum-rebuild"]]  # one Lease only
    (binding,) = [
        b for b in objects("ClusterRoleBinding") if b["roleRef"]["name"] == "fulcrum-extender"
    ]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    _bound_to_the_service_account(binding, EXTENDER_SERVICE_ACCOUNT)


def test_the_extender_runs_as_its_own_account_in_its_container_only() -> None:
    account = one("ServiceAccount", EXTENDER_SERVICE_ACCOUNT)
    assert account["automountServiceAccountToken"] is False
    (secret,) = objects("Secret")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": EXTENDER_SERVICE_ACCOUNT
    }
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {c["name"]: c.get("volumeMounts", []) for c in pod_spec()["containers"]}
    (token,) = [m for m in mounts["extender"] if m["mountPath"] == SA_DIR]
    assert volumes[token["name"]]["secret"]["secretName"] == secret["metadata"]["name"]
    assert not [m for m in mounts["kube-scheduler"] if m["name"] == token["name"]]
    assert pod_spec()["serviceAccountName"] == SERVICE_ACCOUNT  # kube-scheduler's


def test_the_rebuild_controller_has_its_own_account_and_exactly_its_rules() -> None:
    account = one("ServiceAccount", REBUILD_SERVICE_ACCOUNT)
    assert account["metadata"]["namespace"] == NAMESPACE
    role = one("ClusterRole", "fulcrum-rebuild")
    assert _rules(role) == REBUILD_RULES
    assert all("resourceNames" not in rule for rule in role["rules"])
    (binding,) = [
        b for b in objects("ClusterRoleBinding") if b["roleRef"]["name"] == "fulcrum-rebuild"
    ]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    _bound_to_the_service_account(binding, REBUILD_SERVICE_ACCOUNT)


def test_fulcrum_defines_no_other_cluster_roles() -> None:
    names = [r["metadata"]["name"] for r in objects("ClusterRole")]
    assert sorted(names) == ["fulcrum-extender", "fulcrum-rebuild", "fulcrum-webhook"]


def test_kube_scheduler_gets_what_upstream_prescribes_for_a_second_scheduler() -> None:
    bound = {b["roleRef"]["name"]: b for b in objects("ClusterRoleBinding")}
    for role in ("system:kube-scheduler", "system:volume-scheduler"):
        assert bound[role]["roleRef"]["kind"] == "ClusterRole"
        _bound_to_the_service_account(bound[role])
    (reader,) = [b for b in objects("RoleBinding") if b["metadata"]["namespace"] == "kube-system"]
    assert reader["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "extension-apiserver-authentication-reader",
    }
    _bound_to_the_service_account(reader)
    assert one("ServiceAccount", SERVICE_ACCOUNT)["metadata"]["namespace"] == NAMESPACE
    assert pod_spec()["serviceAccountName"] == SERVICE_ACCOUNT


def _lease_role(account: str, namespace: str, lease: str) -> dict[str, Any]:
    """The one Role bound to ``account``; it may create Leases in ``namespace`` and read and
    renew only ``lease`` there."""
    bindings = [b for b in objects("RoleBinding") if b["subjects"][0]["name"] == account]
    bindings = [b for b in bindings if b["metadata"]["namespace"] == namespace]
    (binding,) = bindings
    assert binding["roleRef"]["kind"] == "Role"
    _bound_to_the_service_account(binding, account)
    role = one("Role", binding["roleRef"]["name"])
    assert role["metadata"]["namespace"] == namespace
    rules = role["rules"]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in rules)
    assert all(r["resources"] == ["leases"] for r in rules)
    named = [r for r in rules if "resourceNames" in r]
    assert [r["resourceNames"] for r in named] == [[lease]]
    assert {"get", "update"} <= set(named[0]["verbs"])
    assert [r["verbs"] for r in rules if "resourceNames" not in r] == [["create"]]
    _rules(role)  # no wildcards
    return role


def test_the_leader_election_role_covers_only_its_own_lease() -> None:
    election = scheduler_configuration()["leaderElection"]
    _lease_role(SERVICE_ACCOUNT, election["resourceNamespace"], election["resourceName"])


def test_the_rebuild_controller_may_renew_only_its_own_lease_in_its_namespace() -> None:
    args = rebuild_args()
    _lease_role(REBUILD_SERVICE_ACCOUNT, args.lease_namespace, REBUILD_LEASE)
    assert args.lease_namespace == NAMESPACE
    # no Lease rights anywhere else: not in its ClusterRole
    role = one("ClusterRole", REBUILD)
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in role["rules"])
    roles = [r["metadata"]["name"] for r in objects("Role")]
    assert sorted(roles) == ["fulcrum-rebuild-leader-election", "fulcrum-scheduler-leader-election"]


# --- the CustomResourceDefinitions --------------------------------------------------------------


def crd(plural: str) -> dict[str, Any]:
    return one("CustomResourceDefinition", f"{plural}.{GROUP}")


def crd_schema(plural: str) -> dict[str, Any]:
    (version,) = crd(plural)["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or ".", node
    for name, child in node.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize(
    ("plural", "kind", "short"),
    [("reservations", "Reservation", "rsv"), ("ippools", "IPPool", "ipp")],
)
def test_the_crds_are_namespaced_v1alpha1_without_a_status_subresource(
    plural: str, kind: str, short: str
) -> None:
    spec = crd(plural)["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (kind, plural, [short])
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    # the controller writes spec and status in one compare-and-swap update
    assert "subresources" not in version


@pytest.mark.parametrize("plural", ["reservations", "ippools"])
def test_the_crd_schemas_are_structural(plural: str) -> None:
    schema = crd_schema(plural)
    for path, node in _schema_nodes(schema):
        assert isinstance(node.get("type"), str), f"{plural}: {path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".spec.template", f"{plural}: {path} keeps unknown fields"
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


@pytest.mark.parametrize(
    ("plural", "columns"),
    [("reservations", ["Key", "Node", "IP", "Phase", "Age"]), ("ippools", ["CIDR", "Age"])],
)
def test_the_printer_columns_show_fields_of_the_schema(plural: str, columns: list[str]) -> None:
    (version,) = crd(plural)["spec"]["versions"]
    printed = version["additionalPrinterColumns"]
    assert [c["name"] for c in printed] == columns
    paths = dict(_schema_nodes(crd_schema(plural)))
    for column in printed:
        if column["name"] == "Age":
            assert column == {
                "name": "Age",
                "type": "date",
                "jsonPath": ".metadata.creationTimestamp",
            }
        else:
            assert paths[column["jsonPath"]]["type"] == column["type"], column


def test_the_reservation_schema() -> None:
    spec = crd_schema("reservations")["properties"]["spec"]
    assert spec["required"] == ["key", "node", "predecessor"]
    fields = spec["properties"]
    assert set(fields) == {
        "key",
        "node",
        "predecessor",
        "template",
        "devices",
        "ip",
        "pool",
        "claims",
        "fallback",
        "expiresAt",
    }
    assert fields["predecessor"]["required"] == ["name", "uid"]
    assert fields["template"]["type"] == "object"
    assert fields["devices"]["items"]["type"] == "integer"
    assert fields["claims"]["items"]["type"] == "string"
    assert fields["fallback"]["enum"] == ["wait", "reschedule"]
    assert fields["expiresAt"]["format"] == "date-time"
    status = crd_schema("reservations")["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Held", "Expired", "Claimed"]
    assert status["claimedBy"]["type"] == "string"


def test_an_ippool_has_exactly_one_of_cidr_and_addresses() -> None:
    spec = crd_schema("ippools")["properties"]["spec"]
    (rule,) = spec["x-kubernetes-validations"]
    assert rule["rule"].replace(" ", "") == "has(self.cidr)!=has(self.addresses)"
    assert "cidr" in rule["message"] and "addresses" in rule["message"]
    fields = spec["properties"]
    assert fields["cidr"]["type"] == "string"
    assert fields["addresses"]["items"]["type"] == "string"
    allocations = crd_schema("ippools")["properties"]["status"]["properties"]["allocations"]
    assert allocations["additionalProperties"] == {"type": "string"}


def test_an_ippool_selector_is_a_label_selector() -> None:
    selector = crd_schema("ippools")["properties"]["spec"]["properties"]["selector"]
    assert selector["properties"]["matchLabels"]["additionalProperties"] == {"type": "string"}
    expression = selector["properties"]["matchExpressions"]["items"]
    assert expression["required"] == ["key", "operator"]
    assert expression["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
    assert expression["properties"]["values"]["items"]["type"] == "string"


# --- the Deployment ----------------------------------------------------------------------------


def test_the_deployment_runs_two_replicas_on_different_nodes() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (term,) = pod_spec()["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0
    pdb = one("PodDisruptionBudget", "fulcrum-scheduler")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_the_pods_are_placed_by_the_default_scheduler() -> None:
    assert "schedulerName" not in pod_spec()  # Fulcrum being down never blocks its own pods
    priority = pod_spec()["priorityClassName"]
    assert not priority.startswith("system-")
    assert one("PriorityClass", priority)["value"] <= 1_000_000_000  # the user-class ceiling


def test_the_containers() -> None:
    assert [c["name"] for c in pod_spec()["containers"]] == ["kube-scheduler", "extender"]
    scheduler = container("kube-scheduler")
    assert scheduler["image"] == "registry.k8s.io/kube-scheduler:v1.34.4"
    assert config_file(flag(scheduler["command"], "config")) == config_map()["kube-scheduler.yaml"]
    assert container("extender")["image"] == "fulcrum:0.1.0"
    for c in pod_spec()["containers"]:
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[CONFIG_DIR]["readOnly"] is True
        volumes = {v["name"]: v for v in pod_spec()["volumes"]}
        assert volumes[mounts[CONFIG_DIR]["name"]]["configMap"]["name"] == "fulcrum-config"


@pytest.mark.parametrize("name", ["kube-scheduler", "extender"])
def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    name: str,
) -> None:
    c = container(name)
    assert c["readinessProbe"] and c["livenessProbe"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_kube_scheduler_probes_its_secure_port() -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        get = container("kube-scheduler")[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == ("/healthz", 10259, "HTTPS")


def test_the_extender_is_probed_from_inside_its_loopback_only_container() -> None:
    """httpGet probes come from the node and cannot reach 127.0.0.1 inside the pod."""
    extender = container("extender")
    # on the pod IP only /metrics (--metrics-port), never the verbs
    assert extender["ports"] == [{"name": "metrics", "containerPort": 9090}]
    assert "--metrics-port=9090" in extender["command"]
    expected = {
        "readinessProbe": "http://127.0.0.1:8888/readyz",
        "livenessProbe": "http://127.0.0.1:8888/healthz",
        "startupProbe": "http://127.0.0.1:8888/healthz",
    }
    for probe, url in expected.items():
        command = extender[probe]["exec"]["command"]
        assert command[:3] == ["python", "-S", "-c"]
        assert f'urlopen("{url}"' in command[3]


# --- the rebuild controller's Deployment ---------------------------------------------------------


def rebuild_container() -> dict[str, Any]:
    (c,) = pod_spec(REBUILD)["containers"]
    spec: dict[str, Any] = c
    return spec


def rebuild_args() -> argparse.Namespace:
    """The controller's command line, parsed by `fulcrum`'s own argument parser."""
    command = rebuild_container()["command"]
    assert command[:2] == ["fulcrum", "rebuild"]
    return build_parser().parse_args(command[1:])


def test_the_rebuild_controller_runs_two_replicas_electing_a_leader() -> None:
    doc = deployment(REBUILD)
    assert doc["metadata"]["namespace"] == NAMESPACE
    spec = doc["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert "schedulerName" not in pod_spec(REBUILD)  # never waits for Fulcrum itself
    args = rebuild_args()
    assert args.kubeconfig is None  # in-cluster config: the pod's ServiceAccount
    assert args.identity is None  # defaults to hostname-pid: the pod name, unique per replica
    assert args.lease_namespace == NAMESPACE


def test_the_rebuild_controller_runs_the_extenders_image_as_its_own_account() -> None:
    assert rebuild_container()["image"] == container("extender")["image"]
    assert rebuild_container()["imagePullPolicy"] == container("extender")["imagePullPolicy"]
    account = pod_spec(REBUILD)["serviceAccountName"]
    assert account == REBUILD_SERVICE_ACCOUNT
    (defined,) = [d for f, d in DOCS if f == "rebuild-rbac.yaml" and d["kind"] == "ServiceAccount"]
    assert (defined["metadata"]["name"], defined["metadata"]["namespace"]) == (account, NAMESPACE)
    assert pod_spec(REBUILD).get("automountServiceAccountToken", True) is True
    assert one("PriorityClass", pod_spec(REBUILD)["priorityClassName"])


def test_the_rebuild_controller_is_probed_for_liveness_only() -> None:
    """/readyz is 200 only on the leader; its port is named for Prometheus' /metrics."""
    c = rebuild_container()
    assert c["ports"] == [{"name": "metrics", "containerPort": rebuild_args().health_port}]
    assert "readinessProbe" not in c and "startupProbe" not in c
    command = c["livenessProbe"]["exec"]["command"]
    assert command[:3] == ["python", "-S", "-c"]
    assert f'urlopen("http://127.0.0.1:{rebuild_args().health_port}/healthz"' in command[3]
    assert "readyz" not in yaml.safe_dump(c)


def test_the_rebuild_controller_has_resources_and_a_locked_down_security_context() -> None:
    c = rebuild_container()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert c["securityContext"] == container("extender")["securityContext"]
    assert pod_spec(REBUILD)["securityContext"] == pod_spec()["securityContext"]
    # a read-only root filesystem: whatever writes goes to the mounted /tmp
    (mount,) = c["volumeMounts"]
    volumes = {v["name"]: v for v in pod_spec(REBUILD)["volumes"]}
    assert mount["mountPath"] == "/tmp" and "emptyDir" in volumes[mount["name"]]


# --- the annotated example ---------------------------------------------------------------------


def _go_json_tags(source: str, struct: str) -> set[str]:
    body = re.search(rf"type {struct} struct {{(.*?)\n}}", source, re.S)
    assert body, struct
    return set(re.findall(r'json:"([^",]+)', body.group(1)))


def test_the_field_lists_match_kube_scheduler_config_v1() -> None:
    if not KUBE_SCHEDULER_TYPES.is_file():
        pytest.skip(f"{KUBE_SCHEDULER_TYPES} not in the Go module cache")
    source = KUBE_SCHEDULER_TYPES.read_text()
    assert _go_json_tags(source, "Extender") == EXTENDER_FIELDS
    assert _go_json_tags(source, "ExtenderTLSConfig") == TLS_FIELDS
    assert _go_json_tags(source, "ExtenderManagedResource") == MANAGED_RESOURCE_FIELDS


def test_the_example_shows_and_explains_every_extender_field() -> None:
    text = (DEPLOY / EXAMPLE).read_text()
    example = yaml.safe_load(text)
    entry, binder = example["extenders"]
    assert set(entry) == EXTENDER_FIELDS
    assert set(entry["tlsConfig"]) == TLS_FIELDS
    (managed,) = binder["managedResources"]
    assert set(managed) == MANAGED_RESOURCE_FIELDS
    for field in EXTENDER_FIELDS:  # each has its own comment paragraph
        assert re.search(rf"^\s*#\s*{field}:", text, re.M), f"{field} is not explained"
    # the example and the deployed configuration agree on everything they both set
    for shown, deployed in ((entry, the_extender()), (binder, the_binder())):
        assert {k: v for k, v in shown.items() if k in deployed} == deployed
    assert example["profiles"] == scheduler_configuration()["profiles"]


# --- with the built binaries, when present -----------------------------------------------------


def _scheduler_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "configmap", scheduler_configuration()
    yield "example", yaml.safe_load((DEPLOY / EXAMPLE).read_text())


@pytest.mark.parametrize(
    ("label", "config"), list(_scheduler_configs()), ids=["configmap", "example"]
)
def test_kube_scheduler_accepts_the_configuration(
    tmp_path: Path, label: str, config: dict[str, Any]
) -> None:
    """kube-scheduler decodes strictly (unknown fields fail) and validates, without a server."""
    binary = _binary("kube-scheduler")
    if binary is None:
        pytest.skip("kube-scheduler v1.34.4 not built (`fulcrum build`)")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    config = {**config, "clientConnection": {**config.get("clientConnection", {})}}
    config["clientConnection"]["kubeconfig"] = str(kubeconfig)  # out of the cluster
    path = tmp_path / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "effective.yaml"
    result = subprocess.run(
        [str(binary), f"--config={path}", "--secure-port=0", f"--write-config-to={out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    effective = yaml.safe_load(out.read_text())
    assert effective["extenders"][0]["urlPrefix"] == "http://127.0.0.1:8888"
    assert effective["leaderElection"]["resourceName"] == FULCRUM_SCHEDULER


def test_kubectl_kustomize_renders_every_manifest() -> None:
    kubectl = _binary("kubectl")
    if kubectl is None:
        pytest.skip("kubectl v1.34.4 not built (`fulcrum build`)")
    result = subprocess.run(
        [str(kubectl), "kustomize", str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = [d for f, d in DOCS if f not in {"kustomization.yaml", EXAMPLE}]
    assert sorted(map(_key, rendered)) == sorted(map(_key, expected))


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


# --- the admission webhooks ----------------------------------------------------------------------


def test_the_webhook_configurations_are_the_ones_admission_config_writes() -> None:
    service = {"namespace": NAMESPACE, "name": "fulcrum-webhook", "port": 443}
    expected = webhook_configurations({"service": service})
    for kind, want in zip(
        ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"), expected, strict=True
    ):
        got = copy.deepcopy(one(kind, "fulcrum.io"))
        got["metadata"].pop("labels")
        assert got == want, (
            f"{kind}: edit charts/fulcrum/templates/webhook-configurations.yaml, then "
            "`make manifests`"
        )
    port = one("Service", "fulcrum-webhook")["spec"]["ports"][0]
    assert port["port"] == 443 and port["targetPort"] == 8443


def test_the_webhook_serves_https_from_its_secret_and_may_only_list_ippools() -> None:
    spec = pod_spec("fulcrum-webhook")
    assert spec.get("automountServiceAccountToken", True) is True  # in-cluster: IPPools
    role = one("ClusterRole", "fulcrum-webhook")
    assert _rules(role) == {((GROUP,), ("ippools",), ("list",))}
    (binding,) = [
        b for b in objects("ClusterRoleBinding") if b["roleRef"]["name"] == "fulcrum-webhook"
    ]
    _bound_to_the_service_account(binding, "fulcrum-webhook")
    assert "schedulerName" not in spec  # Fulcrum being down never blocks its own pods
    (c,) = spec["containers"]
    args = build_parser().parse_args(c["command"][1:])
    assert (args.host, args.port) == ("0.0.0.0", 8443)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(args.tls_cert).startswith(mounts["tls"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "fulcrum-webhook-tls"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
