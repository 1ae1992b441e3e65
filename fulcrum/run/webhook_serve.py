"""Run the admission webhook: ``admission.app`` behind uvicorn, HTTPS only (the API server
calls webhooks over TLS and nothing else). Given a cluster (``--kubeconfig``, ``$KUBECONFIG``
or the pod's account), it lists the IPPools of every namespace at each IPPool admission, to
refuse one whose addresses another namespace's pool has (``admission.ippools``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from kubernetes import client

from admission.app import create_app
from admission.ippools import PoolLister
from fulcrum.run.kubeconfig import api_client, configured
from fulcrum.run.serve import ServeError, check_port_free
from kube.api import GROUP, IPPOOLS, SCHEDULER_NAME, VERSION

log = logging.getLogger(__name__)
LIST_TIMEOUT_SECONDS = 3  # within the configuration's timeoutSeconds (5)


def pool_lister(kubeconfig: Path | None, context: str | None = None) -> PoolLister | None:
    """Every IPPool of the cluster, read at each call; None without a cluster."""
    if not configured(kubeconfig, context):
        log.warning(
            "no cluster (no --kubeconfig, $KUBECONFIG or in-cluster account): IPPools are "
            "admitted without the check that another namespace's pool has none of their addresses"
        )
        return None
    custom = client.CustomObjectsApi(api_client(kubeconfig, log=log.info, context=context))

    def pools() -> Sequence[Any]:
        reply = custom.list_cluster_custom_object(
            GROUP, VERSION, IPPOOLS, _preload_content=False, _request_timeout=LIST_TIMEOUT_SECONDS
        )
        items: Sequence[Any] = orjson.loads(reply.data).get("items") or []
        return items

    return pools


def serve_webhook(
    *,
    host: str,
    port: int,
    cert: Path,
    key: Path,
    scheduler_name: str = SCHEDULER_NAME,
    trusted_users: Sequence[str] = (),
    kubeconfig: Path | None = None,
    context: str | None = None,
) -> None:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ServeError(
                f"{flag} {path}: no such file; the API server calls webhooks over HTTPS only "
                "(fulcrum cluster up makes a certificate; deploy/README.md says how to supply one)"
            )
    check_port_free(host, port)
    uvicorn.run(
        create_app(
            scheduler_name=scheduler_name,
            trusted_users=trusted_users,
            pools=pool_lister(kubeconfig, context),
        ),
        host=host,
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
