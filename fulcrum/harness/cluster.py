"""Local kwok clusters on the real control plane, with Fulcrum registered as an extender.

A cluster named NAME keeps all its state under ``<cache>/clusters/NAME/``: kwokctl's workdir
(``KWOK_WORKDIR``), the KubeSchedulerConfiguration, and the extender's pid, port and log. ``down``
stops every process started from there and removes the directory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from fulcrum.harness import controlplane, nodeagent, processes, realnodes, webhooks
from fulcrum.harness.binaries import NODE_COMPONENTS, BinaryError, cache_dir, ensure_binaries
from fulcrum.harness.controlplane import FAKE_NODE_ANNOTATION as FAKE_NODE_ANNOTATION
from fulcrum.harness.processes import free_port as free_port
from fulcrum.harness.registration import FULCRUM_SCHEDULER as FULCRUM_SCHEDULER
from fulcrum.harness.registration import SCHEDULER_GC
from fulcrum.harness.registration import ExtenderRegistration as ExtenderRegistration
from fulcrum.harness.registration import scheduler_config as scheduler_config

NODE_LABEL = "fulcrum.io/kwok-node"


class ClusterError(RuntimeError):
    """A cluster operation failed; the message names the cause and the fix."""


@dataclass(frozen=True)
class NodeShape:
    cpu: str = "32"
    memory: str = "256Gi"
    pods: int = 110
    ephemeral_storage: str = "1Ti"
    gpu: int = 0
    gpu_model: str = ""

    def capacity(self) -> dict[str, str]:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": self.ephemeral_storage,
        }
        if self.gpu:
            capacity["nvidia.com/gpu"] = str(self.gpu)
        return capacity


@dataclass
class ClusterState:
    name: str
    nodes: int = 0
    extender_port: int | None = None
    extender_pid: int | None = None
    scheduler_pid: int | None = None
    scheduler_port: int | None = None
    rebuild_pid: int | None = None
    rebuild_port: int | None = None
    webhook_pid: int | None = None
    webhook_port: int | None = None
    kubectl: str = ""
    binaries: dict[str, str] = field(default_factory=dict)
    real_nodes: list[str] = field(default_factory=list)
    registry_port: int | None = None
    # the Python that runs the extender, the rebuild controller and the webhook ("": this one)
    python: str = ""
    bind_all: bool = False  # fulcrum-scheduler's extenders[] entries, as registered

    @property
    def fulcrum(self) -> list[str]:
        """The command that runs ``fulcrum`` in this cluster's Python."""
        return [self.python or sys.executable, "-m", "fulcrum.cli"]


def state_dir(name: str) -> Path:
    return cache_dir() / "clusters" / name


def cluster_names() -> list[str]:
    """The clusters ``fulcrum cluster up`` made and that are not down."""
    root = cache_dir() / "clusters"
    return sorted(p.parent.name for p in root.glob("*/cluster.json")) if root.is_dir() else []


def _kwok_workdir(name: str) -> Path:
    return controlplane.workdir(state_dir(name))


def kubeconfig_path(name: str) -> Path:
    return _kwok_workdir(name) / "clusters" / name / "kubeconfig.yaml"


def load_state(name: str) -> ClusterState:
    path = state_dir(name) / "cluster.json"
    if not path.exists():
        raise ClusterError(
            f"no cluster named {name!r}: create it with `fulcrum cluster up --name {name}`"
        )
    return ClusterState(**json.loads(path.read_text()))


def _save_state(state: ClusterState) -> None:
    (state_dir(state.name) / "cluster.json").write_text(json.dumps(asdict(state), indent=2))


def port_in_use(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def node_manifest(name: str, shape: NodeShape) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        NODE_LABEL: "true",
    }
    if shape.gpu_model:
        labels["nvidia.com/gpu.product"] = shape.gpu_model
    capacity = shape.capacity()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION: "fake"}},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def core_api(name: str) -> Any:
    api_client = config.new_client_from_config(config_file=str(kubeconfig_path(name)))
    api_client.configuration.connection_pool_maxsize = 32
    return client.CoreV1Api(api_client)


def add_nodes(
    name: str, count: int, shape: NodeShape, *, prefix: str = "kwok-node", start: int = 0
) -> list[str]:
    api = core_api(name)
    names = [f"{prefix}-{i:05d}" for i in range(start, start + count)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: api.create_node(node_manifest(n, shape)), names))
    return names


