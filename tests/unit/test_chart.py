"""The Helm chart (charts/fulcrum): lint, a golden rendering, deploy/ rendered from it, the
webhook configurations equal to admission/config.py's for every certificate source, the
PodMonitor, values reaching the manifests, and bad values refused by values.schema.json.

helm is built by `fulcrum build` (make setup). Without it these tests skip, unless CI is set:
then helm is built here. Regenerate the golden file after a deliberate chart change with

    FULCRUM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_chart.py -k golden
"""

from __future__ import annotations

import base64
import copy
import datetime
import importlib.metadata
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from admission.config import webhook_configurations
from extender.config import load_settings
from fulcrum.cli import build_parser
from fulcrum.harness import chart
from fulcrum.harness.binaries import HELM, cache_dir
from fulcrum.run.webhook_certs import managed_certificate
from kube import certs
from kube.api import SCHEDULER_NAME
from policies.registry import default_registry

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_VALUES = GOLDEN / "chart-values.yaml"
GOLDEN_RENDERING = GOLDEN / "chart.yaml"
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
FULCRUM_CONTAINERS = {
    "fulcrum-scheduler": "extender",
    "fulcrum-rebuild": "rebuild",
    "fulcrum-webhook": "webhook",
}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> Path:
    supplied = os.environ.get("FULCRUM_BIN_DIR")
    for path in ([Path(supplied) / "helm"] if supplied else []) + [
        cache_dir() / "bin" / HELM.cache_key() / "helm"
    ]:
        if path.is_file():
            return path
    if not os.environ.get("CI"):
        pytest.skip(f"helm {HELM.version()} not built: run `fulcrum build` (make setup)")
    return chart.helm()  # CI: build it (minutes, once)


def render(helm: Path, *sets: str, namespace: str = "fulcrum-system", **kwargs: Any) -> list[Doc]:
    text = chart.template(helm, namespace=namespace, set_values=sets, **kwargs)
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    (doc,) = find(docs, kind, name)
    return doc


def containers(docs: list[Doc], deployment: str) -> dict[str, Doc]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def config_map_file(docs: list[Doc], key: str, name: str = "fulcrum-config") -> Any:
    return yaml.safe_load(one(docs, "ConfigMap", name)["data"][key])


def pod_templates(docs: list[Doc]) -> dict[str, Doc]:
    """Each Deployment's pod template, by the Deployment's name."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in find(docs, "Deployment")}


def fulcrum_containers(docs: list[Doc], prefix: str = "fulcrum") -> dict[str, Doc]:
    """The container running `fulcrum` in each Deployment, by the Deployment's name."""
    return {
        deployment.replace("fulcrum", prefix, 1): containers(
            docs, deployment.replace("fulcrum", prefix, 1)
        )[name]
        for deployment, name in FULCRUM_CONTAINERS.items()
    }


def env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def flag(container: Doc, name: str) -> str | None:
    """The value of ``--name=value`` in the container's command, or None."""
    prefix = f"--{name}="
    found = [a.removeprefix(prefix) for a in container["command"] if a.startswith(prefix)]
    assert len(found) <= 1, found
    return found[0] if found else None


# --- the chart as a whole ------------------------------------------------------------------


def test_the_chart_version_is_the_projects() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    project = tomllib.loads((chart.CHART.parents[1] / "pyproject.toml").read_text())
    version = project["project"]["version"]
    assert meta["version"] == meta["appVersion"] == version
    assert importlib.metadata.version("fulcrum") == version  # what `fulcrum --version` prints


