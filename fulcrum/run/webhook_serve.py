"""Run the admission webhook: ``admission.app`` behind uvicorn, HTTPS only (the API server
calls webhooks over TLS and nothing else). Given a cluster (``--kubeconfig``, ``$KUBECONFIG``
or the pod's account), it lists the IPPools of every namespace at each IPPool admission, to
refuse one whose addresses another namespace's pool has (``admission.ippools``).

The serving certificate is reloaded when its files change (cert-manager renewing it, or a
Secret updated by hand: the kubelet swaps the mounted files), without a restart: every TLS
handshake is handed the newest good context (``ServingCertificate``). Its remaining lifetime is
``fulcrum_webhook_certificate_expiry_seconds`` on ``/metrics``. With ``managed`` (``fulcrum
webhook --manage-certificate``), a thread renews the certificate in its Secret and the CA in the
configurations' caBundle before they expire (``fulcrum.run.webhook_certs``).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from cryptography import x509
from kubernetes import client
from prometheus_client import CollectorRegistry, Counter, Gauge

from admission.app import MAX_IN_FLIGHT, create_app
from admission.ippools import PoolLister
from fulcrum.run.kubeconfig import api_client, configured
from fulcrum.run.serve import ServeError, check_port_free
from fulcrum.run.webhook_certs import CertificateManager, KubeCluster, ManagedCertificate
from kube.api import GROUP, IPPOOLS, SCHEDULER_NAME, VERSION
from kube.metrics import standard_registry

log = logging.getLogger(__name__)
LIST_TIMEOUT_SECONDS = 3  # within the configuration's timeoutSeconds (5)
MAX_CONNECTIONS = 128  # uvicorn's limit_concurrency: past it, a request is answered 503
CHECK_SECONDS = 1.0  # how often a handshake may look at the certificate's files


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


def _context(cert: Path, key: Path) -> tuple[ssl.SSLContext, float]:
    """A server context for ``cert`` and ``key``, and the certificate's notAfter (epoch s)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    return context, leaf.not_valid_after_utc.timestamp()


class ServingCertificate:
    """The webhook's TLS context, rebuilt when the certificate's or key's files change.

    ``context`` is what the server listens with; its SNI callback (called on every handshake,
    with or without a server name) hands the connection the newest context that loaded. A
    change is seen at most ``check_seconds`` late; files that do not load (a half-written
    renewal) keep the previous context, are logged and counted, and are tried again.
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        registry: CollectorRegistry,
        *,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.cert, self.key, self.check_seconds = cert, key, check_seconds
        self._stamp = self._failed = self._files()
        self._current, self.not_after = _context(cert, key)
        self._checked = time.monotonic()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)  # serves no one: every handshake is handed over
        self.context.sni_callback = self._handshake
        Gauge(
            "fulcrum_webhook_certificate_expiry_seconds",
            "Seconds until the serving certificate in use expires (negative: expired)",
            registry=registry,
        ).set_function(lambda: self.not_after - time.time())
        self.reloads = Counter(
            "fulcrum_webhook_certificate_reloads",
            "Serving certificate reloads after its files changed, by outcome",
            ["outcome"],
            registry=registry,
        )

    def _files(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)  # follows the kubelet's ..data symlink
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        """The newest context that loaded, after looking at the files if it is time to."""
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            stamp = self._files()
            if stamp not in (self._stamp, self._failed):
                try:
                    self._current, self.not_after = _context(self.cert, self.key)
                except (OSError, ValueError, ssl.SSLError) as exc:
                    self._failed = stamp  # tried again when the files change again
                    self.reloads.labels("failed").inc()
                    log.warning(
                        "webhook certificate %s did not load, kept the one in use: %s",
                        self.cert,
                        exc,
                    )
                else:
                    self._stamp = stamp
                    self.reloads.labels("loaded").inc()
                    log.info("webhook certificate %s reloaded", self.cert)
        return self._current

    def _handshake(self, conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        conn.context = self.current()


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
    max_in_flight: int = MAX_IN_FLIGHT,
    max_connections: int = MAX_CONNECTIONS,
    managed: ManagedCertificate | None = None,
) -> None:
    if managed is not None and not configured(kubeconfig, context):
        raise ServeError(
            "--manage-certificate: no cluster (no --kubeconfig, $KUBECONFIG or in-cluster "
            "account) to read the Secret from; give one, or leave the flag out"
        )
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ServeError(
                f"{flag} {path}: no such file; the API server calls webhooks over HTTPS only "
                "(fulcrum cluster up makes a certificate; deploy/README.md says how to supply one)"
            )
    registry = standard_registry("webhook")
    try:
        serving = ServingCertificate(cert, key, registry)
    except (ValueError, ssl.SSLError) as exc:
        raise ServeError(
            f"--tls-cert {cert}, --tls-key {key}: not a PEM certificate and its key ({exc})"
        ) from exc
    check_port_free(host, port)
    config = uvicorn.Config(
        create_app(
            scheduler_name=scheduler_name,
            trusted_users=trusted_users,
            pools=pool_lister(kubeconfig, context),
            max_in_flight=max_in_flight,
            registry=registry,
        ),
        host=host,
        port=port,
        limit_concurrency=max_connections,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
    config.load()
    config.ssl = serving.context  # uvicorn would load the files once; this context reloads them
    stop = threading.Event()
    if managed is not None:
        api = api_client(kubeconfig, log=log.info, context=context)
        manager = CertificateManager(KubeCluster(api), managed, registry)
        threading.Thread(
            target=manager.run, args=(stop,), name="webhook-certificate", daemon=True
        ).start()
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