def _schedulable(node: Any) -> bool:
    """Ready, and the node lifecycle controller has lifted its not-ready taint."""
    ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    taints = {t.key for t in (node.spec.taints or [])}
    return ready and not taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def wait_nodes_ready(
    name: str,
    count: int,
    *,
    timeout: float = 600,
    selector: str = f"{NODE_LABEL}=true",
    log: Callable[[str], None],
) -> None:
    api = core_api(name)
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        nodes = api.list_node(label_selector=selector).items
        ready = sum(1 for n in nodes if _schedulable(n))
        if ready != last:
            log(f"  {ready}/{count} nodes ({selector}) Ready and untainted")
            last = ready
        if ready >= count:
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"only {ready}/{count} nodes ({selector}) Ready after {timeout:.0f} s; see the "
                f"logs under {_kwok_workdir(name)}/clusters/{name}/logs (kwok's controller) "
                f"and {state_dir(name)}/real (real nodes' kubelets and containerd)"
            )
        time.sleep(0.5)


def start_process(
    name: str, label: str, cmd: list[str], ready_url: str, env: Mapping[str, str] | None = None
) -> int:
    """Start a detached process of cluster ``name`` (log: ``<label>.log``), with ``env`` added
    to ours; wait until ready."""
    try:
        return processes.start_process(state_dir(name), label, cmd, ready_url, env)
    except processes.ProcessError as exc:
        raise ClusterError(str(exc)) from exc


def start_extender(name: str, port: int) -> int:
    cmd = [*load_state(name).fulcrum, "serve", "--port", str(port)]
    cmd += ["--kubeconfig", str(kubeconfig_path(name))]
    if _extender_config(name).exists():
        cmd += ["--config", str(_extender_config(name))]
    return start_process(name, "extender", cmd, f"http://127.0.0.1:{port}/readyz")


def restart_extender(name: str, extender_config: Path | None) -> None:
    """Start cluster ``name``'s extender again, with ``extender_config`` (None: the defaults).

    Its ``bindAll`` must be the one the cluster was created with: fulcrum-scheduler keeps its
    extenders[] entries."""
    state = load_state(name)
    if _binds_all(extender_config, state.python) != state.bind_all:
        raise ClusterError(
            f"{extender_config}: bindAll is not {str(state.bind_all).lower()}, as cluster "
            f"{name!r} was registered with: keep it, or create another cluster"
        )
    processes.stop_process(state.extender_pid)
    if extender_config is None:
        _extender_config(name).unlink(missing_ok=True)
    else:
        shutil.copyfile(extender_config, _extender_config(name))
    state.extender_pid = start_extender(name, state.extender_port or 0)
    _save_state(state)


CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"