def test_helm_lint_passes(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(chart.CHART)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_the_rendering_with_fixed_values_is_the_golden_file(helm: Path) -> None:
    """Any change to what the chart renders shows up here, in review, as a diff of this file."""
    rendered = chart.template(
        helm, release="golden", namespace="fulcrum-golden", values_files=[GOLDEN_VALUES]
    )
    if os.environ.get("FULCRUM_UPDATE_GOLDEN"):
        GOLDEN_RENDERING.write_text(rendered)
    assert rendered == GOLDEN_RENDERING.read_text(), (
        "the chart renders differently from tests/unit/golden/chart.yaml; if that is meant, "
        "regenerate it: FULCRUM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_chart.py -k golden"
    )


def test_deploy_is_the_charts_rendering(helm: Path) -> None:
    files = chart.deploy_files(helm)
    assert chart.DEPLOY / "crds" / "reservations.yaml" in files
    assert chart.DEPLOY / "deployment.yaml" in files
    out_of_date = [str(p.relative_to(chart.DEPLOY)) for p in chart.stale(files)]
    assert not out_of_date, (
        f"deploy/ differs from charts/fulcrum: run `make manifests` ({out_of_date})"
    )


def test_object_names_do_not_depend_on_the_release_name(helm: Path) -> None:
    def names(release: str) -> set[tuple[str, str]]:
        text = chart.template(
            helm,
            release=release,
            set_values=["webhook.certificate.source=secret", "node.enabled=true"],
        )
        return {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(text) if d}

    assert names("fulcrum") == names("another")


def test_the_namespace_is_created_only_when_asked(helm: Path) -> None:
    assert not find(render(helm), "Namespace")
    namespace = one(render(helm, "namespace.create=true", namespace="ns1"), "Namespace")
    assert namespace["metadata"]["name"] == "ns1"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- values reach the manifests --------------------------------------------------------------


def test_image_replicas_and_resources_reach_every_component(helm: Path) -> None:
    docs = render(
        helm,
        "image.repository=registry.example/team/fulcrum",
        "image.tag=abc123",
        "image.pullPolicy=Always",
        "scheduler.replicas=3",
        "rebuild.replicas=1",
        "webhook.replicas=4",
        "rebuild.resources.limits.memory=4Gi",
        namespace="elsewhere",
    )
    for deployment, name in FULCRUM_CONTAINERS.items():
        c = containers(docs, deployment)[name]
        assert c["image"] == "registry.example/team/fulcrum:abc123", deployment
        assert c["imagePullPolicy"] == "Always"
    replicas = {d["metadata"]["name"]: d["spec"]["replicas"] for d in find(docs, "Deployment")}
    assert replicas == {"fulcrum-scheduler": 3, "fulcrum-rebuild": 1, "fulcrum-webhook": 4}
    assert containers(docs, "fulcrum-rebuild")["rebuild"]["resources"]["limits"]["memory"] == "4Gi"
    rebuild_command = containers(docs, "fulcrum-rebuild")["rebuild"]["command"]
    assert "--lease-namespace=elsewhere" in rebuild_command
    election = config_map_file(docs, "kube-scheduler.yaml")["leaderElection"]
    assert election["resourceNamespace"] == "elsewhere"


def test_the_default_image_is_what_make_image_builds(helm: Path) -> None:
    docs = render(helm)
    script = (chart.DEPLOY / "image" / "build.sh").read_text()
    image = containers(docs, "fulcrum-scheduler")["extender"]["image"]
    assert image == f"fulcrum:{importlib.metadata.version('fulcrum')}"
    assert 'IMAGE="${IMAGE:-fulcrum:$VERSION}"' in script


def test_policy_weights_and_ignorable_reach_the_configuration(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "extender": {
                    "ignorable": True,
                    "weight": 3,
                    "httpTimeout": "2s",
                    "prioritize": [
                        {"policy": "Archimedes", "weight": 2.5},
                        {"policy": "MostAllocated", "weight": 1},
                    ],
                    "decideInFilter": False,
                    "bindAll": True,
                    "workloadPrior": {"cpuShare": 0.25, "pods": 5},
                }
            }
        )
    )
    docs = render(helm, values_files=[values])
    extender = config_map_file(docs, "kube-scheduler.yaml")["extenders"][0]
    assert (extender["ignorable"], extender["weight"], extender["httpTimeout"]) == (True, 3, "2s")
    path = tmp_path / "extender.yaml"
    path.write_text(one(docs, "ConfigMap", "fulcrum-config")["data"]["extender.yaml"])
    settings = load_settings(path, default_registry(plugins=False))
    weights = [(p.policy, p.weight) for p in settings.prioritize]
    assert weights == [("Archimedes", 2.5), ("MostAllocated", 1.0)]
    assert settings.decide_in_filter is False and settings.bind_all is True
    assert [
        e.get("bindVerb") for e in config_map_file(docs, "kube-scheduler.yaml")["extenders"]
    ] == ["bind"]
    assert settings.workload_prior.cpu_share == 0.25 and settings.workload_prior.pods == 5
    assert (settings.host, settings.port) == ("127.0.0.1", 8888)


def test_percentage_of_nodes_to_score_reaches_the_configuration(helm: Path) -> None:
    docs = render(helm, "scheduler.percentageOfNodesToScore=10")
    assert config_map_file(docs, "kube-scheduler.yaml")["percentageOfNodesToScore"] == 10


def test_a_new_configuration_rolls_the_scheduler_pods(helm: Path) -> None:
    def checksum(*sets: str) -> str:
        template = one(render(helm, *sets), "Deployment", "fulcrum-scheduler")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() == checksum()
    assert checksum() != checksum("extender.ignorable=true")


def test_the_disruption_budget_can_be_turned_off(helm: Path) -> None:
    assert (
        one(render(helm), "PodDisruptionBudget", "fulcrum-scheduler")["spec"]["minAvailable"] == 1
    )
    assert not find(
        render(helm, "scheduler.podDisruptionBudget.enabled=false"),
        "PodDisruptionBudget",
        "fulcrum-scheduler",
    )


def test_the_webhook_keeps_a_replica_through_drains_unless_turned_off(helm: Path) -> None:
    pdb = one(render(helm), "PodDisruptionBudget", "fulcrum-webhook")
    deployment = one(render(helm), "Deployment", "fulcrum-webhook")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    off = render(helm, "webhook.podDisruptionBudget.enabled=false")
    assert not find(off, "PodDisruptionBudget", "fulcrum-webhook")
    assert find(off, "PodDisruptionBudget", "fulcrum-scheduler")


