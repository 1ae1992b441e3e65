"""``fulcrum node``: the node agent (one per node), and ``--list-plugins``."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from fulcrum.output import add_output, emit
from fulcrum.run import kubeconfig, logs


def _cmd_node(args: argparse.Namespace) -> int:
    from node import registry
    from node.agent import parse_options

    logs.configure(args.log_level, args.log_format)
    if args.list_plugins:
        rows = registry.describe()
        width = max(len(str(r["name"])) for r in rows)
        text = "\n".join(
            f"{r['name']:<{width}}  {','.join(r['hooks']) or '-'}  "
            f"order {r['order']}, timeout {r['timeout']} s, on failure {r['failure_policy']}  "
            f"{r['source']}"
            for r in rows
        )
        emit(rows, args.output, text=text, file=args.output_file)
        return 0
    try:
        options = parse_options(args.plugin_option)
    except ValueError as exc:
        raise SystemExit(f"fulcrum node: {exc}") from None
    if args.fake_gpus is not None:
        options["gpu.fake"] = str(args.fake_gpus)
    if args.gpu_model is not None:
        options["gpu.model"] = args.gpu_model
    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    try:
        registry.create(plugins)  # an unknown name fails here, before any connection
    except (registry.UnknownPluginError, registry.PluginError) as exc:
        raise SystemExit(f"fulcrum node --plugins: {exc}") from None
    from fulcrum.run.node_serve import run

    run(
        node=args.node,
        plugins=plugins,
        options=options,
        kubeconfig_path=args.kubeconfig,
        context=args.context,
        nri_socket=args.nri_socket,
        kubelet_root=args.kubelet_root,
        kubelet_healthz=args.kubelet_healthz,
        runtime_socket=args.runtime_socket,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        check_interval=args.check_interval,
    )
    return 0


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 0 or more")
    return int(text)


def add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from node.registry import DEFAULT_PLUGINS

    node = sub.add_parser(
        "node",
        help="run the node agent: NRI, device-plugin and check plugins on this node",
        description="The node agent: its plugins carry out Fulcrum's decisions on the node "
        "(docs/node.md).",
    )
    node.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="this node's name (default $NODE_NAME, else the host name)",
    )
    node.add_argument(
        "--plugins",
        default=",".join(DEFAULT_PLUGINS),
        help="plugins to run, in their order (default %(default)s; --list-plugins lists them)",
    )
    node.add_argument(
        "--plugin-option",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="an option for one plugin, like gpu.model=A100 (repeat for more)",
    )
    node.add_argument(
        "--fake-gpus",
        type=_non_negative,
        default=None,
        metavar="N",
        help="advertise N fake GPUs (gpu.fake=N): for machines without GPUs",
    )
    node.add_argument("--gpu-model", default=None, metavar="M", help="the GPUs' model (gpu.model)")
    node.add_argument(
        "--list-plugins", action="store_true", help="list the plugins installed, then exit"
    )
    add_output(node, text="one line per plugin: name, hooks, order, source")
    kubeconfig.add_flags(
        node,
        kubeconfig_help="the cluster (default $KUBECONFIG, then the pod's service account)",
    )
    node.add_argument(
        "--nri-socket",
        type=Path,
        default=Path("/var/run/nri/nri.sock"),
        help="the runtime's NRI socket (default %(default)s)",
    )
    node.add_argument(
        "--kubelet-root",
        type=Path,
        default=Path("/var/lib/kubelet"),
        help="the kubelet's --root-dir: device-plugin registration (default %(default)s)",
    )
    node.add_argument(
        "--kubelet-healthz",
        default="http://127.0.0.1:10248/healthz",
        help="the kubelet's health endpoint (default %(default)s)",
    )
    node.add_argument(
        "--runtime-socket",
        type=Path,
        default=Path("/run/containerd/containerd.sock"),
        help="the CRI socket: image pulls and the runtime check (default %(default)s)",
    )
    node.add_argument(
        "--metrics-port", type=int, default=9464, help="/metrics port (default %(default)s)"
    )
    node.add_argument(
        "--metrics-host", default="127.0.0.1", help="/metrics address (default %(default)s)"
    )
    node.add_argument(
        "--check-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="run the checks this often (default %(default)g)",
    )
    logs.add_flags(node)
    node.set_defaults(func=_cmd_node)
