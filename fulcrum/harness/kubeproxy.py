"""Services for the real nodes' pods: kube-proxy, and DNS for the ``kubernetes`` Service.

In-cluster clients find the API server as a Service: client-go and the Python client connect
to ``KUBERNETES_SERVICE_HOST``, the ``kubernetes`` Service's ClusterIP (the kubelet puts it in
every container's environment), and Fulcrum's extender names ``kubernetes.default.svc`` in its
kubeconfig (charts/fulcrum). Neither means anything on a host without what a cluster adds, so
``start`` runs, once per cluster (every real node shares the host's network):

- kube-proxy (the harness's build, ``kube-proxy`` of ``NODE_COMPONENTS``) in iptables mode: it
  DNATs each ClusterIP to the Service's endpoints. The ``kubernetes`` endpoint is the address
  kwokctl's API server advertises (the host's primary address; it listens on every address),
  which a pod reaches through its gateway, the host. It writes no sysctl: conntrack is left as
  the host has it, and NodePorts are not served on loopback (no ``route_localnet``).
- dnsmasq (Debian's ``dnsmasq-base``) on the pods' gateway, port 53, which the kubelets give
  pods as their nameserver (``clusterDNS``): it answers ``kubernetes.default.svc.cluster.local``
  with the ClusterIP and NXDOMAIN for every other name under ``cluster.local`` (no other
  Service is named here), and nothing else (no upstream).

The API server's certificate carries the ClusterIP (``controlplane.kwokctl_config``), so TLS to
it verifies. ``stop`` ends both; the iptables rules kube-proxy added go with the kubelets'
(``realnodes.restore_iptables``).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from fulcrum.harness import processes

DNS_DOMAIN = "cluster.local"
DNSMASQ = Path("/usr/sbin/dnsmasq")
KUBERNETES_NAME = f"kubernetes.default.svc.{DNS_DOMAIN}"
_A, _IN = 1, 1


class ServiceNetworkError(RuntimeError):
    """kube-proxy or the DNS server did not start; the message names the cause and the fix."""


# --- kube-proxy --------------------------------------------------------------------------------


def kube_proxy_config(
    kubeconfig: Path, *, node: str, cluster_cidr: str, metrics_port: int, healthz_port: int
) -> dict[str, Any]:
    """A KubeProxyConfiguration for the host: iptables mode, its ports on loopback, no sysctl
    written (zero conntrack settings leave the host's; no NodePorts on localhost)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node,
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "nodePortAddresses": ["primary"],
        "oomScoreAdj": 0,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "1s"},
    }


def start_kube_proxy(
    directory: Path, binary: Path, kubeconfig: Path, *, node: str, cluster_cidr: str
) -> int:
    """kube-proxy as ``node``, its config and log in ``directory``; returns once its healthz
    answers (its first sync of the rules is done)."""
    directory.mkdir(parents=True, exist_ok=True)
    healthz = processes.free_port()
    settings = kube_proxy_config(
        kubeconfig,
        node=node,
        cluster_cidr=cluster_cidr,
        metrics_port=processes.free_port(),
        healthz_port=healthz,
    )
    path = directory / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(settings))
    cmd = [str(binary), f"--config={path}", "--v=1"]
    try:
        return processes.start_process(
            directory, "kube-proxy", cmd, f"http://127.0.0.1:{healthz}/healthz"
        )
    except processes.ProcessError as exc:
        raise ServiceNetworkError(f"kube-proxy: {exc}") from exc


