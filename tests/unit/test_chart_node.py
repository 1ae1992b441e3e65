"""The chart's node agent (charts/fulcrum/templates/node.yaml, node-rbac.yaml; values ``node.*``):
rendered only when ``node.enabled``; its command line, parsed by ``fulcrum``'s own parser; the
host's sockets and directories it mounts; its privileges; its RBAC, exactly; bad values refused.

helm as in test_chart.py (built by `fulcrum build`; these tests skip without it unless CI is set).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from fulcrum.cli import build_parser
from fulcrum.harness import chart
from node.agent import parse_options
from tests.unit.test_chart import Doc, env, find, helm, one, render

__all__ = ["helm"]  # the fixture, shared with test_chart.py

NODE = "fulcrum-node"
CHECKS_ROOT = "node-checks.root=/host"
# What the agent does with the API (fulcrum/run/node_serve.py), and nothing else.
NODE_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def pod_spec(docs: list[Doc], name: str = NODE) -> Doc:
    spec: Doc = one(docs, "DaemonSet", name)["spec"]["template"]["spec"]
    return spec


def agent(docs: list[Doc], name: str = NODE) -> Doc:
    (container,) = pod_spec(docs, name)["containers"]
    return container


def agent_args(container: Doc) -> argparse.Namespace:
    """The agent's command line, parsed by `fulcrum`'s own argument parser."""
    command = container["command"]
    assert command[:2] == ["fulcrum", "node"]
    return build_parser().parse_args(command[1:])


def mounts(docs: list[Doc]) -> dict[str, tuple[Doc, Doc]]:
    """mountPath -> (the volumeMount, its volume's hostPath or emptyDir)."""
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for mount in agent(docs)["volumeMounts"]:
        volume = volumes[mount["name"]]
        out[mount["mountPath"]] = (mount, volume.get("hostPath", volume.get("emptyDir")))
    assert len(out) == len(volumes), "a volume no container mounts"
    return out


# --- on or off ---------------------------------------------------------------------------------


def test_the_node_agent_is_rendered_only_when_enabled(helm: Path) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in render(helm)}
    assert not {n for n in names if n[1] == NODE}
    docs = render(helm, "node.enabled=true")
    node_objects = {(d["kind"], d["metadata"]["name"]) for d in docs} - names
    assert node_objects == {
        ("DaemonSet", NODE),
        ("ServiceAccount", NODE),
        ("ClusterRole", NODE),
        ("ClusterRoleBinding", NODE),
    }


# --- the command line --------------------------------------------------------------------------


def test_the_default_agent_runs_gpu_node_checks_and_prepull_on_the_hosts_paths(helm: Path) -> None:
    container = agent(render(helm, "node.enabled=true"))
    args = agent_args(container)
    assert args.node == "$(NODE_NAME)"  # the kubelet expands it from the env below
    assert env(container)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert args.plugins == "gpu,node-checks,prepull"
    assert args.plugin_option == [CHECKS_ROOT]
    assert args.fake_gpus is None and args.gpu_model is None
    assert args.nri_socket == Path("/var/run/nri/nri.sock")
    assert args.kubelet_root == Path("/var/lib/kubelet")
    assert args.runtime_socket == Path("/run/containerd/containerd.sock")
    assert args.kubelet_healthz == "http://127.0.0.1:10248/healthz"  # the CLI's: on loopback
    assert args.kubeconfig is None  # the pod's ServiceAccount
    assert (args.metrics_host, args.metrics_port, args.check_interval) == ("127.0.0.1", 9464, 60)
    assert (args.log_level, args.log_format) == ("info", "text")


def test_plugins_options_and_fake_gpus_reach_the_agents_command(helm: Path, tmp_path: Path) -> None:
    values = {
        "node": {
            "enabled": True,
            "plugins": ["gpu", "node-checks", "annotation-env"],
            "pluginOptions": {
                "annotation-env.path": "/data/scratch dir",
                "node-checks.root": "/elsewhere",  # after the chart's: it wins
                "node-checks.runtime_root": "/var/lib/containers/storage",
                "gpu.devices": 2,  # a number is written as given
            },
            "fakeGpus": 4,
            "gpuModel": "A100-SXM4-80GB",
            "checkInterval": 2.5,
        },
        "log": {"level": "debug"},
    }
    args = agent_args(agent(render(helm, values_files=[values_file(tmp_path, values)])))
    assert args.plugins == "gpu,node-checks,annotation-env"
    assert args.plugin_option[0] == CHECKS_ROOT
    assert parse_options(args.plugin_option) == {
        "node-checks.root": "/elsewhere",
        "annotation-env.path": "/data/scratch dir",
        "node-checks.runtime_root": "/var/lib/containers/storage",
        "gpu.devices": "2",
    }
    assert (args.fake_gpus, args.gpu_model) == (4, "A100-SXM4-80GB")
    assert args.check_interval == 2.5
    assert args.log_level == "debug"
    args = agent_args(agent(render(helm, "node.enabled=true", "node.fakeGpus=0")))
    assert args.fake_gpus is None  # 0: the node's real GPUs only


