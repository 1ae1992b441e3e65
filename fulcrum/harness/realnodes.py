"""Real nodes beside the kwok nodes: per node a kubelet with its own containerd, runc and CNI.

kwok fakes its nodes' pods; a claim about nodes (the pool's address on the pod's interface, the
data a rebuilt pod finds, the time a rollout takes) needs pods that really run. Each real node
here is what a machine of a real cluster runs, all on this host:

- containerd 2 (NRI on), its runc shim and Debian's runc, with its own root, state, sockets and
  CNI configuration; the sandbox image is a locally built ``pause``, imported (not pulled), so
  no registry outage can stop a sandbox;
- a kubelet (``cgroupfs`` driver, its own ``cgroupRoot``, root directory and ports) registered
  as ``real-<i>`` with the label ``fulcrum.io/node: real``; kwok manages only the nodes annotated
  ``kwok.x-k8s.io/node: fake``, so it leaves these alone;
- CNI: Debian's ``bridge`` plugin on one bridge for every real node (a flat pod network, as
  JDOS ran: ``POD_CIDR`` with the gateway on the host, so the host reaches every pod IP), with
  Fulcrum's ``fulcrum-ipam``: a pod of an IP pool gets the address Fulcrum assigned at bind
  (``fulcrum.io/assigned-ip``, from ``POOL_CIDR``), any other pod an address from its node's
  slice ``10.244.<i>.0/24`` by ``host-local``.

Pods pull from the cluster's registry on loopback (plain HTTP, ``hosts.toml``). The API server
reaches each kubelet at ``GATEWAY:<port>`` with its admin client certificate (logs, exec), and
each kubelet authenticates that certificate against the cluster CA and authorizes by webhook.
Pods reach the API server as in-cluster clients do, through the ``kubernetes`` Service: one
kube-proxy on the host routes ClusterIPs, and a DNS server on ``GATEWAY`` (the kubelets'
``clusterDNS``) names the Service (``kubeproxy``).

``stop`` undoes it all: kubelets, kube-proxy and the DNS server; the pods' processes (found by
the nodes' cgroups); the sandboxes' network namespaces and every mount under the nodes'
directories; containerd and its shims; the bridge; the cgroups; the iptables chains and rules
the kubelets and kube-proxy added. Needs root.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import yaml

from fulcrum.harness import cni, images, kubeproxy, nodeagent, processes

POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
POOL_CIDR = ipaddress.ip_network("10.244.128.0/17")  # kept for IP pools: no node's IPAM uses it
GATEWAY = "10.244.0.1"  # the bridge's address: the pods' gateway and the kubelets' node IP
NODE_LABEL = "fulcrum.io/node"
NODE_VALUE = "real"
MAX_NODES = 100  # node i takes 10.244.i.0/24, below POOL_CIDR
PAUSE_IMAGE = "fulcrum.local/pause:3.10"
# Debian packages the real nodes use (``.ci/run`` installs them), by a file each one installs
PACKAGES = {
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "docker-registry": "/usr/bin/docker-registry",  # the registry the nodes pull from
    "busybox-static": "/bin/busybox",  # the workloads' image (``images.busybox_image``)
    "dnsmasq-base": str(kubeproxy.DNSMASQ),  # the cluster DNS (``kubeproxy``)
}
CNI_BIN = "/usr/lib/cni"
# kubelet v1.34 hard-codes its device manager's directory (its registration socket and its
# allocation checkpoint) whatever its --root-dir: each kubelet gets its own, mounted there in
# a mount namespace of its own (``_own_device_plugins``)
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CGROUPS = Path("/sys/fs/cgroup")
# the kubelet's configMapAndSecretChangeDetectionStrategy: how it keeps the configmaps and
# secrets its pods mount up to date; Watch (its default) watches each one, Cache re-reads one
# older than the node's TTL annotation (the TTL controller's, 0 s below 100 nodes), Get re-reads
# each at every pod sync
CONFIGMAP_STRATEGIES = ("Get", "Cache", "Watch")


class RealNodeError(RuntimeError):
    """A real node could not start or stop; the message names the cause and the fix."""


@dataclass
class RealNode:
    name: str
    index: int
    kubelet_port: int
    healthz_port: int

    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.244.{self.index}.0/24")


def bridge_name(cluster: str) -> str:
    """One bridge per cluster, named after it (an interface name has at most 15 bytes)."""
    return "fulcrum" + hashlib.sha256(cluster.encode()).hexdigest()[:7]


def cgroup_root(cluster: str, node: str) -> str:
    return f"fulcrum-{hashlib.sha256(cluster.encode()).hexdigest()[:7]}-{node}"


def check_host(cluster: str) -> None:
    """Root, the Debian packages, and no other cluster on the pod network; else say the fix."""
    if os.geteuid() != 0:
        raise RealNodeError("real nodes need root (kubelet, containerd, the bridge); run as root")
    missing = [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]
    if missing:
        raise RealNodeError(
            f"real nodes need Debian's {', '.join(missing)}: "
            f"apt-get install {' '.join(missing)} (as root, `make node-packages` does)"
        )
    routes = _run(["ip", "-o", "route", "show", "to", "match", GATEWAY]).splitlines()
    taken = [r for r in routes if "/" in r.split()[0] and bridge_name(cluster) not in r]
    if taken:
        raise RealNodeError(
            f"the real nodes' pod network {POD_CIDR} is routed already ({taken[0].strip()}): "
            "another cluster's real nodes? Take that one down (`fulcrum cluster down --name N`)"
        )


def _run(cmd: list[str], *, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise RealNodeError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).decode(errors='replace').strip()[:400]}"
        )
    return result.stdout.decode(errors="replace")


def _make_bridge(cluster: str) -> None:
    bridge = bridge_name(cluster)
    if Path(f"/sys/class/net/{bridge}").exists():  # a failed start's: start afresh
        _run(["ip", "link", "delete", bridge])
    _run(["ip", "link", "add", bridge, "type", "bridge"])
    _run(["ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])


def _containerd_config(directory: Path, registry: str, cni_bin: Path) -> str:
    d = str(directory)
    return f"""version = 3