def test_the_webhook_network_policy_admits_only_its_peers_on_its_port(
    helm: Path, tmp_path: Path
) -> None:
    assert not find(render(helm), "NetworkPolicy")  # off by default: the peer is the cluster's
    values = tmp_path / "values.yaml"
    peers = [{"ipBlock": {"cidr": "10.0.0.0/24"}}, {"namespaceSelector": {}}]
    values.write_text(
        yaml.safe_dump({"webhook": {"networkPolicy": {"enabled": True, "from": peers}}})
    )
    docs = render(helm, values_files=[values])
    policy = one(docs, "NetworkPolicy", "fulcrum-webhook")
    pod = one(docs, "Deployment", "fulcrum-webhook")["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == peers
    [port] = pod["spec"]["containers"][0]["ports"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port["containerPort"]}]


def test_a_network_policy_without_peers_is_refused_naming_the_value(helm: Path) -> None:
    with pytest.raises(chart.ChartError, match=r"webhook\.networkPolicy\.from: empty"):
        render(helm, "webhook.networkPolicy.enabled=true")


def test_image_pull_secrets_reach_every_pod(helm: Path) -> None:
    for template in pod_templates(render(helm)).values():
        assert "imagePullSecrets" not in template["spec"]
    docs = render(helm, "imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror")
    templates = pod_templates(docs)
    assert set(templates) == set(FULCRUM_CONTAINERS)
    for deployment, template in templates.items():
        pull_secrets = template["spec"]["imagePullSecrets"]
        assert pull_secrets == [{"name": "regcred"}, {"name": "mirror"}], deployment


def test_log_level_and_format_reach_every_fulcrum_process(helm: Path) -> None:
    for deployment, c in fulcrum_containers(render(helm)).items():
        assert c["command"][-2:] == ["--log-level=info", "--log-format=text"], deployment
    docs = render(helm, "log.level=debug", "log.format=json")
    for deployment, c in fulcrum_containers(docs).items():
        assert "--log-level=debug" in c["command"], deployment
        assert "--log-format=json" in c["command"], deployment
    kube_scheduler = containers(docs, "fulcrum-scheduler")["kube-scheduler"]
    assert not any(arg.startswith("--log") for arg in kube_scheduler["command"])


def test_pod_annotations_and_labels_reach_every_pod_template(helm: Path) -> None:
    docs = render(
        helm,
        r"podAnnotations.example\.com/owner=ml-platform",
        "podLabels.team=ml",
        "podLabels.tier=control",
    )
    templates = pod_templates(docs)
    assert set(templates) == set(FULCRUM_CONTAINERS)
    for deployment, template in templates.items():
        metadata = template["metadata"]
        assert metadata["annotations"]["example.com/owner"] == "ml-platform", deployment
        assert {"team": "ml", "tier": "control"}.items() <= metadata["labels"].items()
        selector = one(docs, "Deployment", deployment)["spec"]["selector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": deployment}  # unchanged: immutable
        assert metadata["labels"]["app.kubernetes.io/name"] == deployment
    assert "checksum/config" in templates["fulcrum-scheduler"]["metadata"]["annotations"]
    for deployment in ("fulcrum-rebuild", "fulcrum-webhook"):
        assert "annotations" not in pod_templates(render(helm))[deployment]["metadata"]


def test_affinity_reaches_every_pod_beside_its_own_anti_affinity(
    helm: Path, tmp_path: Path
) -> None:
    node_affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["infra"]}]}
            ]
        }
    }
    away_from_ingress = {
        "weight": 10,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "ingress"}},
        },
    }
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "affinity": {
                    "nodeAffinity": node_affinity,
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [away_from_ingress]
                    },
                }
            }
        )
    )
    default = {k: t["spec"]["affinity"] for k, t in pod_templates(render(helm)).items()}
    for deployment, template in pod_templates(render(helm, values_files=[values])).items():
        affinity = template["spec"]["affinity"]
        assert affinity["nodeAffinity"] == node_affinity, deployment
        own = default[deployment]["podAntiAffinity"]
        anti = affinity["podAntiAffinity"]
        for kind, terms in own.items():  # the chart's own terms come first, and are kept
            assert anti[kind][: len(terms)] == terms, deployment
        preferred = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred[-1] == away_from_ingress, deployment
    required = default["fulcrum-scheduler"]["podAntiAffinity"]
    assert list(required) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_extra_env_reaches_every_fulcrum_container(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    from_secret = {"secretKeyRef": {"name": "proxy", "key": "url"}}
    values.write_text(
        yaml.safe_dump(
            {
                "extraEnv": [
                    {"name": "HTTPS_PROXY", "valueFrom": from_secret},
                    {"name": "NO_PROXY", "value": ".svc,10.0.0.0/8"},
                ]
            }
        )
    )
    docs = render(helm, values_files=[values])
    for deployment, c in fulcrum_containers(docs).items():
        names = [e["name"] for e in c["env"]]
        assert names[-2:] == ["HTTPS_PROXY", "NO_PROXY"], deployment  # last: they win
        assert env(c)["HTTPS_PROXY"] == from_secret
        assert env(c)["HOME"] == "/tmp"
    kube_scheduler = containers(docs, "fulcrum-scheduler")["kube-scheduler"]
    assert "HTTPS_PROXY" not in env(kube_scheduler)


def test_service_account_annotations_reach_every_service_account(helm: Path) -> None:
    role = "arn:aws:iam::111122223333:role/fulcrum"
    docs = render(helm, rf"serviceAccount.annotations.eks\.amazonaws\.com/role-arn={role}")
    accounts = find(docs, "ServiceAccount")
    assert {a["metadata"]["name"] for a in accounts} == {*FULCRUM_CONTAINERS, "fulcrum-extender"}
    for account in accounts:
        assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert all("annotations" not in a["metadata"] for a in find(render(helm), "ServiceAccount"))


def test_the_scheduler_name_reaches_the_profile_the_webhook_and_every_fulcrum_process(
    helm: Path,
) -> None:
    routing = ("fulcrum-rebuild", "fulcrum-webhook")  # the extender does not use the name
    for deployment, c in fulcrum_containers(render(helm)).items():
        assert flag(c, "scheduler-name") == (SCHEDULER_NAME if deployment in routing else None)
    docs = render(helm, "schedulerName=fulcrum-canary")
    (profile,) = config_map_file(docs, "kube-scheduler.yaml")["profiles"]
    assert profile["schedulerName"] == "fulcrum-canary"
    for deployment in routing:
        assert flag(fulcrum_containers(docs)[deployment], "scheduler-name") == "fulcrum-canary"
    mutating = one(docs, "MutatingWebhookConfiguration")
    expression = mutating["webhooks"][0]["matchConditions"][0]["expression"]
    assert "object.spec.schedulerName == 'fulcrum-canary'" in expression
    assert SCHEDULER_NAME not in yaml.safe_dump_all(find(docs, "MutatingWebhookConfiguration"))
    # not an object's name: the objects keep theirs
    assert {d["metadata"]["name"] for d in find(docs, "Deployment")} == set(FULCRUM_CONTAINERS)


# --- two releases in one cluster: fullnameOverride ---------------------------------------------


def _keys(docs: list[Doc]) -> set[tuple[str, str | None, str]]:
    return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}