# --- what it mounts ----------------------------------------------------------------------------


def test_the_agent_mounts_the_socket_directories_the_kubelets_and_the_hosts_root(
    helm: Path,
) -> None:
    docs = render(helm, "node.enabled=true")
    found = mounts(docs)
    assert {path: source for path, (_, source) in found.items()} == {
        "/var/run/nri": {"path": "/var/run/nri", "type": "DirectoryOrCreate"},
        "/run/containerd": {"path": "/run/containerd", "type": "Directory"},
        "/var/lib/kubelet/plugins_registry": {
            "path": "/var/lib/kubelet/plugins_registry",
            "type": "Directory",
        },
        "/var/lib/kubelet/device-plugins": {
            "path": "/var/lib/kubelet/device-plugins",
            "type": "Directory",
        },
        "/host": {"path": "/", "type": "Directory"},
        "/tmp": {"sizeLimit": "64Mi"},
    }
    root, _ = found["/host"]
    assert root["readOnly"] is True
    assert root["mountPropagation"] == "HostToContainer"  # unmounts reach the pod too
    assert found["/run/containerd"][0]["mountPropagation"] == "HostToContainer"
    assert all(not m.get("readOnly") for p, (m, _) in found.items() if p != "/host")
    assert agent(docs)["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_host_paths_follow_the_values_at_the_same_paths(helm: Path) -> None:
    """Each socket's directory is mounted at its host path, so the flags name host paths; two
    sockets in one directory share a mount."""
    docs = render(
        helm,
        "node.enabled=true",
        "node.nriSocket=/run/k3s/containerd/nri.sock",
        "node.runtimeSocket=/run/k3s/containerd/containerd.sock",
        "node.kubeletRoot=/data/kubelet/",
    )
    args = agent_args(agent(docs))
    found = mounts(docs)
    for socket in (args.nri_socket, args.runtime_socket):
        assert found[str(socket.parent)][1]["path"] == str(socket.parent), socket
    assert args.kubelet_root == Path("/data/kubelet")
    for sub in ("plugins_registry", "device-plugins"):
        assert found[f"/data/kubelet/{sub}"][1]["path"] == f"/data/kubelet/{sub}"
    assert set(found) == {
        "/run/k3s/containerd",
        "/data/kubelet/plugins_registry",
        "/data/kubelet/device-plugins",
        "/host",
        "/tmp",
    }


# --- the pod -----------------------------------------------------------------------------------


def test_the_agent_is_privileged_node_critical_on_the_hosts_network_and_pids(
    helm: Path,
) -> None:
    docs = render(helm, "node.enabled=true")
    spec = pod_spec(docs)
    assert spec["hostNetwork"] is True  # the kubelet's healthz on the node's loopback
    assert spec["hostPID"] is True  # the kubelet's process for the checks
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == NODE
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert "nodeSelector" not in spec
    container = agent(docs)
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    assert container["image"] == "fulcrum:0.1.0"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "hostPort": 9464}]
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"host": "127.0.0.1", "port": 9464, "path": "/metrics"}