root = '{d}/containerd/root'
state = '{d}/containerd/state'
imports = []

[grpc]
  address = '{d}/containerd.sock'
[ttrpc]
  address = '{d}/containerd.sock.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '{d}/certs.d'
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{cni_bin}', '{CNI_BIN}']
      conf_dir = '{d}/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d}/containerd/opt'
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '{d}/nri.sock'
    plugin_path = '{d}/nri/plugins'
    plugin_config_path = '{d}/nri/conf.d'
"""


def _kubelet_config(
    cluster: str, node: RealNode, directory: Path, ca: Path, configmap_strategy: str = "Watch"
) -> dict[str, object]:
    if configmap_strategy not in CONFIGMAP_STRATEGIES:
        raise RealNodeError(
            f"kubelet configMapAndSecretChangeDetectionStrategy {configmap_strategy!r}: "
            f"give one of {', '.join(CONFIGMAP_STRATEGIES)}"
        )
    sock = f"unix://{directory}/containerd.sock"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": GATEWAY,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/" + cgroup_root(cluster, node.name),
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        "resolvConf": "",
        "clusterDNS": [GATEWAY],  # kubeproxy's DNS server: the kubernetes Service's name
        "clusterDomain": kubeproxy.DNS_DOMAIN,
        "podLogsDir": str(directory / "pod-logs"),
        "serializeImagePulls": False,
        # a shared, busy test host: no eviction or image GC unless it is really full
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "configMapAndSecretChangeDetectionStrategy": configmap_strategy,
    }


def _make_cgroup_root(name: str) -> None:
    """The kubelet's ``cgroupRoot`` in every hierarchy; cpuset's with its parent's cpus/mems."""
    for base in _hierarchies():
        path = base / name
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (base / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((base / knob).read_text())


def _hierarchies() -> list[Path]:
    """Where cgroups live: each v1 controller's tree, the unified (v2) tree, or the v2 root."""
    if (CGROUPS / "cgroup.controllers").exists():
        return [CGROUPS]
    return [p for p in CGROUPS.iterdir() if p.is_dir() and not p.is_symlink()]


def _shim_path(binaries: Mapping[str, Path]) -> str:
    """PATH with containerd's own directory first: containerd and the kubelet look the runc
    shim up there."""
    return f"{binaries['containerd'].parent}:{os.environ.get('PATH', '')}"


def _start_containerd(directory: Path, binaries: Mapping[str, Path]) -> int:
    log = directory / "containerd.log"
    env = dict(os.environ, PATH=_shim_path(binaries))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(binaries["containerd"]), "--config", str(directory / "containerd.toml")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise RealNodeError("containerd exited at start-up:\n  " + "\n  ".join(tail))
        version = subprocess.run(
            [*_ctr(binaries, directory), "version"], capture_output=True, check=False
        )
        if version.returncode == 0:
            return proc.pid
        if time.monotonic() > deadline:
            raise RealNodeError(f"containerd did not answer within 60 s; see {log}")
        time.sleep(0.2)


def _ctr(binaries: Mapping[str, Path], directory: Path) -> list[str]:
    return [str(binaries["ctr"]), "--address", str(directory / "containerd.sock"), "-n", "k8s.io"]


def _own_device_plugins(directory: Path, cmd: list[str]) -> list[str]:
    """``cmd`` (the kubelet) in its own mount namespace where ``DEVICE_PLUGINS`` is the
    node's ``<dir>/device-plugins``, so kubelets on one host share neither the device manager's
    socket nor its checkpoint of which pod holds which device.

    The kubelet's own mounts (its pods' volumes, under its root dir) must still reach
    containerd in the host's namespace: the root dir is made a shared mount first, so the
    namespace's copy propagates to the host's; the mount holding ``DEVICE_PLUGINS`` is made
    private in the namespace (not recursively), so the bind over it stays there."""
    root = directory / "kubelet"
    plugins = directory / "device-plugins"
    plugins.mkdir(exist_ok=True)
    DEVICE_PLUGINS.mkdir(parents=True, exist_ok=True)
    if _run(["findmnt", "-n", "-o", "TARGET", "-M", str(root)], check=False).strip() != str(root):
        _run(["mount", "--bind", str(root), str(root)])
    _run(["mount", "--make-shared", str(root)])
    script = (
        f'mount --make-private "$(findmnt -n -o TARGET -T {DEVICE_PLUGINS})" && '
        f'mount --bind "$0" {DEVICE_PLUGINS} && exec "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "unchanged",
        "sh",
        "-c",
        script,
        str(plugins),
        *cmd,
    ]


def start_node(
    cluster: str,
    node: RealNode,
    directory: Path,
    *,
    binaries: Mapping[str, Path],
    kubeconfig: Path,
    ca: Path,
    registry: str,
    ipam_plugin: Path,
    pause_archive: Path,
    configmap_strategy: str = "Watch",
) -> None:
    """containerd (with the pause image imported) and a kubelet for ``node`` (its
    ``configMapAndSecretChangeDetectionStrategy``: ``configmap_strategy``), in ``directory``;
    returns once the kubelet's healthz answers."""
    for sub in ("cni-bin", "net.d", "pod-logs", "kubelet", f"certs.d/{registry}"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(ipam_plugin, directory / "cni-bin" / "fulcrum-ipam")
    hosts = list(node.pod_cidr().hosts())
    conflist = cni.node_conflist(
        bridge=bridge_name(cluster),
        subnet=str(POD_CIDR),
        gateway=GATEWAY,
        range_start=str(hosts[1]),
        range_end=str(hosts[-1]),
        pool_cidr=str(POOL_CIDR),
        data_dir=str(directory / "ipam"),
    )
    (directory / "net.d" / "10-fulcrum.conflist").write_text(json.dumps(conflist, indent=2))
    (directory / "certs.d" / registry / "hosts.toml").write_text(
        f"server = 'http://{registry}'\n\n[host.'http://{registry}']\n"
        "  capabilities = ['pull', 'resolve']\n  skip_verify = true\n"
    )
    (directory / "containerd.toml").write_text(
        _containerd_config(directory, registry, directory / "cni-bin")
    )
    _start_containerd(directory, binaries)
    _run([*_ctr(binaries, directory), "images", "import", str(pause_archive)])
    _make_cgroup_root(cgroup_root(cluster, node.name))
    config = directory / "kubelet.yaml"
    config.write_text(
        yaml.safe_dump(_kubelet_config(cluster, node, directory, ca, configmap_strategy))
    )
    cmd = [
        str(binaries["kubelet"]),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={directory / 'kubelet'}",
        f"--cert-dir={directory / 'kubelet' / 'pki'}",  # its default is /var/lib/kubelet/pki
        f"--hostname-override={node.name}",
        f"--node-ip={GATEWAY}",
        f"--node-labels={NODE_LABEL}={NODE_VALUE}",
        "--v=1",
    ]
    env = {"PATH": _shim_path(binaries)}
    try:
        processes.start_process(
            directory,
            "kubelet",
            _own_device_plugins(directory, cmd),
            f"http://127.0.0.1:{node.healthz_port}/healthz",
            env,
        )
    except processes.ProcessError as exc:
        raise RealNodeError(f"real node {node.name}: {exc}") from exc


def start(
    cluster: str,
    root: Path,
    count: int,
    *,
    binaries: Mapping[str, Path],
    kubeconfig: Path,
    ca: Path,
    registry_port: int,
    agent: nodeagent.AgentOptions | None = None,
    configmap_strategy: str = "Watch",
    log: Callable[[str], None],
) -> list[str]:
    """The registry on ``registry_port`` and ``count`` real nodes of ``cluster`` under
    ``root``, each with its ``fulcrum node`` agent (``agent``; None: none) and its kubelet's
    ``configmap_strategy``: their names. On failure, what started is left for ``stop``."""
    root.mkdir(parents=True, exist_ok=True)
    registry = f"127.0.0.1:{registry_port}"
    start_registry(root, registry_port)
    pause = root / "pause.tar"
    try:
        with images.build(images.pause_image(binaries["pause"])) as built:
            images.oci_archive(built, PAUSE_IMAGE, pause)
    except images.ImageError as exc:
        raise RealNodeError(str(exc)) from exc
    ipam = cni.ensure_ipam_plugin(log)
    if not (root / "iptables-before.json").exists():
        record_iptables(root / "iptables-before.json")
    _make_bridge(cluster)
    names = []
    for index in range(1, count + 1):
        node = RealNode(f"real-{index}", index, processes.free_port(), processes.free_port())
        start_node(
            cluster,
            node,
            root / node.name,
            binaries=binaries,
            kubeconfig=kubeconfig,
            ca=ca,
            registry=registry,
            ipam_plugin=ipam,
            pause_archive=pause,
            configmap_strategy=configmap_strategy,
        )
        names.append(node.name)
        log(f"  {node.name}: kubelet on {GATEWAY}:{node.kubelet_port}, pods {node.pod_cidr()}")
        if agent is not None:
            try:
                port = nodeagent.start(
                    node.name,
                    root / node.name,
                    kubeconfig=kubeconfig,
                    healthz_port=node.healthz_port,
                    options=agent,
                )
            except processes.ProcessError as exc:
                raise RealNodeError(f"real node {node.name}: fulcrum node: {exc}") from exc
            gpus = f", {agent.gpus} fake GPUs {agent.gpu_model}".rstrip() if agent.gpus else ""
            log(f"  {node.name}: fulcrum node (metrics on 127.0.0.1:{port}{gpus})")
    try:
        cluster_ip = kubeproxy.start(
            root,
            binaries["kube-proxy"],
            kubeconfig,
            node=names[0],
            cluster_cidr=str(POD_CIDR),
            dns=GATEWAY,
        )
    except kubeproxy.ServiceNetworkError as exc:
        raise RealNodeError(str(exc)) from exc
    log(f"  kube-proxy routes ClusterIPs; DNS on {GATEWAY} names kubernetes ({cluster_ip})")
    return names


def start_registry(root: Path, port: int) -> None:
    """The cluster's registry (Debian's docker-registry) on ``127.0.0.1:port``, its data under
    ``root``; started again on the same data after ``stop_registry``."""
    try:
        images.start_registry(root / "registry", port)
    except images.RegistryError as exc:
        raise RealNodeError(str(exc)) from exc


def stop_registry(root: Path) -> None:
    processes.terminate(list(processes.processes_under(root / "registry")))


# --- tear-down -------------------------------------------------------------------------------


def stop(cluster: str, root: Path, *, log: Callable[[str], None] = print) -> None:
    """Stop every real node of ``cluster`` under ``root`` and remove what they made; safe to
    repeat, and on a half-made node."""
    nodes = sorted(root.glob("real-*")) if root.is_dir() else []
    nodeagent.stop(nodes)
    kubelets = [pid for d in nodes for pid in processes.processes_under(d / "kubelet.yaml")]
    processes.terminate(kubelets)
    kubeproxy.stop(root)  # before its iptables rules are removed below
    for directory in nodes:
        _kill_cgroup(cgroup_root(cluster, directory.name))
    unmount_under(root)  # the sandboxes' netns (so their veths go) and the kubelets' volumes
    leftovers = [pid for d in nodes for pid in processes.processes_under(d)]
    processes.terminate(leftovers)  # containerd and its shims
    unmount_under(root)
    for directory in nodes:
        _remove_cgroup(cgroup_root(cluster, directory.name))
    if Path(f"/sys/class/net/{bridge_name(cluster)}").exists():
        _run(["ip", "link", "delete", bridge_name(cluster)], check=False)
    restore_iptables(root / "iptables-before.json")
    if nodes:
        log(f"  {len(nodes)} real nodes stopped")


def _cgroup_dirs(name: str) -> list[Path]:
    """Every cgroup under ``name`` in every hierarchy, deepest first."""
    found: list[Path] = []
    for base in _hierarchies():
        top = base / name
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _kill_cgroup(name: str) -> None:
    """SIGKILL every process in the node's cgroups (its pods' containers and sandboxes)."""
    for _ in range(50):
        pids = set()
        for directory in _cgroup_dirs(name):
            with suppress(OSError):
                pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroup(name: str) -> None:
    for directory in _cgroup_dirs(name):
        for _ in range(20):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def unmount_under(root: Path) -> None:
    """Unmount every mount point under ``root``, deepest first (lazily if busy), so removing
    ``root`` afterwards never reaches into a volume's source."""
    prefix = str(root.resolve()) + "/"
    for _ in range(5):
        points = [
            line.split()[4].encode().decode("unicode_escape")
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ]
        ours = sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)
        if not ours:
            return
        for point in ours:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# --- iptables: what the kubelets add, removed at stop ----------------------------------------

IPTABLES = ("iptables", "ip6tables")


def _iptables_state(tool: str) -> dict[str, list[str]]:
    """table -> its chain declarations and rules, as ``<tool>-save`` prints them."""
    state: dict[str, list[str]] = {}
    table = ""
    if shutil.which(f"{tool}-save") is None:
        return state
    for line in _run([f"{tool}-save"], check=False).splitlines():
        if line.startswith("*"):
            table = line[1:]
            state[table] = []
        elif line.startswith((":", "-A ")):
            state[table].append(line.split(" [")[0] if line.startswith(":") else line)
    return state


def record_iptables(path: Path) -> None:
    """What iptables holds before the first kubelet starts, for ``restore_iptables``."""
    path.write_text(json.dumps({tool: _iptables_state(tool) for tool in IPTABLES}))


def restore_iptables(path: Path) -> None:
    """Delete the rules, then the chains, that were added since ``record_iptables``."""
    if not path.exists():
        return
    before = json.loads(path.read_text())
    for tool in IPTABLES:
        now = _iptables_state(tool)
        for table, lines in now.items():
            old = set(before.get(tool, {}).get(table, []))
            for line in lines:
                if line.startswith("-A ") and line not in old:
                    _run([tool, "-t", table, "-D", *shlex.split(line[3:])], check=False)
            for line in lines:
                if line.startswith(":") and line not in old:
                    chain = line[1:].split()[0]
                    _run([tool, "-t", table, "-F", chain], check=False)
                    _run([tool, "-t", table, "-X", chain], check=False)