def kubernetes_service(kubeconfig: Path) -> tuple[str, list[str]]:
    """The ``kubernetes`` Service's ClusterIP and its endpoints' addresses."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        service = client.CoreV1Api(api).read_namespaced_service("kubernetes", "default")
        slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=kubernetes"
        )
    finally:
        api.close()
    addresses = [a for s in slices.items for e in s.endpoints or [] for a in e.addresses]
    return str(service.spec.cluster_ip), addresses


def check_reachable(addresses: list[str]) -> None:
    """Refuse an API server that pods cannot reach through kube-proxy: one advertised on
    loopback (a DNAT to 127.0.0.1 from a pod goes to the pod itself)."""
    if not addresses:
        raise ServiceNetworkError(
            "the `kubernetes` Service has no endpoint: is the API server up and advertising "
            "an address (kube-apiserver --advertise-address)?"
        )
    looped = [a for a in addresses if ipaddress.ip_address(a).is_loopback]
    if looped:
        raise ServiceNetworkError(
            f"the API server advertises {looped[0]}, which pods cannot reach through the "
            "`kubernetes` ClusterIP: give kube-apiserver --advertise-address a host address "
            "(controlplane.kwokctl_config)"
        )


# --- DNS ---------------------------------------------------------------------------------------


def dnsmasq_config(directory: Path, listen: str, records: Mapping[str, str]) -> str:
    """dnsmasq on ``listen``:53 only, authoritative for ``cluster.local`` with ``records``
    (name -> IPv4), no upstream; logs to stderr (its log file)."""
    lines = [
        "port=53",
        f"listen-address={listen}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        "user=nobody",
        "group=nogroup",
        f"pid-file={directory / 'dnsmasq.pid'}",
        "log-facility=-",
        f"local=/{DNS_DOMAIN}/",
        *(f"host-record={name},{ip}" for name, ip in sorted(records.items())),
    ]
    return "\n".join(lines) + "\n"


def start_dns(directory: Path, listen: str, records: Mapping[str, str]) -> int:
    """dnsmasq answering ``records`` on ``listen``:53, its config and log in ``directory``;
    returns once it answers the first record."""
    if not DNSMASQ.is_file():
        raise ServiceNetworkError(f"{DNSMASQ} is missing: apt-get install dnsmasq-base")
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "dnsmasq.conf"
    conf.write_text(dnsmasq_config(directory, listen, records))
    log = directory / "dnsmasq.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(DNSMASQ), "--keep-in-foreground", f"--conf-file={conf}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
    name, ip = next(iter(records.items()))
    deadline = time.monotonic() + 20
    while resolve(listen, name, timeout=0.5) != ip:
        if proc.poll() is not None:
            tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-8:])
            raise ServiceNetworkError(f"dnsmasq exited at start-up (log: {log}):\n  {tail}")
        if time.monotonic() > deadline:
            processes.terminate([proc.pid])
            raise ServiceNetworkError(f"dnsmasq did not answer {name} in 20 s; see {log}")
    return proc.pid


def _skip_name(message: bytes, offset: int) -> int:
    """The offset after the (possibly compressed) domain name at ``offset``."""
    while True:
        length = message[offset]
        if length >= 0xC0:  # a pointer ends the name
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def resolve(server: str, name: str, *, port: int = 53, timeout: float = 2) -> str | None:
    """The first IPv4 address ``server`` answers for ``name`` (one UDP query, no search list);
    None for NXDOMAIN, no answer or no reply."""
    ident = random.randrange(1 << 16)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    query = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0"
    query += struct.pack("!2H", _A, _IN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (server, port))
            reply = sock.recv(4096)
        except OSError:
            return None
    got, flags, questions, answers = struct.unpack("!4H", reply[:8])
    if got != ident or flags & 0xF:  # another reply, or an error code (3: NXDOMAIN)
        return None
    offset = 12
    for _ in range(questions):
        offset = _skip_name(reply, offset) + 4
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        kind, cls, _ttl, size = struct.unpack("!2HIH", reply[offset : offset + 10])
        offset += 10
        if kind == _A and cls == _IN and size == 4:
            return socket.inet_ntoa(reply[offset : offset + 4])
        offset += size
    return None


# --- both --------------------------------------------------------------------------------------


def start(
    root: Path, binary: Path, kubeconfig: Path, *, node: str, cluster_cidr: str, dns: str
) -> str:
    """The DNS server on ``dns`` and kube-proxy (as ``node``) under ``root``; the ``kubernetes``
    Service's ClusterIP."""
    cluster_ip, addresses = kubernetes_service(kubeconfig)
    check_reachable(addresses)
    start_dns(root / "dns", dns, {KUBERNETES_NAME: cluster_ip})
    start_kube_proxy(root / "kube-proxy", binary, kubeconfig, node=node, cluster_cidr=cluster_cidr)
    wait_routed(cluster_ip, 443, root / "kube-proxy" / "kube-proxy.log")
    return cluster_ip


def wait_routed(ip: str, port: int, log: Path, timeout: float = 60) -> None:
    """Until a connection to ``ip:port`` opens: kube-proxy's healthz answers before its first
    sync has written the Service's rules."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ServiceNetworkError(
                    f"{ip}:{port} (the kubernetes Service) not routed {timeout:.0f} s after "
                    f"kube-proxy started ({exc}); see {log}"
                ) from exc
        time.sleep(0.2)


def stop(root: Path) -> None:
    """End kube-proxy and the DNS server of the real nodes under ``root``."""
    for directory in (root / "kube-proxy", root / "dns"):
        processes.terminate(list(processes.processes_under(directory)))
