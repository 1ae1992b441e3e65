"""``fulcrum node`` on each real node of a harness cluster, as the chart's DaemonSet runs it.

The agent runs from this Python environment (``sys.executable -m fulcrum node``), so a plugin
package installed into it (or on ``PYTHONPATH``) is found as the DaemonSet's image would find
it. Its sockets and directories are the node's own: NRI ``<node>/nri.sock``, the kubelet's root
``<node>/kubelet`` (device-plugin registration), the CRI ``<node>/containerd.sock``, and the
kubelet's health port. Fake GPUs (``--node-gpu G --node-gpu-model M``) make ``nvidia.com/gpu``
capacity real on a machine without GPUs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fulcrum.harness import processes

LOG = "fulcrum-node"


@dataclass(frozen=True)
class AgentOptions:
    """What ``cluster up`` gives every real node's agent."""

    gpus: int = 0
    gpu_model: str = ""
    plugins: str | None = None  # None: the agent's default
    plugin_options: Sequence[str] = field(default_factory=tuple)
    check_interval: float = 10.0


def command(
    node: str,
    directory: Path,
    *,
    kubeconfig: Path,
    healthz_port: int,
    metrics_port: int,
    options: AgentOptions,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "fulcrum",
        "node",
        f"--node={node}",
        f"--kubeconfig={kubeconfig}",
        f"--nri-socket={directory / 'nri.sock'}",
        f"--kubelet-root={directory / 'kubelet'}",
        f"--kubelet-healthz=http://127.0.0.1:{healthz_port}/healthz",
        f"--runtime-socket={directory / 'containerd.sock'}",
        f"--metrics-port={metrics_port}",
        f"--check-interval={options.check_interval:g}",
        f"--plugin-option=node-checks.runtime_root={directory / 'containerd' / 'root'}",
        f"--plugin-option=ipam.data-dir={directory / 'ipam'}",
    ]
    if options.gpus:
        cmd += [f"--fake-gpus={options.gpus}"]
    if options.gpu_model:
        cmd += [f"--gpu-model={options.gpu_model}"]
    if options.plugins is not None:
        cmd += [f"--plugins={options.plugins}"]
    cmd += [f"--plugin-option={o}" for o in options.plugin_options]
    return cmd


def start(
    node: str, directory: Path, *, kubeconfig: Path, healthz_port: int, options: AgentOptions
) -> int:
    """Start the agent of ``node``; returns its metrics port once it answers."""
    port = processes.free_port()
    cmd = command(
        node,
        directory,
        kubeconfig=kubeconfig,
        healthz_port=healthz_port,
        metrics_port=port,
        options=options,
    )
    processes.start_process(directory, LOG, cmd, f"http://127.0.0.1:{port}/metrics")
    return port


def stop(directories: Sequence[Path]) -> None:
    """Stop the agents of these real nodes (found by their NRI socket's path)."""
    processes.terminate(
        [pid for d in directories for pid in processes.processes_under(d / "nri.sock")]
    )
