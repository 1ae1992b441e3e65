"""Run the admission webhook: ``admission.app`` behind uvicorn, HTTPS only (the API server
calls webhooks over TLS and nothing else)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import uvicorn

from admission.app import create_app
from fulcrum.run.serve import ServeError, check_port_free
from kube.api import SCHEDULER_NAME


def serve_webhook(
    *,
    host: str,
    port: int,
    cert: Path,
    key: Path,
    scheduler_name: str = SCHEDULER_NAME,
    trusted_users: Sequence[str] = (),
) -> None:
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ServeError(
                f"{flag} {path}: no such file; the API server calls webhooks over HTTPS only "
                "(fulcrum cluster up makes a certificate; deploy/README.md says how to supply one)"
            )
    check_port_free(host, port)
    uvicorn.run(
        create_app(scheduler_name=scheduler_name, trusted_users=trusted_users),
        host=host,
        port=port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
