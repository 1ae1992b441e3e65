"""The ``fulcrum`` command: build, cluster up/down/env, serve, webhook, rebuild, simulate, demo.

Its exit status (``EXIT_STATUS``): a verdict is 1, so that a pipeline can fail on it, and a
failure of a command with a verdict is 2; an apiserver that cannot be reached or refuses is one
line (``fulcrum.run.failures``) and 2 for every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fulcrum import output
from fulcrum.bench_cli import (
    Subparsers,
    add_bench,
    add_floors,
    add_nodes_to_score,
    at_least,
    check_floors,
    compare_figures,
)
from fulcrum.harness.binaries import BinaryError
from fulcrum.inspect_cli import add_inspect
from fulcrum.run import kubeconfig, logs

if TYPE_CHECKING:
    from fulcrum.harness.cluster import NodeShape


def add_scheduler_name(parser: argparse.ArgumentParser, what: str) -> None:
    from kube.api import SCHEDULER_NAME

    parser.add_argument(
        "--scheduler-name",
        default=SCHEDULER_NAME,
        help=f"{what}: the kube-scheduler profile that calls Fulcrum's extender, the chart's "
        "schedulerName (default %(default)s)",
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from fulcrum.harness.binaries import ensure_binaries

    paths = {name: str(path) for name, path in ensure_binaries().items()}
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

    from fulcrum.harness import cluster

    started = time.monotonic()
    cluster.up(
        args.name,
        nodes=args.nodes,
        shape=_shape(args),
        extender=not args.no_extender,
        extender_port=args.extender_port,
        extender_config=args.extender_config,
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

    cluster.load_state(args.name)
    api = cluster.core_api(args.name)
    nodes = api.list_node().items
    ready = sum(
        1
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
    )
    phases: dict[str, int] = {}
    for pod in api.list_pod_for_all_namespaces().items:
        phases[pod.status.phase] = phases.get(pod.status.phase, 0) + 1
    pids = sorted(set(processes.processes_under(cluster.state_dir(args.name))))
    rss = {pid: round(processes.rss_mib(pid)) for pid in pids}
    procs = [{"pid": pid, "name": processes.process_name(pid), "rss_mib": rss[pid]} for pid in pids]
    total = sum(rss.values())
    status = {"name": args.name, "nodes": len(nodes), "ready": ready, "pods": phases}
    lines = [f"cluster {args.name!r}: {len(nodes)} nodes ({ready} Ready); pods {phases or 'none'}"]
    lines += [f"  {p['pid']:>8} {p['name']:25} {p['rss_mib']:8} MiB" for p in procs]
    lines.append(f"  total resident memory: {total} MiB across {len(pids)} processes")
    document = {**status, "processes": procs, "rss_mib": total}
    output.emit(document, args.output, text="\n".join(lines), file=args.output_file)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from extender.config import load_settings
    from fulcrum.run.serve import serve
    from policies.registry import default_registry

    logs.configure(args.log_level, args.log_format)
    settings = load_settings(args.config, default_registry(), host=args.host, port=args.port)
    serve(
        settings,
        args.kubeconfig,
        context=args.context,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        rebuild_lease=(args.rebuild_lease_namespace, args.rebuild_lease_name),
        release_after=args.release_after,
    )
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return int(text)


def _cmd_webhook(args: argparse.Namespace) -> int:
    from fulcrum.run.webhook_serve import serve_webhook

    logs.configure(args.log_level, args.log_format)
    managed = None
    if args.manage_certificate:
        from fulcrum.run.webhook_certs import managed_certificate

        managed = managed_certificate(
            args.manage_certificate,
            service=args.service,
            configuration=args.webhook_configuration,
            renew_before_days=args.renew_before_days,
            validity_days=args.certificate_validity_days,
        )
    serve_webhook(
        host=args.host,
        port=args.port,
        cert=args.tls_cert,
        key=args.tls_key,
        scheduler_name=args.scheduler_name,
        trusted_users=args.trusted_user,
        kubeconfig=args.kubeconfig,
        context=args.context,
        max_in_flight=args.max_in_flight,
        max_connections=args.max_connections,
        managed=managed,
    )
    return 0


def _cmd_webhook_cert(args: argparse.Namespace) -> int:
    from fulcrum.harness.certs import install_commands, make_serving_cert

    service = f"{args.service}.{args.namespace}.svc"
    certs = make_serving_cert(args.out, [service, f"{service}.cluster.local"])
    print(f"# a CA and a serving certificate for {service} in {args.out}; install them with:")
    print(install_commands(certs, namespace=args.namespace, service=args.service))
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from fulcrum.run.rebuild_serve import release_all, run

    logs.configure(args.log_level, args.log_format)
    if args.release_all:
        count = release_all(
            args.kubeconfig,
            context=args.context,
            lease_namespace=args.lease_namespace,
            lease_name=args.lease_name,
            lease_seconds=args.lease_seconds,
        )
        print(f"released {count} pod(s) from the fulcrum.io/rebuild finalizer")
        return 0
    run(
        args.kubeconfig,
        context=args.context,
        health_port=args.health_port,
        health_host=args.health_host,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        scheduler_name=args.scheduler_name,
        identity=args.identity,
        lease_seconds=args.lease_seconds,
        not_ready_seconds=args.node_not_ready_seconds,
    )
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
    up.add_argument("--node-gpu", type=int, default=0, help="nvidia.com/gpu per node")
    up.add_argument("--node-gpu-model", default="", help="nvidia.com/gpu.product of the nodes")
    up.add_argument(
        "--no-extender",
        action="store_true",
        help="do not start the extender (fulcrum-scheduler still calls its port)",
    )
    up.add_argument("--extender-port", type=int, default=None, help="default: a free port")
    up.add_argument("--extender-config", type=Path, default=None, help="ExtenderConfiguration")
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


def _add_services(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the scheduler extender")
    serve.add_argument("--config", type=Path, default=None, help="ExtenderConfiguration YAML")
    serve.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default 8888)")
    kubeconfig.add_flags(
        serve,
        kubeconfig_help="watch this cluster (needed for nodeCacheCapable and bind); default "
        "$KUBECONFIG, then the pod's service account, else no cluster",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /metrics on this port, for Prometheus (default: only on --port)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of --metrics-port (default 127.0.0.1; 0.0.0.0 for Prometheus, behind a "
        "NetworkPolicy: docs/security.md)",
    )
    serve.add_argument(
        "--rebuild-lease-namespace",
        default="kube-system",
        help="namespace of the rebuild controller's Lease (its --lease-namespace)",
    )
    serve.add_argument(
        "--rebuild-lease-name",
        default="fulcrum-rebuild",
        help="the rebuild controller's Lease (its --lease-name; default %(default)s)",
    )
    serve.add_argument(
        "--release-after",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="no rebuild controller renewed its Lease for this long: let deleted pods go "
        "without a Reservation (default %(default)g; 0: never)",
    )
    logs.add_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    webhook = sub.add_parser("webhook", help="run the admission webhooks (HTTPS)")
    webhook.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    webhook.add_argument("--port", type=int, default=8443, help="listen port (default 8443)")
    webhook.add_argument("--tls-cert", type=Path, required=True, help="serving certificate (PEM)")
    webhook.add_argument("--tls-key", type=Path, required=True, help="its private key (PEM)")
    add_scheduler_name(webhook, "the scheduler the webhook routes opted-in pods to")
    webhook.add_argument(
        "--trusted-user",
        action="append",
        default=[],
        metavar="USER",
        help="a user that may write the annotations only Fulcrum writes (fulcrum.io/gpu-devices, "
        "assigned-ip, reservation, decision, rebuild-status), as the API server names it: "
        "system:serviceaccount:NAMESPACE:NAME; repeatable; none by default, and then nobody may",
    )
    kubeconfig.add_flags(
        webhook,
        kubeconfig_help="list IPPools here, to refuse a pool overlapping another namespace's "
        "(default $KUBECONFIG, then the pod's service account, else no check)",
    )
    webhook.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=8,
        help="reviews read or decided at once; one more is answered 429 (default 8)",
    )
    webhook.add_argument(
        "--max-connections",
        type=_positive_int,
        default=128,
        help="connections at once; a request past them is answered 503 (default 128)",
    )
    managed = webhook.add_argument_group(
        "a certificate the webhook renews itself (the chart's webhook.certificate.source: generate)"
    )
    managed.add_argument(
        "--manage-certificate",
        metavar="NAMESPACE/SECRET",
        help="at start and hourly, renew the CA and serving certificate in this Secret (ca.crt, "
        "ca.key, tls.crt, tls.key) when they expire within --renew-before-days, and put the CA "
        "in the caBundle of both --webhook-configuration configurations; needs a cluster",
    )
    managed.add_argument(
        "--service",
        default="fulcrum-webhook",
        help="the webhook's Service in NAMESPACE: the certificate is for <service>.<namespace>.svc "
        "(default fulcrum-webhook)",
    )
    managed.add_argument(
        "--webhook-configuration",
        metavar="NAME",
        help="the Mutating- and ValidatingWebhookConfiguration whose caBundle to write (default "
        "the chart's name for --service: fulcrum.io for fulcrum-webhook)",
    )
    managed.add_argument(
        "--renew-before-days",
        type=_positive_int,
        metavar="DAYS",
        default=30,
        help="renew the CA or the serving certificate this many days before it expires "
        "(default 30)",
    )
    managed.add_argument(
        "--certificate-validity-days",
        type=_positive_int,
        metavar="DAYS",
        default=365,
        help="how long a renewed CA and serving certificate last (default 365)",
    )
    logs.add_flags(webhook)
    webhook.set_defaults(func=_cmd_webhook)

    cert = sub.add_parser(
        "webhook-cert", help="make the webhook's CA and certificate for deploy/ and print how"
    )
    cert.add_argument("--namespace", default="fulcrum-system", help="the webhook's namespace")
    cert.add_argument("--service", default="fulcrum-webhook", help="the webhook's Service")
    cert.add_argument("--out", type=Path, required=True, help="directory for ca.crt, tls.*")
    cert.set_defaults(func=_cmd_webhook_cert)

    rebuild = sub.add_parser("rebuild", help="run the local-rebuild controller")
    kubeconfig.add_flags(
        rebuild,
        kubeconfig_help="cluster to run against (default $KUBECONFIG, then the pod's service "
        "account)",
    )
    rebuild.add_argument(
        "--health-port", type=int, default=8889, help="/healthz, /readyz and /metrics (8889)"
    )
    rebuild.add_argument(
        "--health-host",
        default="127.0.0.1",
        help="address of --health-port (default 127.0.0.1; 0.0.0.0 for Prometheus, behind a "
        "NetworkPolicy: docs/security.md)",
    )
    logs.add_flags(rebuild)
    rebuild.add_argument("--lease-namespace", default="kube-system", help="where its Lease lives")
    rebuild.add_argument(
        "--lease-name",
        default="fulcrum-rebuild",
        help="the Lease its replicas campaign for; one per release (default %(default)s)",
    )
    add_scheduler_name(rebuild, "the scheduler whose pods the controller keeps in place")
    rebuild.add_argument("--identity", default=None, help="leader-election identity")
    rebuild.add_argument("--lease-seconds", type=int, default=15, help="Lease duration")
    rebuild.add_argument(
        "--node-not-ready-seconds",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a hold on a node not Ready for this long ends as on a deleted node: its successor "
        "is placed normally (default %(default)g)",
    )
    rebuild.add_argument(
        "--release-all",
        action="store_true",
        help="take the Lease from the controllers (--lease-namespace, --lease-name) for 60 s, "
        "wait --lease-seconds for the leader to stop, remove the fulcrum.io/rebuild finalizer "
        "from every pod (an Event each), then exit: the chart's pre-delete hook runs this",
    )
    rebuild.set_defaults(func=_cmd_rebuild)


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
    from policies.registry import BUILTIN, default_registry

    names = default_registry().names()
    hooks = default_hook_registry().names()
    document = {
        "policies": [{"name": n, "builtin": n in BUILTIN} for n in names],
        "rebuild_hooks": list(hooks),
    }
    lines = [f"{n:28} {'built in' if n in BUILTIN else 'plugin'}" for n in names]
    lines.append(f"rebuild hooks: {', '.join(hooks)}")
    output.emit(document, args.output, text="\n".join(lines), file=args.output_file)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fulcrum.inspect import report

    try:
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
        help="an HTML report of fulcrum simulate -o json runs (one line per policy) or of one "
        "fulcrum compare -o json",
    )
    report.add_argument(
        "simulate_json",
        type=Path,
        nargs="+",
        help="files written by fulcrum simulate -o json, or one by fulcrum compare -o json",
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
    build = sub.add_parser("build", help="build (or find cached) control-plane binaries")
    output.add_output(build, text="a line per binary")
    build.set_defaults(func=_cmd_build)
    _add_cluster(sub)
    _add_services(sub)
    _add_runs(sub)
    add_bench(sub)
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