def install_crds(name: str, kubectl: Path) -> None:
    """Apply Fulcrum's CRDs (Reservation, IPPool) and wait until the apiserver serves them."""
    if not CRDS.is_dir():
        raise ClusterError(f"{CRDS} is missing: run from a checkout of Fulcrum (pip install -e .)")
    run = functools.partial(
        subprocess.run, capture_output=True, text=True, timeout=120, check=False
    )
    base = [str(kubectl), "--kubeconfig", str(kubeconfig_path(name))]
    for cmd in (
        [*base, "apply", "-f", str(CRDS)],
        [*base, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS)],
    ):
        result = run(cmd)
        if result.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd[3:])}` failed: {result.stderr.strip()}")


def start_rebuild(
    name: str,
    port: int,
    *,
    identity: str = "fulcrum-rebuild-0",
    leader: bool = True,
    python: Path | None = None,
) -> int:
    """Start a local-rebuild controller of cluster ``name``; return once it leads (``leader``)
    or merely serves its health endpoint (a follower waiting for the Lease). ``python``: the
    Python that runs it (default: the cluster's, ``up(python=...)``), e.g. a virtual environment
    where rebuild-hook packages are installed, as they are in the controller's image
    (docs/rebuild.md)."""
    fulcrum = [str(python), "-m", "fulcrum.cli"] if python else load_state(name).fulcrum
    cmd = [*fulcrum, "rebuild", "--kubeconfig"]
    cmd += [str(kubeconfig_path(name)), "--health-port", str(port), "--identity", identity]
    url = f"http://127.0.0.1:{port}/{'readyz' if leader else 'healthz'}"
    return start_process(name, f"rebuild-{identity}", cmd, url)


def restart_rebuild(name: str, *, python: Path | None = None) -> int:
    """Stop cluster ``name``'s rebuild controller and start another, run by ``python`` (see
    ``start_rebuild``); it takes the same identity, so it leads at once. Its pid."""
    state = load_state(name)
    processes.stop_process(state.rebuild_pid)
    state.rebuild_port = free_port()
    state.rebuild_pid = start_rebuild(name, state.rebuild_port, python=python)
    _save_state(state)
    return state.rebuild_pid


def _start_fulcrum_scheduler(
    name: str, kube_scheduler: Path, config: Path, go_gc: Mapping[str, str]
) -> tuple[int, int]:
    port = free_port()
    cmd = [str(kube_scheduler), f"--config={config}", "--bind-address=127.0.0.1"]
    cmd += [f"--secure-port={port}", "--authorization-always-allow-paths=/healthz,/readyz,/metrics"]
    url = f"https://127.0.0.1:{port}/healthz"
    pid = start_process(name, "fulcrum-scheduler", cmd, url, go_gc)
    return pid, port


def _check_new(name: str, port: int | None, extender: bool) -> None:
    if (state_dir(name) / "cluster.json").exists():
        raise ClusterError(
            f"cluster {name!r} already exists: use it, or remove it with "
            f"`fulcrum cluster down --name {name}`"
        )
    if extender and port is not None and port_in_use(port):
        raise ClusterError(
            f"extender port {port} is already in use: stop what listens there "
            f"(`ss -ltnp 'sport = :{port}'`) or choose another --extender-port"
        )


def start_webhook(name: str, port: int) -> int:
    """Start the admission webhook of cluster ``name`` on HTTPS ``port``."""
    # the extender and the controller run as the kubeconfig's user: the webhook trusts it (and
    # no one else) with the annotations Fulcrum writes
    trusted = (webhooks.kubeconfig_user(kubeconfig_path(name)),)
    try:
        return webhooks.start(
            state_dir(name), port, trusted, kubeconfig_path(name), load_state(name).fulcrum
        )
    except processes.ProcessError as exc:
        raise ClusterError(str(exc)) from exc


def restart_webhook(name: str) -> None:
    """Start cluster ``name``'s admission webhook again, on its port, with its certificate."""
    state = load_state(name)
    if state.webhook_port is None:
        raise ClusterError(f"cluster {name!r} runs no admission webhook")
    processes.stop_process(state.webhook_pid)
    state.webhook_pid = start_webhook(name, state.webhook_port)
    _save_state(state)


def register_webhooks(name: str, port: int) -> None:
    """Make the API server call the webhook on ``port`` (``admission.config`` says for what)."""
    kubectl = [load_state(name).kubectl, "--kubeconfig", str(kubeconfig_path(name))]
    try:
        webhooks.register(kubectl, state_dir(name), port)
    except webhooks.WebhookError as exc:
        raise ClusterError(str(exc)) from exc


def _start_fulcrum(
    state: ClusterState,
    port: int,
    config: Path,
    *,
    extender: bool,
    scheduler: bool,
    go_gc: Mapping[str, str],
    log: Callable[[str], None],
) -> None:
    """The rebuild controller, the extender and the admission webhook (unless not
    ``extender``), then fulcrum-scheduler (unless not ``scheduler``, with ``go_gc`` in its
    environment); ``state`` is saved after each, so ``down`` finds what started."""
    name = state.name
    if extender:
        state.rebuild_port = free_port()
        state.rebuild_pid = start_rebuild(name, state.rebuild_port)
        _save_state(state)
        log(f"  rebuild controller leading (pid {state.rebuild_pid})")
        state.extender_pid = start_extender(name, port)
        _save_state(state)
        log(f"  extender ready on 127.0.0.1:{port} (pid {state.extender_pid})")
        state.webhook_port = free_port()
        state.webhook_pid = start_webhook(name, state.webhook_port)
        _save_state(state)
        register_webhooks(name, state.webhook_port)
        log(f"  admission webhook on 127.0.0.1:{state.webhook_port} (pid {state.webhook_pid})")
    if not scheduler:
        return
    state.scheduler_pid, state.scheduler_port = _start_fulcrum_scheduler(
        name, Path(state.binaries["kube-scheduler"]), config, go_gc
    )
    log(f"  {FULCRUM_SCHEDULER} ready (pid {state.scheduler_pid}), extender registered")
    _save_state(state)


def _new_state(
    name: str,
    binaries: Mapping[str, Path],
    reg: ExtenderRegistration,
    extender_config: Path | None,
    python: str,
) -> tuple[ClusterState, Path]:
    """A fresh state directory for cluster ``name``: its state and fulcrum-scheduler's config."""
    directory = state_dir(name)
    if directory.exists():
        down(name, log=lambda _: None)  # leftovers of an interrupted run
    directory.mkdir(parents=True)
    state = ClusterState(
        name,
        extender_port=reg.port,
        kubectl=str(binaries["kubectl"]),
        binaries={k: str(v) for k, v in binaries.items()},
        python=python,
        bind_all=reg.bind_all,
    )
    _save_state(state)
    if extender_config is not None:
        shutil.copyfile(extender_config, _extender_config(name))
    config_path = directory / "fulcrum-scheduler.yaml"
    config_path.write_text(yaml.safe_dump(scheduler_config(reg, kubeconfig_path(name))))
    return state, config_path


def _extender_config(name: str) -> Path:
    return state_dir(name) / "extender-config.yaml"


def _binds_all(extender_config: Path | None, python: str) -> bool:
    """The ExtenderConfiguration's bindAll, so that kube-scheduler's extenders[] match it; read
    by ``fulcrum serve --check`` in the Python that will serve it (``python``, "": this one),
    where its plugins are installed, so a bad file fails here, before any cluster starts."""
    cmd = [python or sys.executable, "-m", "fulcrum.cli", "serve", "--check"]
    if extender_config is not None and extender_config.exists():
        cmd += ["--config", str(extender_config)]
    checked = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if checked.returncode != 0:
        error = checked.stderr.strip().splitlines()[-1:] or [f"exit {checked.returncode}"]
        raise ClusterError(f"extender configuration: {error[0].removeprefix('fulcrum: error: ')}")
    return bool(json.loads(checked.stdout)["bindAll"])


def up(
    name: str = "fulcrum",
    *,
    nodes: int = 10,
    shape: NodeShape | None = None,
    extender: bool = True,
    extender_port: int | None = None,
    registration: ExtenderRegistration | None = None,
    extender_config: Path | None = None,
    python: Path | None = None,
    fulcrum_scheduler: bool = True,
    nodes_to_score: int = 100,
    scheduler_gc: Mapping[str, str] = SCHEDULER_GC,
    real_nodes: int = 0,
    node_agent: nodeagent.AgentOptions | None = None,
    kubelet_configmap_strategy: str = "Watch",
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> ClusterState:
    """Create cluster ``name`` with ``nodes`` kwok nodes; undo everything if any step fails.

    kwokctl runs the control plane with a plain ``default-scheduler``. Fulcrum adds a second
    kube-scheduler, ``fulcrum-scheduler``, with the extender registered as ``registration``
    says, or else on ``extender_port`` (or a free port) with ``percentageOfNodesToScore:
    nodes_to_score``, and ``scheduler_gc`` (its Go garbage collector's environment: Go's
    defaults if empty), and, unless ``extender`` is False, starts the extender itself, with
    ``extender_config`` (an ExtenderConfiguration file) if given, the rebuild controller and
    the admission webhook, all run by ``python`` (default: this Python; another one is a
    virtual environment where plugin packages are installed beside Fulcrum). Pods opt in
    with any ``fulcrum.io/`` annotation (the webhook sets their ``schedulerName:
    fulcrum-scheduler``) or by naming it.
    Without ``fulcrum_scheduler``, no fulcrum-scheduler runs on the host either (a test that
    installs the chart's, say). ``real_nodes`` real nodes (``realnodes``) join the kwok nodes,
    with a registry on loopback they pull from, each with a ``fulcrum node`` agent
    (``node_agent``, default options when None); their kubelets'
    ``configMapAndSecretChangeDetectionStrategy`` is ``kubelet_configmap_strategy``.
    """
    port = registration.port if registration else extender_port
    _check_new(name, port, extender)
    if python is not None and not os.access(python, os.X_OK):
        raise ClusterError(
            f"--python {python}: not an executable; give the bin/python of the virtual "
            "environment where Fulcrum and the plugin packages are installed"
        )
    reg = registration or ExtenderRegistration(
        port=port or free_port(),
        bind_all=_binds_all(extender_config, str(python or "")),
        nodes_to_score=nodes_to_score,
    )
    if kubelet_configmap_strategy not in realnodes.CONFIGMAP_STRATEGIES:
        raise ClusterError(
            f"--kubelet-configmap-strategy {kubelet_configmap_strategy}: give one of "
            f"{', '.join(realnodes.CONFIGMAP_STRATEGIES)}"
        )
    if real_nodes:
        _check_real_nodes(name, real_nodes)
    try:
        binaries = ensure_binaries(log)
    except BinaryError as exc:
        raise ClusterError(str(exc)) from exc
    state, config_path = _new_state(name, binaries, reg, extender_config, str(python or ""))
    started = time.monotonic()
    try:
        log(
            f"creating kwok cluster {name!r} (real kube-apiserver, etcd, controller-manager, "
            "kube-scheduler)"
        )
        try:
            controlplane.create(binaries, state_dir(name), name, real_nodes=real_nodes > 0)
        except controlplane.ControlPlaneError as exc:
            raise ClusterError(str(exc)) from exc
        install_crds(name, binaries["kubectl"])
        _start_fulcrum(
            state,
            reg.port,
            config_path,
            extender=extender,
            scheduler=fulcrum_scheduler,
            go_gc=scheduler_gc,
            log=log,
        )
        if nodes:
            log(f"registering {nodes} kwok nodes ({shape or NodeShape()})")
            add_nodes(name, nodes, shape or NodeShape())
            wait_nodes_ready(name, nodes, log=log)
            state.nodes = nodes
            _save_state(state)
        if real_nodes:
            agent = node_agent or nodeagent.AgentOptions()
            _start_real_nodes(state, real_nodes, agent, kubelet_configmap_strategy, log=log)
    except BaseException:
        down(name, log=lambda _: None)
        raise
    log(
        f"cluster {name!r} up in {time.monotonic() - started:.1f} s; "
        f'use it with: eval "$(fulcrum cluster env --name {name})"'
    )
    return state


def down(name: str = "fulcrum", *, log: Callable[[str], None] = print) -> None:
    """Stop every process of cluster ``name`` and remove its files; safe to repeat.

    With ``FULCRUM_KEEP_LOGS=DIR`` in the environment, the cluster's logs (Fulcrum's and the
    control plane's) are first copied to ``DIR/<name>``, for diagnosing a failed test.
    """
    directory = state_dir(name)
    if not directory.exists():
        log(f"no cluster named {name!r}; nothing to do")
        return
    state_file = directory / "cluster.json"
    state = ClusterState(**json.loads(state_file.read_text())) if state_file.exists() else None
    try:
        realnodes.stop(name, directory / "real", log=log)
    except realnodes.RealNodeError as exc:
        log(f"stopping the real nodes: {exc}")
    if state:
        processes.stop_process(state.scheduler_pid)
        processes.stop_process(state.extender_pid)
        processes.stop_process(state.rebuild_pid)
        processes.stop_process(state.webhook_pid)
    keep = os.environ.get("FULCRUM_KEEP_LOGS")
    if keep:
        shutil.copytree(
            directory,
            Path(keep) / name,
            ignore=_not_logs,
            dirs_exist_ok=True,
        )
    if state and state.binaries.get("kwokctl") and kubeconfig_path(name).parent.exists():
        try:
            controlplane.delete(Path(state.binaries["kwokctl"]), directory, name)
        except controlplane.ControlPlaneError as exc:
            log(f"kwokctl delete failed, stopping processes directly: {exc}")
    leftovers = list(processes.processes_under(directory))
    if leftovers:
        processes.terminate(leftovers)
    realnodes.unmount_under(directory)  # never remove a volume's data through its mount
    shutil.rmtree(directory, ignore_errors=True)
    log(f"cluster {name!r} removed")


def _not_logs(directory: str, names: list[str]) -> list[str]:
    """What ``FULCRUM_KEEP_LOGS`` leaves behind: binaries, data (etcd's, the registry's, the
    real nodes' containerd and kubelet roots), keys, and sockets, which cannot be copied."""
    heavy = ("bin", "etcd", "pki", "data", "containerd", "kubelet", "ipam", "netns")
    return [n for n in names if n in heavy or Path(directory, n).is_socket()]


def env_exports(name: str) -> str:
    state = load_state(name)
    lines = [
        f"export KUBECONFIG={kubeconfig_path(name)}",
        f"export PATH={Path(state.kubectl).parent}:$PATH",
    ]
    if state.real_nodes:
        lines += [
            f"export FULCRUM_REGISTRY=127.0.0.1:{state.registry_port}",
            f"export FULCRUM_POD_CIDR={realnodes.POD_CIDR}",
            f"export FULCRUM_POOL_CIDR={realnodes.POOL_CIDR}",
        ]
    extender = f"127.0.0.1:{state.extender_port}" if state.extender_port else "none"
    lines.append(
        f"# cluster {name!r}: {state.nodes} kwok nodes, {len(state.real_nodes)} real nodes; "
        f"extender on {extender}"
    )
    return "\n".join(lines) + "\n"


def _check_real_nodes(name: str, count: int) -> None:
    if not 0 < count <= realnodes.MAX_NODES:
        raise ClusterError(f"--real-nodes {count}: give 1 to {realnodes.MAX_NODES}")
    try:
        realnodes.check_host(name)
    except realnodes.RealNodeError as exc:
        raise ClusterError(str(exc)) from exc


def _start_real_nodes(
    state: ClusterState,
    count: int,
    agent: nodeagent.AgentOptions,
    configmap_strategy: str,
    *,
    log: Callable[[str], None],
) -> None:
    """The registry and ``count`` real nodes (``realnodes``), Ready."""
    name = state.name
    try:
        binaries = ensure_binaries(log, components=NODE_COMPONENTS)
    except BinaryError as exc:
        raise ClusterError(str(exc)) from exc
    state.registry_port = free_port()
    _save_state(state)
    log(
        f"starting {count} real nodes (kubelet, containerd, CNI) and a registry on "
        f"127.0.0.1:{state.registry_port}"
    )
    try:
        state.real_nodes = realnodes.start(
            name,
            state_dir(name) / "real",
            count,
            binaries=binaries,
            kubeconfig=kubeconfig_path(name),
            ca=controlplane.pki(state_dir(name), name) / "ca.crt",
            registry_port=state.registry_port,
            agent=agent,
            configmap_strategy=configmap_strategy,
            log=log,
        )
    except realnodes.RealNodeError as exc:
        raise ClusterError(str(exc)) from exc
    _save_state(state)
    wait_nodes_ready(
        name, count, selector=f"{realnodes.NODE_LABEL}={realnodes.NODE_VALUE}", log=log
    )


def scheduler_metrics_port(name: str, scheduler: str) -> int:
    """The secure port where ``scheduler``'s kube-scheduler serves /metrics (no auth needed)."""
    if scheduler == FULCRUM_SCHEDULER:
        return load_state(name).scheduler_port or 0
    config = _kwok_workdir(name) / "clusters" / name / "kwok.yaml"
    for doc in yaml.safe_load_all(config.read_text()):
        for component in (doc or {}).get("components") or []:
            if component.get("name") == "kube-scheduler":
                return int(component["ports"][0]["port"])
    raise ClusterError(f"no kube-scheduler component in {config}")


def scheduler_pid(name: str, scheduler: str) -> int:
    """Pid of the kube-scheduler process serving ``scheduler`` (a schedulerName) in ``name``."""
    state = load_state(name)
    if scheduler == FULCRUM_SCHEDULER and state.scheduler_pid:
        return state.scheduler_pid
    for pid in processes.processes_under(state_dir(name)):
        if processes.process_name(pid) == "kube-scheduler" and pid != state.scheduler_pid:
            return pid
    raise ClusterError(f"no kube-scheduler process for {scheduler!r} in cluster {name!r}")


def process_labels(name: str) -> dict[int, str]:
    """The cluster's processes now, each with a label naming what it is (pid -> label)."""
    ours = load_state(name).scheduler_pid
    return {
        pid: FULCRUM_SCHEDULER if pid == ours else processes.process_name(pid)
        for pid in processes.processes_under(state_dir(name))
    }