def test_metrics_elsewhere_are_probed_where_they_listen(helm: Path) -> None:
    for host, probed in (("0.0.0.0", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")):
        docs = render(
            helm, "node.enabled=true", f"node.metricsHost={host}", "node.metricsPort=9500"
        )
        args = agent_args(agent(docs))
        assert (args.metrics_host, args.metrics_port) == (host, 9500)
        probe = agent(docs)["livenessProbe"]["httpGet"]
        assert (probe["host"], probe["port"]) == (probed, 9500)


def test_the_node_image_defaults_to_the_charts_field_by_field(helm: Path) -> None:
    def image(*sets: str) -> str:
        return str(agent(render(helm, "node.enabled=true", *sets))["image"])

    assert image("image.repository=reg.example/fulcrum", "image.tag=9.9") == (
        "reg.example/fulcrum:9.9"
    )
    assert image("node.image.repository=reg.example/fulcrum-plugins") == (
        "reg.example/fulcrum-plugins:0.1.0"
    )
    assert image("node.image.repository=reg.example/p", "node.image.tag=7b", "image.tag=9.9") == (
        "reg.example/p:7b"
    )


def test_placement_resources_and_env_reach_the_agent(helm: Path, tmp_path: Path) -> None:
    values = {
        "node": {
            "enabled": True,
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"limits": {"memory": "1Gi"}},
            "extraEnv": [{"name": "PYTHONPATH", "value": "/plugins"}, {"name": "A", "value": "2"}],
        },
        "extraEnv": [{"name": "A", "value": "1"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podLabels": {"team": "ml"},
        "podAnnotations": {"example.com/owner": "ml"},
        "serviceAccount": {"annotations": {"example.com/role": "node"}},
    }
    docs = render(helm, values_files=[values_file(tmp_path, values)])
    daemonset = one(docs, "DaemonSet", NODE)
    template = daemonset["spec"]["template"]
    spec = template["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == values["node"]["tolerations"]  # type: ignore[index]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert template["metadata"]["labels"]["team"] == "ml"
    assert template["metadata"]["annotations"] == {"example.com/owner": "ml"}
    assert daemonset["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": NODE}
    container = agent(docs)
    assert container["resources"]["limits"]["memory"] == "1Gi"
    names = [e["name"] for e in container["env"]]
    assert names[-3:] == ["A", "PYTHONPATH", "A"]  # extraEnv, then node.extraEnv: it wins
    assert env(container)["A"] == "2"
    account = one(docs, "ServiceAccount", NODE)
    assert account["metadata"]["annotations"] == {"example.com/role": "node"}


def test_a_created_namespace_admits_the_privileged_agent(helm: Path) -> None:
    def enforce(*sets: str) -> str:
        namespace = one(render(helm, "namespace.create=true", *sets), "Namespace")
        return str(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"])

    assert enforce() == "restricted"
    assert enforce("node.enabled=true") == "privileged"
    assert enforce("cni.install=true") == "privileged"


# --- RBAC --------------------------------------------------------------------------------------


def test_the_agents_rbac_is_exactly_its_rules(helm: Path) -> None:
    docs = render(helm, "node.enabled=true", namespace="ns7")
    assert one(docs, "ClusterRole", NODE)["rules"] == NODE_RULES
    binding = one(docs, "ClusterRoleBinding", NODE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": NODE,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NODE, "namespace": "ns7"}]
    assert one(docs, "ServiceAccount", NODE)["metadata"]["namespace"] == "ns7"
    assert not [r for r in find(docs, "Role") + find(docs, "RoleBinding") if NODE in str(r)]


def test_a_fullname_override_names_the_agents_objects(helm: Path) -> None:
    docs = render(helm, "node.enabled=true", "fullnameOverride=canary")
    assert agent(docs, "canary-node")
    assert pod_spec(docs, "canary-node")["serviceAccountName"] == "canary-node"
    assert one(docs, "ClusterRoleBinding", "canary-node")["roleRef"]["name"] == "canary-node"
    assert not find(docs, "DaemonSet", NODE)


# --- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["node.fakeGpus=-1"], "/node/fakeGpus"),
        (["node.fakeGpus=1.5"], "/node/fakeGpus"),
        (["node.enabeld=true"], "enabeld"),  # a typo: unknown keys are refused
        (["node.pluginOptions.nodot=x"], "nodot"),  # PLUGIN.KEY
        (["node.nriSocket=var/run/nri/nri.sock"], "/node/nriSocket"),  # not absolute
        (["node.kubeletRoot=kubelet"], "/node/kubeletRoot"),
        (["node.metricsPort=0"], "/node/metricsPort"),
        (["node.checkInterval=0"], "/node/checkInterval"),
        (["node.plugins=null"], "missing property 'plugins'"),
        (["node.plugins={}"], "/node/plugins"),  # none
        (["node.plugins[0]=gpu node-checks"], "/node/plugins/0"),
        (["node.image.digest=sha256:x"], "digest"),
        (["node.extraEnv[0].value=x"], "/node/extraEnv/0"),  # no name
    ],
    ids=[
        "negative-gpus",
        "fractional-gpus",
        "typo",
        "option-without-plugin",
        "relative-socket",
        "relative-root",
        "port",
        "interval",
        "no-plugins",
        "empty-plugins",
        "plugin-name",
        "image-key",
        "env-without-name",
    ],
)
def test_a_bad_node_value_is_refused_naming_it(helm: Path, sets: list[str], message: str) -> None:
    with pytest.raises(chart.ChartError) as failed:
        chart.template(helm, set_values=sets)
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)
