"""``fulcrum inspect`` and ``fulcrum explain``: the commands that read any cluster. The work is in
``fulcrum.inspect``; this module finds the cluster (``--kubeconfig``, ``--context``, a local
``--name``) and reads its objects once.

``inspect`` exits 0 when every invariant holds, 1 when one is broken or a node's checks report an
Error or an Alarm (``fulcrum.inspect.node_checks``), and 2 when the inspection
itself failed (the cluster unreachable, RBAC, bad arguments): ``fulcrum.cli.main`` maps every
failure of these commands to 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from fulcrum import output
from fulcrum.run import kubeconfig


def api_client(args: argparse.Namespace) -> Any:
    """--kubeconfig, else the local cluster --name, else $KUBECONFIG, ~/.kube/config, then the
    pod's in-cluster account (``fulcrum.run.kubeconfig``); --context picks the context."""
    from fulcrum.harness import cluster

    local = None
    if args.name is not None:
        cluster.load_state(args.name)  # no such cluster: says so, and how to make it
        local = cluster.kubeconfig_path(args.name)
    # one line for an unreachable apiserver (fulcrum.run.failures), not urllib3's retry warnings
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    return kubeconfig.api_client(args.kubeconfig or local, user_default=True, context=args.context)


def objects(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """The cluster's nodes, active pods, Reservations and IPPools, as the apiserver sends them."""
    import orjson
    from kubernetes import client

    from kube import api
    from kube.informer import ACTIVE_PODS

    api_client_ = api_client(args)

    def items(call: Any, *call_args: Any, **kwargs: Any) -> list[Any]:
        try:
            raw = call(*call_args, _preload_content=False, **kwargs).data
        except client.ApiException as exc:
            if exc.status == 404:  # Fulcrum's CRDs are not installed
                return []
            raise
        found: list[Any] = orjson.loads(raw)["items"]
        return found

    core, custom = client.CoreV1Api(api_client_), client.CustomObjectsApi(api_client_)
    crd = (api.GROUP, api.VERSION)
    return (
        items(core.list_node),
        items(core.list_pod_for_all_namespaces, field_selector=ACTIVE_PODS),
        items(custom.list_cluster_custom_object, *crd, api.RESERVATIONS),
        items(custom.list_cluster_custom_object, *crd, api.IPPOOLS),
    )


def _cmd_inspect(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fulcrum.inspect.inspection import inspect, render

    if args.html is not None:
        from fulcrum.inspect import report as html_report

        try:
            html_report.require()  # before the cluster is read, not after
        except html_report.ReportError as exc:
            print(f"fulcrum inspect: error: {exc}", file=sys.stderr)
            return 2
    now = datetime.now(UTC)
    report = inspect(*objects(args), now, plan_seconds=args.plan_seconds)
    if args.html is not None:
        where = str(args.kubeconfig or args.name or "the current kubeconfig context")
        if args.context is not None:
            where += f", context {args.context}"
        page = html_report.inspection_html(report, source=where, now=now)
        html_report.write_html(args.html, page)
        print(f"wrote {args.html}", file=sys.stderr)
    output.emit(report.to_json(), args.output, text=render(report), file=args.output_file)
    return 1 if report.broken else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fulcrum.inspect.explain import explain

    try:
        lines = explain(args.pod, *objects(args), datetime.now(UTC))
    except ValueError as exc:
        print(f"fulcrum explain: error: {exc}", file=sys.stderr)
        return 2
    document = {"pod": args.pod, "lines": lines}
    output.emit(document, args.output, text="\n  ".join(lines), file=args.output_file)
    return 0


def _add_cluster_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    """--kubeconfig and --context as kubectl has them, or --name for a local cluster."""
    where = parser.add_mutually_exclusive_group()
    kubeconfig.add_flags(
        parser,
        kubeconfig_help=f"{what} (default: $KUBECONFIG, then ~/.kube/config, then the pod's "
        "service account)",
        group=where,
    )
    where.add_argument("--name", default=None, help="a local cluster (fulcrum cluster up)")


def add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``inspect`` and ``explain`` subcommands."""
    inspect = sub.add_parser(
        "inspect",
        help="allocation, stranded resources, fragmentation, Reservations, pools, the "
        "invariants of a cluster and its nodes' checks; exit status 1 if an invariant is broken "
        "or a node check is in Error or Alarm, 2 if the inspection failed",
    )
    _add_cluster_flags(inspect, what="the cluster to inspect")
    output.add_output(inspect, text="a report")
    inspect.add_argument(
        "--plan-seconds",
        type=float,
        default=10.0,
        help="the optimiser's time for how many nodes could be emptied (default 10; 0: skip)",
    )
    inspect.add_argument(
        "--html", type=Path, default=None, help="also write the report as one HTML file here"
    )
    inspect.set_defaults(func=_cmd_inspect, error_status=2)
    explain = sub.add_parser(
        "explain", help="why a pod is on its node, or why it is Pending and what would help"
    )
    explain.add_argument("pod", help="NAMESPACE/NAME")
    _add_cluster_flags(explain, what="the pod's cluster")
    output.add_output(explain, text="lines")
    explain.set_defaults(func=_cmd_explain, error_status=2)
