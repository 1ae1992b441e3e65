"""``fulcrum inspect`` and ``fulcrum explain``: the commands that read any cluster. The work is in
``fulcrum.inspect``; this module finds the cluster (``--kubeconfig``, ``--context``, a local
``--name``) and reads its objects once.

``inspect`` exits 0 when every invariant holds, 1 when one is broken, a node's checks report an
Error or an Alarm (``fulcrum.inspect.node_checks``) or a cluster check does (etcd, the control
plane, the nodes: ``fulcrum.inspect.cluster_checks``), and 2 when the inspection itself failed
(the cluster unreachable, RBAC, bad arguments or thresholds): ``fulcrum.cli.main`` maps every
failure of these commands to 2. An apiserver that answers but cannot serve (etcd down: /readyz
failing, lists answered 5xx) is a finding (1), with what could not be read said. ``inspect
--api`` analyses the apiserver's requests instead; ``--record DIR`` appends the run to a history
(``fulcrum.inspect.history``) that ``fulcrum report DIR`` draws.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
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


class Unanswered(Exception):
    """The apiserver answered a list with a 5xx or 429 (its etcd down, or overloaded): a finding
    about the cluster (exit status 1), not a failed inspection."""


def not_ready(api_client_: Any) -> None:
    """Unanswered when the apiserver's /readyz fails: with etcd down every list would wait for
    the apiserver's own timeout (60 s each), and none would be served. An unreachable apiserver
    raises urllib3's error here (exit status 2, one line)."""
    import urllib3

    from fulcrum.inspect.cluster_checks import failed_health_checks
    from fulcrum.inspect.probe import TIMEOUT, apiserver_getter, timed_out

    try:
        status, body = apiserver_getter(api_client_)("/readyz")
    except urllib3.exceptions.HTTPError as exc:
        if not timed_out(exc):
            raise  # not reached at all: exit status 2
        raise Unanswered(
            f"the apiserver took the connection but its /readyz did not answer within "
            f"{TIMEOUT:g} s: nothing was listed"
        ) from exc
    if status in (200, 401, 403):  # ready, or /readyz not ours to read: the lists will tell
        return
    failing = ", ".join(failed_health_checks(body)) or body.strip()[:200]
    raise Unanswered(
        f"the apiserver is not ready (/readyz answered {status}, failing: {failing}): "
        "the nodes, pods, Reservations and IPPools were not listed"
    )


def objects(args: argparse.Namespace) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """The cluster's nodes, active pods, Reservations and IPPools, as the apiserver sends them;
    Unanswered when the apiserver answers a list with a 5xx or 429."""
    import orjson
    import urllib3
    from kubernetes import client

    from fulcrum.inspect.probe import LIST_TIMEOUT, answered_but_failing, timed_out
    from fulcrum.run.failures import status_message
    from kube import api
    from kube.informer import ACTIVE_PODS

    api_client_ = api_client(args)
    not_ready(api_client_)

    def items(call: Any, *call_args: Any, **kwargs: Any) -> list[Any]:
        try:
            raw = call(
                *call_args, _preload_content=False, _request_timeout=LIST_TIMEOUT, **kwargs
            ).data
        except urllib3.exceptions.HTTPError as exc:
            if not timed_out(exc):
                raise  # not reached at all: exit status 2
            what = call_args[-1] if call_args else call.__name__.removeprefix("list_")
            raise Unanswered(
                f"the apiserver did not answer listing {what} within {LIST_TIMEOUT:g} s"
            ) from exc
        except client.ApiException as exc:
            if exc.status == 404:  # Fulcrum's CRDs are not installed
                return []
            if answered_but_failing(exc):
                what = call_args[-1] if call_args else call.__name__.removeprefix("list_")
                raise Unanswered(
                    f"the apiserver answered {exc.status} listing {what}: "
                    f"{status_message(exc.body)}".rstrip(": ")
                ) from exc
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


