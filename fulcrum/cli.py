"""The ``fulcrum`` command: build, cluster up/down/env, serve, webhook, rebuild, simulate, demo.

Its exit status (``EXIT_STATUS``): a verdict is 1, so that a pipeline can fail on it, and a
failure of a command with a verdict is 2; an apiserver that cannot be reached or refuses is one
line (``fulcrum.run.failures``) and 2 for every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fulcrum import output
from fulcrum.bench_cli import (
    STRATEGIES,
    Subparsers,
    add_bench,
    add_bench_configmaps,
    add_bench_node,
    add_bench_rebuild,
    add_floors,
    add_nodes_to_score,
    at_least,
    check_floors,
    compare_figures,
)
from fulcrum.harness.binaries import BinaryError
from fulcrum.inspect_cli import add_inspect
from fulcrum.node_cli import add_node
from fulcrum.services_cli import add_services

if TYPE_CHECKING:
    from fulcrum.harness.cluster import NodeShape


def _cmd_build(args: argparse.Namespace) -> int:
    from fulcrum.harness import cni
    from fulcrum.harness.binaries import COMPONENTS, NODE_COMPONENTS, ensure_binaries

    built = ensure_binaries(components=(*COMPONENTS, *NODE_COMPONENTS))
    built["fulcrum-ipam"] = cni.ensure_ipam_plugin(lambda msg: print(msg, file=sys.stderr))
    paths = {name: str(path) for name, path in built.items()}
    text = "\n".join(f"{name:25} {path}" for name, path in paths.items())
    output.emit(paths, args.output, text=text, file=args.output_file)
    return 0


def _shape(args: argparse.Namespace) -> NodeShape:
    from fulcrum.harness.cluster import NodeShape

    return NodeShape(
        cpu=args.node_cpu,
        memory=args.node_memory,
        pods=args.node_pods,
        ephemeral_storage=args.node_ephemeral_storage,
        gpu=args.node_gpu,
        gpu_model=args.node_gpu_model,
    )


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    import resource
    import time

    from fulcrum.harness import cluster, nodeagent

    started = time.monotonic()
    agent = nodeagent.AgentOptions(
        gpus=args.node_gpu,
        gpu_model=args.node_gpu_model,
        plugins=args.node_plugins,
        plugin_options=tuple(args.node_plugin_option),
    )
    cluster.up(
        args.name,
        nodes=args.nodes,
        shape=_shape(args),
        extender=not args.no_extender,
        extender_port=args.extender_port,
        extender_config=args.extender_config,
        python=args.python,
        real_nodes=args.real_nodes,
        node_agent=agent,
        kubelet_configmap_strategy=args.kubelet_configmap_strategy,
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"ready in {time.monotonic() - started:.1f} s "
        f"(this command's peak RSS {rss:.0f} MiB; `fulcrum cluster status` shows the cluster's)"
    )
    return 0


def _cmd_cluster_down(args: argparse.Namespace) -> int:
    from fulcrum.harness import cluster

    cluster.down(args.name)
    return 0


def _cmd_cluster_env(args: argparse.Namespace) -> int:
    from fulcrum.harness import cluster

    sys.stdout.write(cluster.env_exports(args.name))
    return 0


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    """Nodes, pods, and the cluster's processes with their resident memory."""
    from fulcrum.harness import cluster, processes

    state = cluster.load_state(args.name)
    api = cluster.core_api(args.name)
    nodes = api.list_node().items
    up = {
        n.metadata.name
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
    }
    ready = len(up)
    phases: dict[str, int] = {}
    on_node: dict[str, int] = {}
    for pod in api.list_pod_for_all_namespaces().items:
        phases[pod.status.phase] = phases.get(pod.status.phase, 0) + 1
        on_node[pod.spec.node_name or ""] = on_node.get(pod.spec.node_name or "", 0) + 1
    real = [{"name": n, "ready": n in up, "pods": on_node.get(n, 0)} for n in state.real_nodes]
    pids = sorted(set(processes.processes_under(cluster.state_dir(args.name))))
    rss = {pid: round(processes.rss_mib(pid)) for pid in pids}
    procs = [{"pid": pid, "name": processes.process_name(pid), "rss_mib": rss[pid]} for pid in pids]
    total = sum(rss.values())
    status = {"name": args.name, "nodes": len(nodes), "ready": ready, "pods": phases}
    lines = [f"cluster {args.name!r}: {len(nodes)} nodes ({ready} Ready); pods {phases or 'none'}"]
    if real:
        status |= {"real_nodes": real, "registry": f"127.0.0.1:{state.registry_port}"}
        lines += [
            f"  real node {r['name']}: {'Ready' if r['ready'] else 'NOT Ready'}, {r['pods']} pods"
            for r in real
        ]
        lines.append(f"  registry: 127.0.0.1:{state.registry_port}")
    lines += [f"  {p['pid']:>8} {p['name']:25} {p['rss_mib']:8} MiB" for p in procs]
    lines.append(f"  total resident memory: {total} MiB across {len(pids)} processes")
    document = {**status, "processes": procs, "rss_mib": total}
    output.emit(document, args.output, text="\n".join(lines), file=args.output_file)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fulcrum.lab.demo import run_demo

    return run_demo(name=args.name, nodes=args.nodes, pods=args.pods, keep=args.keep)


