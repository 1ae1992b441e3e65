"""The control plane of a local cluster: kwokctl's binary runtime with the binaries built here.

kwokctl keeps its workdir (``KWOK_WORKDIR``) in the cluster's state directory: the components'
configs, logs, etcd's data and the PKI (a CA and an admin certificate the API server serves
with and accepts).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fulcrum.harness.kwok_stages import STAGES_PATH

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.0.0.0/24"  # kube-apiserver's default, pinned: the kubernetes Service's below
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR


class ControlPlaneError(RuntimeError):
    """kwokctl failed; the message says what it printed."""


def workdir(directory: Path) -> Path:
    """kwokctl's workdir in the cluster's state ``directory``."""
    return directory / "kwok"


def contexts_file(directory: Path) -> Path:
    """Where kwokctl may add and remove its context, instead of the user's ~/.kube/config."""
    return directory / "kwokctl-contexts.yaml"


def pki(directory: Path, name: str) -> Path:
    """kwokctl's PKI of cluster ``name``: ``ca.crt``, ``admin.crt``, ``admin.key``."""
    return workdir(directory) / "clusters" / name / "pki"


def kwokctl(kwokctl_bin: Path, directory: Path, name: str, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ, KWOK_WORKDIR=str(workdir(directory)))
    cmd = [str(kwokctl_bin), *args, "--name", name]
    try:
        result = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ControlPlaneError(
            f"`kwokctl {' '.join(args)}` did not finish in {timeout:.0f} s"
        ) from exc
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip().splitlines()
        raise ControlPlaneError(
            f"`kwokctl {' '.join(args)}` failed (exit {result.returncode}):\n  "
            + "\n  ".join(out[-15:])
        )
    return result.stdout


def kwokctl_config(directory: Path, name: str, *, real_nodes: bool = False) -> dict[str, Any]:
    """kwok's controller fakes only the nodes annotated kwok.x-k8s.io/node=fake (every node the
    harness registers), not all nodes as kwokctl's binary runtime has it: the real nodes
    (``realnodes``) run their own pods, and kwok must leave them alone. The API server reaches
    a Service's webhook or proxy at its endpoints' pod IPs, as where no kube-proxy runs beside
    it (only real nodes bring one, ``kubeproxy``), and a kubelet (logs, exec) with the admin
    certificate, which the real nodes' kubelets authenticate against the cluster CA, at their
    InternalIP (no DNS knows the nodes' names). Its serving certificate also carries the
    ``kubernetes`` Service's ClusterIP, where in-cluster clients on real nodes connect.

    kwokctl has the node lifecycle controller wait 3m20s before it marks a silent node NotReady
    (kwok's heartbeats for thousands of nodes may lag); with ``real_nodes``, whose kubelets do
    die, it waits what a cluster's controller-manager does by default: 50 s, checked every 5 s."""
    certs = pki(directory, name)
    apiserver_args = {
        "service-cluster-ip-range": SERVICE_CIDR,
        "enable-aggregator-routing": "true",
        "kubelet-client-certificate": str(certs / "admin.crt"),
        "kubelet-client-key": str(certs / "admin.key"),
        "kubelet-preferred-address-types": "InternalIP,Hostname",
    }
    monitor = {"node-monitor-grace-period": "50s", "node-monitor-period": "5s"}
    return {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {"kubeApiserverCertSANs": [KUBERNETES_SERVICE_IP]},
        "componentsPatches": [
            {
                "name": "kube-apiserver",
                "extraArgs": [
                    {"key": key, "value": value, "override": False}
                    for key, value in apiserver_args.items()
                ],
            },
            {
                "name": "kube-controller-manager",
                "extraArgs": [
                    {"key": key, "value": value, "override": True}
                    for key, value in (monitor.items() if real_nodes else ())
                ],
            },
            {
                "name": "kwok-controller",
                "extraArgs": [
                    {"key": "manage-all-nodes", "value": "false", "override": True},
                    {
                        "key": "manage-nodes-with-annotation-selector",
                        "value": f"{FAKE_NODE_ANNOTATION}=fake",
                        "override": False,
                    },
                ],
            },
        ],
    }


def create(
    binaries: Mapping[str, Path], directory: Path, name: str, *, real_nodes: bool = False
) -> None:
    """kwokctl's binary runtime with our binaries: apiserver, etcd, controller-manager,
    default-scheduler and kwok's controller (``kwokctl_config``)."""
    config = directory / "kwokctl-config.yaml"
    config.write_text(yaml.safe_dump(kwokctl_config(directory, name, real_nodes=real_nodes)))
    flags = [
        f"--{component}-binary={binaries[binary]}"
        for component, binary in (
            ("kube-apiserver", "kube-apiserver"),
            ("kube-controller-manager", "kube-controller-manager"),
            ("kube-scheduler", "kube-scheduler"),
            ("kwok-controller", "kwok"),
            ("etcd", "etcd"),
        )
    ]
    kwokctl(
        binaries["kwokctl"],
        directory,
        name,
        "--config",
        str(STAGES_PATH),
        "--config",
        str(config),
        "create",
        "cluster",
        "--runtime",
        "binary",
        "--kubeconfig",
        str(contexts_file(directory)),
        "--wait",
        "3m",
        "--disable-qps-limits",
        *flags,
        timeout=400,
    )


def delete(kwokctl_bin: Path, directory: Path, name: str) -> None:
    kwokctl(
        kwokctl_bin,
        directory,
        name,
        "delete",
        "cluster",
        "--kubeconfig",
        str(contexts_file(directory)),
        timeout=120,
    )


def metric_endpoints(directory: Path, name: str) -> dict[str, dict[str, Any]]:
    """Each component's metrics address as kwokctl wrote it in its ``kwok.yaml``: component name
    (``etcd``, ``kube-apiserver``, ``kube-scheduler``...) -> ``{host, scheme, path, certPath,
    keyPath, insecureSkipVerify}``. etcd serves plain HTTP on loopback; the others HTTPS, their
    /healthz and /metrics open to anyone (``--authorization-always-allow-paths``)."""
    path = workdir(directory) / "clusters" / name / "kwok.yaml"
    for document in yaml.safe_load_all(path.read_text()):
        if isinstance(document, dict) and isinstance(document.get("components"), list):
            return {
                str(c["name"]): dict(c["metric"])
                for c in document["components"]
                if isinstance(c, dict) and isinstance(c.get("metric"), dict)
            }
    return {}