def endpoints(args: argparse.Namespace) -> dict[str, Any]:
    """etcd's, kube-scheduler's and kube-controller-manager's addresses: the flags, else, for a
    local cluster (--name), what kwokctl wrote in its kwok.yaml."""
    from fulcrum.inspect.probe import Endpoint

    found: dict[str, Any] = {"etcd": None, "scheduler": None, "controller_manager": None}
    if args.name is not None:
        from fulcrum.harness import cluster, controlplane

        known = controlplane.metric_endpoints(cluster.state_dir(args.name), args.name)
        for key, component in (
            ("etcd", "etcd"),
            ("scheduler", "kube-scheduler"),
            ("controller_manager", "kube-controller-manager"),
        ):
            metric = known.get(component)
            if metric:
                found[key] = Endpoint(
                    f"{metric.get('scheme', 'https')}://{metric['host']}",
                    verify=not metric.get("insecureSkipVerify", False),
                )
    if args.etcd_endpoint:
        found["etcd"] = Endpoint(
            args.etcd_endpoint, args.etcd_cacert, args.etcd_cert, args.etcd_key, verify=True
        )
    for key, flag in (("scheduler", "scheduler_url"), ("controller_manager", "cm_url")):
        if getattr(args, flag):
            found[key] = Endpoint(getattr(args, flag), verify=not args.insecure_components)
    return found


def cluster_view(args: argparse.Namespace, meanwhile: Callable[[], bool]) -> Any:
    """What the cluster checks judge (``fulcrum.inspect.probe.ClusterView``), read over
    --window, with ``meanwhile()`` run within the window (it lists the cluster and says whether
    it could: False, etcd down, and the Leases are not asked for); None: no components
    inspected (the unit tests of the invariants)."""
    from fulcrum.inspect import probe

    return probe.read(api_client(args), window=args.window, meanwhile=meanwhile, **endpoints(args))


def _cmd_api(args: argparse.Namespace) -> int:
    import time

    from fulcrum.inspect import api_requests, metrics

    client = api_client(args)
    first = api_requests.scrape(client)
    if args.window > 0:
        time.sleep(args.window)
        window = metrics.delta(first, api_requests.scrape(client), args.window)
    else:
        window = first
    document = api_requests.document(window)
    output.emit(document, args.output, text=api_requests.render(document), file=args.output_file)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fulcrum.inspect import brief, cluster_checks, probe
    from fulcrum.inspect.inspection import inspect, render
    from fulcrum.inspect.thresholds import ClusterThresholds, ThresholdError

    if args.api:
        return _cmd_api(args)
    try:
        thresholds = ClusterThresholds.load(args.thresholds)
    except ThresholdError as exc:
        print(f"fulcrum inspect: error: --thresholds: {exc}", file=sys.stderr)
        return 2

    if args.html is not None:
        from fulcrum.inspect import report as html_report

        try:
            html_report.require()  # before the cluster is read, not after
        except html_report.ReportError as exc:
            print(f"fulcrum inspect: error: {exc}", file=sys.stderr)
            return 2
    now = datetime.now(UTC)
    listed: dict[str, Any] = {"unread": None}

    def list_and_inspect() -> bool:
        """Within the metrics' window: the objects listed and the inspection of them."""
        try:
            found = objects(args)  # unreachable: exit 2 here
        except Unanswered as exc:  # etcd down: the apiserver answers, but 5xx
            listed["unread"], found = str(exc), ([], [], [], [])
        listed["objects"] = found
        listed["report"] = inspect(*found, now, plan_seconds=args.plan_seconds)
        return listed["unread"] is None

    view = cluster_view(args, list_and_inspect)
    unread: str | None = listed["unread"]
    nodes, pods, _, _ = listed["objects"]
    report = listed["report"]
    results = [
        *cluster_checks.component_checks(view, nodes, pods, now, thresholds),
        *(
            cluster_checks.fulcrum_checks(report.violations, report.skipped)
            if unread is None
            else cluster_checks.unread_checks(unread)
        ),
    ]
    sections = brief.sections(results)
    seconds = args.window if view is None else view.window
    window = f"rates and percentiles {probe.since(seconds)}"
    if args.html is not None:
        where = str(args.kubeconfig or args.name or "the current kubeconfig context")
        if args.context is not None:
            where += f", context {args.context}"
        extra = [brief.to_html(sections, window=window)]
        page = html_report.inspection_html(report, source=where, now=now, extra=extra)
        html_report.write_html(args.html, page)
        print(f"wrote {args.html}", file=sys.stderr)
    document = report.to_json()
    document["window_s"] = seconds
    document["sections"] = [s.to_json() for s in sections]
    document["checks"] = [r.to_json() for r in results]
    if unread is not None:
        document["unread"] = unread
    text = "\n".join([render(report), *brief.render(sections, window=window)])
    if unread is not None:
        text = f"not read: {unread}\n{text}"
    if args.record is not None:
        from fulcrum.inspect import history

        recorded = history.record(args.record, history.entry(now, document, view, nodes, pods))
        print(f"recorded {recorded}", file=sys.stderr)
    output.emit(document, args.output, text=text, file=args.output_file)
    return 1 if report.broken or any(s.failing for s in sections) else 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fulcrum.inspect.explain import explain

    try:
        lines = explain(args.pod, *objects(args), datetime.now(UTC))
    except (ValueError, Unanswered) as exc:  # Unanswered: etcd down, nothing to explain from
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