def _cmd_compare(args: argparse.Namespace) -> int:
    from fulcrum.harness import cluster
    from fulcrum.lab import traces
    from fulcrum.lab.openb import compare, format_reports

    if args.workload not in traces.WORKLOADS:  # before a cluster start, not after
        print(
            f"fulcrum: error: --workload {args.workload!r}: use one of "
            f"{', '.join(traces.WORKLOADS)}",
            file=sys.stderr,
        )
        return 2
    log = output.progress(args.output, args.output_file)
    cluster.up(
        args.name,
        nodes=0,
        extender_config=args.extender_config,
        nodes_to_score=args.nodes_to_score,
    )
    try:
        result = compare(
            args.name,
            n_nodes=args.nodes,
            n_pods=args.pods,
            seed=args.seed,
            workload=args.workload,
            rounds=args.rounds,
            log=log,
        )
        text = format_reports(result)
        output.emit(result.to_json(), args.output, text=text, file=args.output_file)
    finally:
        cluster.down(args.name, log=log)
    return check_floors(args, compare_figures(result), command="compare")


def _add_cluster(sub: Subparsers) -> None:
    cluster = sub.add_parser("cluster", help="local kwok clusters with Fulcrum registered")
    csub = cluster.add_subparsers(dest="action", required=True)
    up = csub.add_parser("up", help="create a cluster and register N kwok nodes")
    up.add_argument("--name", default="fulcrum", help="cluster name (default %(default)s)")
    up.add_argument("--nodes", type=int, default=10, help="kwok nodes (default %(default)s)")
    up.add_argument("--node-cpu", default="32", help="cpu per node (default %(default)s)")
    up.add_argument("--node-memory", default="256Gi", help="memory per node (default %(default)s)")
    up.add_argument("--node-pods", type=int, default=110, help="pods per node (default 110)")
    up.add_argument("--node-ephemeral-storage", default="1Ti", help="per node (default 1Ti)")
    up.add_argument(
        "--node-gpu",
        type=int,
        default=0,
        help="nvidia.com/gpu per node; on real nodes, fake GPUs their fulcrum node advertises",
    )
    up.add_argument("--node-gpu-model", default="", help="nvidia.com/gpu.product of the nodes")
    up.add_argument(
        "--node-plugins",
        default=None,
        help="the real nodes' fulcrum node --plugins (default: the agent's default)",
    )
    up.add_argument(
        "--node-plugin-option",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="a --plugin-option for the real nodes' fulcrum node (repeat for more)",
    )
    up.add_argument(
        "--real-nodes",
        type=int,
        default=0,
        help="real nodes beside the kwok nodes: a kubelet with containerd, runc and CNI each, "
        "labelled fulcrum.io/node=real; needs root (default %(default)s)",
    )
    up.add_argument(
        "--kubelet-configmap-strategy",
        choices=STRATEGIES,
        default="Watch",
        help="the real nodes' kubelet configMapAndSecretChangeDetectionStrategy: how it keeps "
        "mounted configmaps and secrets current (Get: a GET each per pod sync; Cache: the same "
        "through a TTL cache; Watch: a watch each) (default %(default)s, the kubelet's)",
    )
    up.add_argument(
        "--no-extender",
        action="store_true",
        help="do not start the extender (fulcrum-scheduler still calls its port)",
    )
    up.add_argument("--extender-port", type=int, default=None, help="default: a free port")
    up.add_argument("--extender-config", type=Path, default=None, help="ExtenderConfiguration")
    up.add_argument(
        "--python",
        type=Path,
        default=None,
        help="the Python that runs the extender, rebuild controller and webhook: a virtual "
        "environment's bin/python where plugin packages are pip-installed beside Fulcrum "
        "(default: the one running this command)",
    )
    up.set_defaults(func=_cmd_cluster_up)
    for action, func, helptext in (
        ("down", _cmd_cluster_down, "stop every process of the cluster and remove its files"),
        ("env", _cmd_cluster_env, 'print shell exports: eval "$(fulcrum cluster env)"'),
        ("status", _cmd_cluster_status, "nodes, pods, processes and memory of the cluster"),
    ):
        p = csub.add_parser(action, help=helptext)
        p.add_argument("--name", default="fulcrum", help="cluster name (default %(default)s)")
        if action == "status":
            output.add_output(p, text="a summary and a line per process")
        p.set_defaults(func=func)
    listed = csub.add_parser("list", help="the local clusters, their nodes and state directories")
    output.add_output(listed, text="a line per cluster")
    listed.set_defaults(func=_cmd_cluster_list)