def test_a_fullname_override_of_fulcrum_changes_nothing(helm: Path) -> None:
    sets = (
        "webhook.certificate.source=secret",
        "podMonitor.enabled=true",
        "metrics.expose=true",
        "node.enabled=true",
        "cni.install=true",
    )
    assert chart.template(helm, set_values=sets) == chart.template(
        helm, set_values=(*sets, "fullnameOverride=fulcrum")
    )


@pytest.mark.parametrize("source", ["generate", "secret", "cert-manager"])
def test_a_fullname_override_names_every_object_and_every_reference(
    helm: Path, source: str
) -> None:
    sets = ("fullnameOverride=canary", f"webhook.certificate.source={source}")
    docs = render(
        helm,
        *sets,
        "schedulerName=canary-scheduler",
        "podMonitor.enabled=true",
        "metrics.expose=true",
        "namespace.create=true",
        "node.enabled=true",  # cni.install too, but its binary is fulcrum-ipam
        namespace="ns5",
    )
    names = {d["metadata"]["name"] for d in docs if d["kind"] != "Namespace"}
    assert all(n.startswith(("canary-", "canary.")) for n in names), sorted(names)
    text = yaml.safe_dump_all(docs)
    assert "fulcrum-" not in text, "a name not derived from fullnameOverride or schedulerName"
    keys = _keys(docs)

    def exists(kind: str, name: str, namespace: str | None = "ns5") -> None:
        assert (kind, namespace, name) in keys, f"{kind} {namespace}/{name} is not rendered"

    for daemonset in find(docs, "DaemonSet"):
        template = daemonset["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
        exists("ServiceAccount", template["spec"]["serviceAccountName"])
    for deployment in find(docs, "Deployment"):
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        exists("ServiceAccount", template["spec"]["serviceAccountName"])
        exists("PriorityClass", template["spec"]["priorityClassName"], None)
        for kind, terms in template["spec"]["affinity"]["podAntiAffinity"].items():
            term = terms[0].get("podAffinityTerm", terms[0])
            assert term["labelSelector"]["matchLabels"].items() <= labels.items(), kind
        for volume in template["spec"]["volumes"]:
            if "configMap" in volume:
                exists("ConfigMap", volume["configMap"]["name"])
            if "secret" in volume and source == "generate":
                exists("Secret", volume["secret"]["secretName"])
    pods = {tuple(sorted(t["metadata"]["labels"].items())) for t in pod_templates(docs).values()}
    selected = [d["spec"]["selector"] for d in find(docs, "Service")] + [
        d["spec"]["selector"]["matchLabels"]
        for d in find(docs, "PodMonitor") + find(docs, "PodDisruptionBudget")
    ]
    for selector in selected:
        assert any(selector.items() <= dict(pod).items() for pod in pods), selector
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        ref = binding["roleRef"]
        if not ref["name"].startswith(("system:", "extension-apiserver-")):
            namespace = binding["metadata"].get("namespace")
            exists(ref["kind"], ref["name"], None if ref["kind"] == "ClusterRole" else namespace)
        for subject in binding["subjects"]:
            exists("ServiceAccount", subject["name"], subject["namespace"])
    election = config_map_file(docs, "kube-scheduler.yaml", "canary-config")["leaderElection"]
    assert election["resourceName"] == "canary-scheduler"
    leases = {
        role["metadata"]["name"]: rule["resourceNames"]
        for role in find(docs, "Role")
        for rule in role["rules"]
        if "resourceNames" in rule
    }
    assert leases["canary-scheduler-leader-election"] == [election["resourceName"]]
    rebuild = fulcrum_containers(docs, "canary")["canary-rebuild"]
    assert leases["canary-rebuild-leader-election"] == [flag(rebuild, "lease-name")]
    services = {
        hook["clientConfig"]["service"]["name"]
        for kind in WEBHOOK_KINDS
        for hook in one(docs, kind, "canary.fulcrum.io")["webhooks"]
    }
    assert services == {"canary-webhook"}
    exists("Service", "canary-webhook")
    if source == "generate":
        secret = one(docs, "Secret", "canary-webhook-tls")
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "canary-webhook.ns5.svc" in sans.get_values_for_type(x509.DNSName)
    if source == "cert-manager":
        certificate = one(docs, "Certificate", "canary-webhook")
        assert certificate["spec"]["dnsNames"] == ["canary-webhook.ns5.svc"]
        assert certificate["spec"]["secretName"] == "canary-webhook-tls"
        exists("Issuer", certificate["spec"]["issuerRef"]["name"])
        for kind in WEBHOOK_KINDS:
            annotations = one(docs, kind)["metadata"]["annotations"]
            assert annotations == {"cert-manager.io/inject-ca-from": "ns5/canary-webhook"}


def test_a_second_release_shares_no_object_with_the_first(helm: Path) -> None:
    """Even in one namespace: no object of one release is also the other's, and no selector
    of one selects the other's pods. The CRDs, not rendered here, are shared."""
    first = render(helm, "node.enabled=true", "cni.install=true", namespace="fulcrum-system")
    second = render(
        helm,
        "fullnameOverride=fulcrum-canary",
        "schedulerName=fulcrum-canary",
        "node.enabled=true",
        "cni.install=true",
        namespace="fulcrum-system",
    )
    assert not _keys(first) & _keys(second)
    for one_release, other in ((first, second), (second, first)):
        pods = [t["metadata"]["labels"] for t in pod_templates(other).values()]
        pods += [d["spec"]["template"]["metadata"]["labels"] for d in find(other, "DaemonSet")]
        for deployment in find(one_release, "Deployment") + find(one_release, "DaemonSet"):
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert not any(selector.items() <= labels.items() for labels in pods)
    profiles = [
        config_map_file(docs, "kube-scheduler.yaml", name)["profiles"][0]["schedulerName"]
        for docs, name in ((first, "fulcrum-config"), (second, "fulcrum-canary-config"))
    ]
    assert profiles == [SCHEDULER_NAME, "fulcrum-canary"]


# --- the webhook certificate, by source ------------------------------------------------------


def _admission_configs(namespace: str, ca_bundle: str | None) -> list[Doc]:
    client: dict[str, Any] = {
        "service": {"namespace": namespace, "name": "fulcrum-webhook", "port": 443}
    }
    if ca_bundle:
        client["caBundle"] = ca_bundle
    return webhook_configurations(client)


def _without_metadata_extras(doc: Doc) -> Doc:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels")
    doc["metadata"].pop("annotations", None)
    return doc


def _ca_bundles(docs: list[Doc]) -> set[str | None]:
    return {
        hook["clientConfig"].get("caBundle")
        for kind in WEBHOOK_KINDS
        for hook in one(docs, kind)["webhooks"]
    }


CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot checked here\n").decode()


@pytest.mark.parametrize(
    ("sets", "ca_from_secret", "ca"),
    [
        (["webhook.certificate.source=generate"], True, None),
        (["webhook.certificate.source=secret"], False, None),
        (["webhook.certificate.source=secret", f"webhook.certificate.caBundle={CA}"], False, CA),
        (["webhook.certificate.source=cert-manager"], False, None),
    ],
    ids=["generate", "secret", "secret-with-caBundle", "cert-manager"],
)
def test_the_webhook_configurations_are_the_ones_admission_config_writes(
    helm: Path, sets: list[str], ca_from_secret: bool, ca: str | None
) -> None:
    docs = render(helm, *sets, namespace="ns2")
    if ca_from_secret:
        ca = one(docs, "Secret", "fulcrum-webhook-tls")["data"]["ca.crt"]
    for got, want in zip(
        (one(docs, kind, "fulcrum.io") for kind in WEBHOOK_KINDS),
        _admission_configs("ns2", ca),
        strict=True,
    ):
        assert _without_metadata_extras(got) == want, f"{got['kind']}: edit the chart's template"


@pytest.mark.parametrize(
    ("namespace", "exempt"),
    [("ns4", ["kube-system", "ns4"]), ("kube-system", ["kube-system"])],
)
def test_no_webhook_sees_kube_system_or_the_release_namespace(
    helm: Path, namespace: str, exempt: list[str]
) -> None:
    docs = render(helm, namespace=namespace)
    rule = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": exempt}
    for kind in WEBHOOK_KINDS:
        for hook in one(docs, kind)["webhooks"]:
            assert hook["namespaceSelector"]["matchExpressions"] == [rule], hook["name"]


def test_a_generated_certificate_is_signed_by_the_ca_in_the_configurations(helm: Path) -> None:
    sets = ("webhook.certificate.validityDays=30", "webhook.certificate.renewBeforeDays=10")
    docs = render(helm, *sets, namespace="ns3")
    secret = one(docs, "Secret", "fulcrum-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    pem = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(pem["ca.crt"])
    cert = x509.load_pem_x509_certificate(pem["tls.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fulcrum-webhook.ns3.svc" in names.get_values_for_type(x509.DNSName)
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)
    key = load_pem_private_key(pem["tls.key"], password=None)
    public = cert.public_key()
    assert isinstance(key, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    assert _ca_bundles(docs) == {secret["data"]["ca.crt"]}
    webhook = one(docs, "Deployment", "fulcrum-webhook")["spec"]["template"]["spec"]
    volumes = {v["name"]: v["secret"] for v in webhook["volumes"] if "secret" in v}
    assert volumes["tls"]["secretName"] == "fulcrum-webhook-tls"
    assert [i["key"] for i in volumes["tls"]["items"]] == ["tls.crt", "tls.key"]  # no ca.key


def _rules(doc: Doc) -> list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return [
        (
            ",".join(r["apiGroups"]),
            tuple(r["resources"]),
            tuple(r.get("resourceNames", ())),
            tuple(r["verbs"]),
        )
        for r in doc["rules"]
    ]


@pytest.mark.parametrize("prefix", ["fulcrum", "canary"])
def test_a_generated_certificate_is_renewed_by_the_webhook_with_rights_to_it_alone(
    helm: Path, prefix: str
) -> None:
    sets = [] if prefix == "fulcrum" else [f"fullnameOverride={prefix}"]
    docs = render(helm, *sets, "webhook.certificate.renewBeforeDays=20", namespace="ns6")
    name, config, secret = f"{prefix}-webhook", webhook_config_name(prefix), f"{prefix}-webhook-tls"
    (container,) = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["command"][1:])
    managed = managed_certificate(
        args.manage_certificate,
        service=args.service,
        configuration=args.webhook_configuration,
        renew_before_days=args.renew_before_days,
        validity_days=args.certificate_validity_days,
    )
    assert (managed.namespace, managed.secret, managed.configuration) == ("ns6", secret, config)
    assert managed.host == f"{name}.ns6.svc"
    assert managed.renew_before == datetime.timedelta(days=20)
    for kind in WEBHOOK_KINDS:
        one(docs, kind, config)
    # the chart's Secret is what the webhook would keep: no renewal at its first start
    data = {k: base64.b64decode(v) for k, v in one(docs, "Secret", secret)["data"].items()}
    stored = certs.parse_stored(data)
    assert stored.ca is not None and stored.serving is not None
    now = datetime.datetime.now(datetime.UTC)
    decision = certs.renewal(stored, host=managed.host, now=now, renew_before=managed.renew_before)
    assert not decision.needed, decision.reason
    # RBAC: get/update of that one Secret (no create: the chart makes it), get/patch of the two
    # configurations by name
    role = one(docs, "Role", name)
    assert role["metadata"]["namespace"] == "ns6"
    assert _rules(role) == [("", ("secrets",), (secret,), ("get", "update"))]
    binding = one(docs, "RoleBinding", name)
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "ns6"}]
    assert _rules(one(docs, "ClusterRole", name))[1:] == [
        (
            "admissionregistration.k8s.io",
            ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"),
            (config,),
            ("get", "patch"),
        )
    ]


@pytest.mark.parametrize("source", ["secret", "cert-manager"])
def test_a_certificate_from_elsewhere_is_not_the_webhooks_to_manage(
    helm: Path, source: str
) -> None:
    docs = render(helm, f"webhook.certificate.source={source}")
    (container,) = one(docs, "Deployment", "fulcrum-webhook")["spec"]["template"]["spec"][
        "containers"
    ]
    assert build_parser().parse_args(container["command"][1:]).manage_certificate is None
    assert not find(docs, "Role", "fulcrum-webhook")
    assert _rules(one(docs, "ClusterRole", "fulcrum-webhook")) == [
        ("fulcrum.io", ("ippools",), (), ("list",))
    ]


def test_a_renewal_window_as_long_as_the_lifetime_is_refused(helm: Path) -> None:
    sets = ("webhook.certificate.validityDays=30", "webhook.certificate.renewBeforeDays=30")
    with pytest.raises(chart.ChartError, match=r"renewBeforeDays 30 is not less than"):
        render(helm, *sets)


def webhook_config_name(prefix: str) -> str:
    return "fulcrum.io" if prefix == "fulcrum" else f"{prefix}.fulcrum.io"


def _certificate_secrets(docs: list[Doc]) -> list[Doc]:
    """The Secrets but the extender's ServiceAccount token."""
    return [
        s for s in find(docs, "Secret") if s.get("type") != "kubernetes.io/service-account-token"
    ]


def test_a_user_secret_renders_no_certificate(helm: Path) -> None:
    docs = render(helm, "webhook.certificate.source=secret", "webhook.certificate.secretName=mine")
    assert not _certificate_secrets(docs) and not find(docs, "Certificate")
    assert _ca_bundles(docs) == {None}
    webhook = one(docs, "Deployment", "fulcrum-webhook")["spec"]["template"]["spec"]
    (tls,) = [v["secret"] for v in webhook["volumes"] if v["name"] == "tls"]
    assert tls["secretName"] == "mine"


def test_cert_manager_issues_the_certificate_and_injects_its_ca(helm: Path) -> None:
    docs = render(helm, "webhook.certificate.source=cert-manager", namespace="ns4")
    certificate = one(docs, "Certificate", "fulcrum-webhook")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == "fulcrum-webhook-tls"
    assert certificate["spec"]["dnsNames"] == ["fulcrum-webhook.ns4.svc"]
    # the chart's own CA signs it, so a renewal of it leaves the injected caBundle (the CA) as is
    issuer = one(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert certificate["spec"]["issuerRef"]["kind"] == "Issuer"
    ca = one(docs, "Certificate", "fulcrum-webhook-ca")
    assert issuer["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert ca["spec"]["isCA"] is True and ca["spec"]["duration"] == f"{3650 * 24}h"
    assert certificate["spec"]["duration"] == f"{365 * 24}h"
    self_signed = one(docs, "Issuer", ca["spec"]["issuerRef"]["name"])
    assert self_signed["spec"] == {"selfSigned": {}}
    for kind in WEBHOOK_KINDS:
        annotations = one(docs, kind)["metadata"]["annotations"]
        assert annotations == {"cert-manager.io/inject-ca-from": "ns4/fulcrum-webhook"}
    assert not _certificate_secrets(docs) and _ca_bundles(docs) == {None}

    docs = render(
        helm,
        "webhook.certificate.source=cert-manager",
        "webhook.certificate.certManager.issuerRef.name=corp-ca",
        "webhook.certificate.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not find(docs, "Issuer")
    issuer_ref = one(docs, "Certificate")["spec"]["issuerRef"]
    assert issuer_ref == {"name": "corp-ca", "kind": "ClusterIssuer"}


# --- PodMonitor ------------------------------------------------------------------------------


def test_the_pod_monitor_is_rendered_only_when_enabled(helm: Path) -> None:
    assert not find(render(helm), "PodMonitor")
    docs = render(
        helm,
        "podMonitor.enabled=true",
        "metrics.expose=true",
        "podMonitor.labels.release=prometheus",
        "podMonitor.tokenSecret.name=prometheus-token",
    )
    monitor = one(docs, "PodMonitor", "fulcrum-scheduler")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pod = one(docs, "Deployment", "fulcrum-scheduler")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    scheduler, extender = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert scheduler["port"] in ports and scheduler["scheme"] == "https"
    assert scheduler["authorization"]["credentials"] == {"name": "prometheus-token", "key": "token"}
    assert extender["port"] == "metrics" and "metrics" in ports  # fulcrum serve --metrics-port
    rebuild = one(docs, "PodMonitor", "fulcrum-rebuild")
    controller = one(docs, "Deployment", "fulcrum-rebuild")["spec"]["template"]["spec"]
    assert rebuild["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert "metrics" in {p["name"] for c in controller["containers"] for p in c.get("ports", [])}
    without_token = one(
        render(helm, "podMonitor.enabled=true", "metrics.expose=true"),
        "PodMonitor",
        "fulcrum-scheduler",
    )
    assert "authorization" not in without_token["spec"]["podMetricsEndpoints"][0]


def test_go_defaults_leave_kube_scheduler_without_gc_settings(helm: Path) -> None:
    docs = render(helm, "scheduler.goGC=0", "scheduler.goMemLimit=")
    [kube_scheduler] = [
        c
        for c in one(docs, "Deployment", "fulcrum-scheduler")["spec"]["template"]["spec"][
            "containers"
        ]
        if c["name"] == "kube-scheduler"
    ]
    assert "env" not in kube_scheduler


# --- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["scheduler.replicas=-1"], "/scheduler/replicas"),
        (["webhook.replicas=0"], "/webhook/replicas"),
        (["webhook.certificate.source=self-made"], "/webhook/certificate/source"),
        (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["extender.httpTimeout=soon"], "/extender/httpTimeout"),
        (["rebuild.replica=2"], "replica"),  # a typo: unknown keys are refused
        (["scheduler.percentageOfNodesToScore=101"], "/scheduler/percentageOfNodesToScore"),
        (["scheduler.goMemLimit=2G"], "/scheduler/goMemLimit"),  # Go wants GiB, not G
        (["imagePullSecrets={regcred}"], "/imagePullSecrets/0"),  # [{name: regcred}]
        (["log.level=verbose"], "/log/level"),
        (["log.format=logfmt"], "/log/format"),
        ([r"podLabels.app\.kubernetes\.io/name=x"], "/podLabels/app.kubernetes.io~1name"),
        (["podAnnotations.checksum/config=x"], "/podAnnotations/checksum~1config"),
        (["affinity.nodeAfinity.x=y"], "nodeAfinity"),  # a typo
        (["extraEnv[0].value=x"], "/extraEnv/0"),  # no name
        (["serviceAccount.annotations.a=1"], "/serviceAccount/annotations/a"),  # not a string
        (["fullnameOverride=Canary_1"], "/fullnameOverride"),
        ([f"fullnameOverride=c{'a' * 40}"], "/fullnameOverride"),  # Services' names: 63
        (["schedulerName=Fulcrum Canary"], "/schedulerName"),
    ],
    ids=[
        "negative-replicas",
        "zero-replicas",
        "source",
        "pull-policy",
        "timeout",
        "typo",
        "pct",
        "memlimit",
        "pull-secret-string",
        "log-level",
        "log-format",
        "pod-label-of-the-chart",
        "pod-annotation-of-the-chart",
        "affinity-typo",
        "env-without-name",
        "sa-annotation-number",
        "fullname-chars",
        "fullname-long",
        "scheduler-name",
    ],
)
def test_a_bad_value_is_refused_naming_it(helm: Path, sets: list[str], message: str) -> None:
    with pytest.raises(chart.ChartError) as failed:
        chart.template(helm, set_values=sets)
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)


def test_kube_scheduler_binding_without_fulcrums_pick_is_refused(helm: Path) -> None:
    with pytest.raises(chart.ChartError) as failed:
        chart.template(helm, set_values=["extender.decideInFilter=false"])
    assert "extender.bindAll: false needs extender.decideInFilter: true" in str(failed.value)


def test_metrics_listen_on_loopback_unless_exposed_behind_a_network_policy(helm: Path) -> None:
    def flags(docs: list[Doc]) -> tuple[list[str], list[str]]:
        pod = one(docs, "Deployment", "fulcrum-scheduler")["spec"]["template"]["spec"]
        [extender] = [c for c in pod["containers"] if c["name"] == "extender"]
        rebuild = one(docs, "Deployment", "fulcrum-rebuild")["spec"]["template"]["spec"]
        return extender["command"], rebuild["containers"][0]["command"]

    hidden = render(helm)
    assert not find(hidden, "NetworkPolicy")
    extender, rebuild = flags(hidden)
    assert not [f for f in extender + rebuild if f.startswith(("--metrics-host", "--health-host"))]
    with pytest.raises(chart.ChartError, match=r"needs metrics\.expose: true"):
        render(helm, "podMonitor.enabled=true")

    exposed = render(helm, "metrics.expose=true", "metrics.from[0].podSelector.matchLabels.a=b")
    extender, rebuild = flags(exposed)
    assert "--metrics-host=0.0.0.0" in extender and "--health-host=0.0.0.0" in rebuild
    for component, ports in (("scheduler", [9090, 10259]), ("rebuild", [8889])):
        policy = one(exposed, "NetworkPolicy", f"fulcrum-{component}-metrics")["spec"]
        assert policy["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": f"fulcrum-{component}"
        }
        [rule] = policy["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": {"a": "b"}}}]
        assert [p["port"] for p in rule["ports"]] == ports