def _add_check_flags(inspect: argparse.ArgumentParser) -> None:
    """The cluster checks' flags: the window, the thresholds, the components' addresses."""
    inspect.add_argument(
        "--window",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="rates and percentiles from two scrapes this far apart (default 10; 0: one "
        "scrape, figures since each process started)",
    )
    inspect.add_argument(
        "--thresholds",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML levels over the defaults (fulcrum/inspect/thresholds.yaml; docs/inspect.md)",
    )
    inspect.add_argument(
        "--api",
        action="store_true",
        help="only the apiserver's requests by resource and verb over --window: count, rate, "
        "p50/p99 latency, return codes",
    )
    inspect.add_argument(
        "--etcd-endpoint",
        default=None,
        metavar="URL",
        help="etcd's client URL, e.g. https://10.0.0.5:2379 (a local --name cluster: found)",
    )
    inspect.add_argument("--etcd-cacert", default=None, metavar="FILE", help="etcd's CA")
    inspect.add_argument("--etcd-cert", default=None, metavar="FILE", help="a client certificate")
    inspect.add_argument("--etcd-key", default=None, metavar="FILE", help="its key")
    inspect.add_argument(
        "--scheduler-url",
        default=None,
        metavar="URL",
        help="kube-scheduler's secure port, e.g. https://127.0.0.1:10259, for /healthz and "
        "/metrics (its scheduling attempt latency)",
    )
    inspect.add_argument(
        "--controller-manager-url",
        dest="cm_url",
        default=None,
        metavar="URL",
        help="kube-controller-manager's secure port, e.g. https://127.0.0.1:10257",
    )
    inspect.add_argument(
        "--insecure-components",
        action="store_true",
        help="do not verify the scheduler's and controller-manager's serving certificates "
        "(they are self-signed by default)",
    )


def add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``inspect`` and ``explain`` subcommands."""
    inspect = sub.add_parser(
        "inspect",
        help="allocation, stranded resources, fragmentation, Reservations, pools, the "
        "invariants of a cluster, its nodes' checks and checks of etcd, the control plane and "
        "the nodes; exit status 1 if an invariant is broken or a check is in Error or Alarm, 2 "
        "if the inspection failed",
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
    inspect.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="DIR",
        help="also append this run to a history in DIR (one JSON file per run); "
        "fulcrum report DIR draws its trends",
    )
    _add_check_flags(inspect)
    inspect.set_defaults(func=_cmd_inspect, error_status=2)
    explain = sub.add_parser(
        "explain", help="why a pod is on its node, or why it is Pending and what would help"
    )
    explain.add_argument("pod", help="NAMESPACE/NAME")
    _add_cluster_flags(explain, what="the pod's cluster")
    output.add_output(explain, text="lines")
    explain.set_defaults(func=_cmd_explain, error_status=2)