def _add_runs(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo", help="cluster up, place a workload, show the result, cluster down"
    )
    demo.add_argument("--name", default="fulcrum-demo", help="cluster name (default %(default)s)")
    demo.add_argument("--nodes", type=int, default=20, help="kwok nodes (default %(default)s)")
    demo.add_argument("--pods", type=int, default=60, help="pods placed (default %(default)s)")
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.set_defaults(func=_cmd_demo)

    compare = sub.add_parser(
        "compare",
        help="openb trace pods on a kwok cluster: default-scheduler vs fulcrum-scheduler",
    )
    compare.add_argument("--name", default="fulcrum-compare", help="cluster name")
    compare.add_argument("--nodes", type=int, default=200, help="openb nodes sampled (default 200)")
    compare.add_argument("--pods", type=int, default=2000, help="at most this many openb pods")
    compare.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    compare.add_argument(
        "--workload", default="default", help="openb workload: default, cpu050, gpushare40, ..."
    )
    compare.add_argument(
        "--rounds",
        type=at_least(1),
        default=1,
        help="run both schedulers this many times, in turns",
    )
    compare.add_argument("--extender-config", type=Path, default=None, help="ExtenderConfiguration")
    add_nodes_to_score(compare)
    add_floors(compare, rounds="the median of the rounds' ratios")
    output.add_output(compare, text="a line per scheduler and round", progress=True)
    compare.set_defaults(func=_cmd_compare, error_status=2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"fulcrum {version('fulcrum')}"
    except PackageNotFoundError:
        return "fulcrum (not installed: run from a checkout)"


def _cmd_cluster_list(args: argparse.Namespace) -> int:
    from fulcrum.harness import cluster

    listed = [
        {
            "name": name,
            "nodes": cluster.load_state(name).nodes,
            "state_dir": str(cluster.state_dir(name)),
        }
        for name in cluster.cluster_names()
    ]
    lines = [f"{c['name']:24} {c['nodes']:6} nodes  {c['state_dir']}" for c in listed]
    text = "\n".join(lines) or "no clusters (fulcrum cluster up --name NAME creates one)"
    output.emit(listed, args.output, text=text, file=args.output_file)
    return 0


def _cmd_policies(args: argparse.Namespace) -> int:
    from kube.hooks import default_hook_registry
    from policies.registry import BUILTIN, Registry, default_registry
    from scheduler.attributes import reads_of
    from scheduler.policy import PolicyContext

    def reads(registry: Registry, name: str) -> str:
        """What the policy declares it reads beyond resources (scheduler.attributes)."""
        try:
            return reads_of(registry.create(name, PolicyContext())).describe()
        except Exception as exc:  # a plugin's bug: shown, not raised
            return f"? ({type(exc).__name__}: {exc})"

    registry = default_registry()
    hooks = default_hook_registry().names()
    rows: list[dict[str, Any]] = [
        {"name": n, "builtin": True, "source": "built-in", "reads": reads(registry, n)}
        for n in sorted(BUILTIN, key=str.lower)
    ]
    for plugin in registry.installed:  # where each comes from; why one is not loaded
        rows.append(
            {
                "name": plugin.name,
                "builtin": False,
                "source": plugin.source,
                "distribution": plugin.distribution,
                "version": plugin.version,
                "entry_point": plugin.entry_point,
                "loaded": not plugin.problem,
                **({"problem": plugin.problem, "fix": plugin.fix} if plugin.problem else {}),
                **({} if plugin.problem else {"reads": reads(registry, plugin.name)}),
            }
        )
    lines = [
        f"{r['name']:28} {r['source']}"
        + (f"  reads: {r['reads']}" if r.get("loaded", True) else "  NOT LOADED")
        for r in rows
    ]
    lines += [f"  {r['name']}: {r['problem']}; {r['fix']}" for r in rows if "problem" in r]
    lines.append(f"rebuild hooks: {', '.join(hooks)}")
    document = {"policies": rows, "rebuild_hooks": list(hooks)}
    output.emit(document, args.output, text="\n".join(lines), file=args.output_file)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fulcrum.inspect import report

    try:
        if len(args.simulate_json) == 1 and args.simulate_json[0].is_dir():
            from fulcrum.inspect import history_report

            page = history_report.load_directory(args.simulate_json[0])
        else:
            page = report.load_documents(args.simulate_json)
    except report.ReportError as exc:
        print(f"fulcrum report: error: {exc}", file=sys.stderr)
        return 2
    report.write_html(args.output_file, page)
    print(f"wrote {args.output_file}", file=sys.stderr)
    return 0


def _add_report(sub: Subparsers) -> None:
    report = sub.add_parser(
        "report",
        help="an HTML report of fulcrum simulate -o json runs (one line per policy), of one "
        "fulcrum compare -o json, or of a fulcrum inspect --record DIR history (its trends)",
    )
    report.add_argument(
        "simulate_json",
        type=Path,
        nargs="+",
        help="files written by fulcrum simulate -o json, or one by fulcrum compare -o json, or "
        "the DIR of fulcrum inspect --record DIR",
    )
    report.add_argument(
        "--output-file",
        "--html",  # its name before the -o/--output-file flags were the same everywhere
        type=output.output_file,
        required=True,
        metavar="FILE",
        help="the HTML file to write (--html: the same, deprecated)",
    )
    report.set_defaults(func=_cmd_report)


EXIT_STATUS = (
    "exit status: 0 done; 1 a verdict (inspect: an invariant is broken; bench, compare: a floor "
    "failed) or another command's failure; 2 a usage error, an apiserver that cannot be reached "
    "or refuses (one line naming the server or the permission), or any failure of inspect, "
    "explain, bench or compare; 130 interrupted"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fulcrum", description=__doc__.splitlines()[0], epilog=EXIT_STATUS
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    policies = sub.add_parser("policies", help="list the placement policies and rebuild hooks")
    output.add_output(policies, text="a line per policy")
    policies.set_defaults(func=_cmd_policies)
    add_inspect(sub)
    build = sub.add_parser(
        "build", help="build (or find cached) the control plane's and the real nodes' binaries"
    )
    output.add_output(build, text="a line per binary")
    build.set_defaults(func=_cmd_build)
    _add_cluster(sub)
    add_services(sub)
    add_node(sub)
    _add_runs(sub)
    add_bench(sub)
    add_bench_rebuild(sub)
    add_bench_node(sub)
    add_bench_configmaps(sub)
    sub.add_parser(
        "simulate", add_help=False, help="replay an openb-format trace (fulcrum simulate --help)"
    )
    _add_report(sub)
    return parser


def _failed(args: argparse.Namespace, exc: Exception) -> int | None:
    """The exit status for an exception a command raised, after one line on standard error;
    None for one to let through (a bug, in a command without a verdict: its traceback)."""
    import traceback

    from extender.config import ConfigError
    from fulcrum.harness.cluster import ClusterError
    from fulcrum.run import failures
    from fulcrum.run.kubeconfig import CredentialsError
    from fulcrum.run.rebuild_serve import RebuildError
    from fulcrum.run.serve import ServeError
    from scheduler.trace import TraceError

    errors = (BinaryError, ClusterError, ServeError, ConfigError, RebuildError, CredentialsError)
    # inspect, explain, bench, compare: 1 is their verdict, so any failure of theirs is 2
    status: int = getattr(args, "error_status", 1)
    apiserver = failures.describe(exc)  # unreachable, or an answer such as RBAC's 403
    if apiserver is not None:
        print(f"fulcrum: error: {apiserver}", file=sys.stderr)
        return 2
    if isinstance(exc, (*errors, TraceError)):
        print(f"fulcrum: error: {exc}", file=sys.stderr)
        return status
    if isinstance(exc, OSError) and status == 2:  # a file: --html, --output-file
        print(f"fulcrum: error: {exc}", file=sys.stderr)
        return status
    if status == 2:
        traceback.print_exc()
        return status
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # the placement core owns its flags
        from fulcrum.lab.simulate import main as simulate_main

        return simulate_main(argv[1:])
    args = build_parser().parse_args(argv)
    validate = getattr(args, "validate", None)
    if validate is not None:
        validate(args)  # flags that do not go together: a usage error, before any work
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        status = _failed(args, exc)
        if status is None:
            raise
        return status


if __name__ == "__main__":
    sys.exit(main())