def test_uninstalling_releases_every_finalizer_before_anything_goes(helm: Path) -> None:
    """A pre-delete hook Job runs `fulcrum rebuild --release-all` as the controller's account,
    on the controller's Lease; the extender is told that Lease and the bound (docs/rebuild.md)."""
    docs = render(helm, "rebuild.releaseAfterSeconds=30", "rebuild.nodeNotReadySeconds=60")
    job = one(docs, "Job", "fulcrum-rebuild-release-all")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "fulcrum-rebuild"
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"][:3] == ["fulcrum", "rebuild", "--release-all"]
    controller = containers(docs, "fulcrum-rebuild")["rebuild"]
    assert flag(controller, "node-not-ready-seconds") == "60"
    for name in ("lease-namespace", "lease-name"):
        assert flag(container, name) == flag(controller, name)
    extender = containers(docs, "fulcrum-scheduler")["extender"]
    assert flag(extender, "rebuild-lease-namespace") == flag(controller, "lease-namespace")
    assert flag(extender, "rebuild-lease-name") == flag(controller, "lease-name")
    assert flag(extender, "release-after") == "30"
    rules = one(docs, "ClusterRole", "fulcrum-extender")["rules"]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "resourceNames": ["fulcrum-rebuild"], "verbs": ["get"]} in rules  # fmt: skip

    assert not find(render(helm, "rebuild.releaseOnUninstall=false"), "Job")


