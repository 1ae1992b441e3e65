"""The commands that run Fulcrum's processes: ``fulcrum serve`` (the extender), ``webhook`` (the
admission webhooks), ``webhook-cert`` and ``rebuild`` (the local-rebuild controller); their work
is in ``fulcrum.run``, imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from fulcrum.run import kubeconfig, logs


def add_scheduler_name(parser: argparse.ArgumentParser, what: str) -> None:
    from kube.api import SCHEDULER_NAME

    parser.add_argument(
        "--scheduler-name",
        default=SCHEDULER_NAME,
        help=f"{what}: the kube-scheduler profile that calls Fulcrum's extender, the chart's "
        "schedulerName (default %(default)s)",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from extender.config import load_settings
    from fulcrum.run.serve import serve
    from policies.registry import default_registry

    logs.configure(args.log_level, args.log_format)
    registry = default_registry()
    settings = load_settings(args.config, registry, host=args.host, port=args.port)
    if args.check:
        print(settings.model_dump_json(by_alias=True, exclude_none=True))
        return 0
    serve(
        settings,
        args.kubeconfig,
        registry,
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
        prepull_wait=args.prepull_wait,
    )
    return 0


def add_services(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``, ``webhook``, ``webhook-cert`` and ``rebuild``."""
    serve = sub.add_parser("serve", help="run the scheduler extender")
    serve.add_argument("--config", type=Path, default=None, help="ExtenderConfiguration YAML")
    serve.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default 8888)")
    serve.add_argument(
        "--check",
        action="store_true",
        help="check --config against the policies installed here, print the configuration "
        "in force as JSON, and exit",
    )
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
        "--prepull-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a rollout the admission webhook paused for its pre-pull, or an OnDelete "
        "eviction, waits for the nodes to pull the new images before it goes on without "
        "(default %(default)g; 0: never wait, only ask)",
    )
    rebuild.add_argument(
        "--release-all",
        action="store_true",
        help="take the Lease from the controllers (--lease-namespace, --lease-name) for 60 s, "
        "wait --lease-seconds for the leader to stop, remove the fulcrum.io/rebuild finalizer "
        "from every pod (an Event each), then exit: the chart's pre-delete hook runs this",
    )
    rebuild.set_defaults(func=_cmd_rebuild)