def test_the_cni_plugin_is_installed_on_every_node_only_when_asked(helm: Path) -> None:
    """cni.install: a DaemonSet copies fulcrum-ipam from the Fulcrum image into each node's CNI
    binary directory, atomically (a temporary name, then a rename), tolerating every taint."""
    assert not find(render(helm), "DaemonSet")
    docs = render(helm, "cni.install=true", "cni.binDir=/var/lib/cni/bin", "image.tag=9.9")
    daemonset = one(docs, "DaemonSet", "fulcrum-cni")
    spec = daemonset["spec"]["template"]["spec"]
    (install,) = spec["initContainers"]
    assert install["image"] == "fulcrum:9.9"
    script = install["command"][-1]
    assert "cp /opt/fulcrum/bin/fulcrum-ipam /host/cni-bin/.fulcrum-ipam.tmp" in script
    assert "mv /host/cni-bin/.fulcrum-ipam.tmp /host/cni-bin/fulcrum-ipam" in script
    assert spec["volumes"] == [
        {"name": "cni-bin", "hostPath": {"path": "/var/lib/cni/bin", "type": "DirectoryOrCreate"}}
    ]
    assert spec["tolerations"] == [{"operator": "Exists"}]
    with pytest.raises(chart.ChartError, match="binDir"):
        render(helm, "cni.install=true", "cni.binDir=opt/cni/bin")
