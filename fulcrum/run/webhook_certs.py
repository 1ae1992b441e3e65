"""The webhook manages its own certificate (``fulcrum webhook --manage-certificate NS/SECRET``).

At start and then every ``check_seconds`` (sooner after a failure), read the Secret the webhook
serves from; when its CA or serving certificate is missing, does not load, or expires within
``renew_before`` (``kube.certs.renewal``), make what is needed and write it back. In this order:

1. a new CA goes into the caBundle of every webhook of both configurations first, *beside* the
   old CA while that is still valid, so the API server trusts the old serving certificate and
   the new one while the kubelet carries the Secret to every replica's files (about a minute);
2. the Secret is replaced with the resourceVersion it was read at: with several replicas, one
   write wins, the others get a conflict, read the Secret again and find nothing to do (a CA
   added by a loser is taken out of the caBundle again);
3. the webhook's ``ServingCertificate`` reloads the files when the kubelet updates them.

At every check the caBundle is also put right: the Secret's CA first, the old CA until it
expires, nothing expired (``kube.certs.ca_bundle``), so a ``helm upgrade`` that wrote only the
Secret's CA, or a hand edit, is repaired within ``check_seconds``.

``KubeCluster`` holds the only Kubernetes calls; ``CertificateManager`` is given a ``Cluster``.
"""

from __future__ import annotations

import base64
import datetime
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from fulcrum.run.serve import ServeError
from kube import certs

log = logging.getLogger(__name__)
CHECK_SECONDS = 3600.0
RETRY_SECONDS = 60.0
RENEW_BEFORE_DAYS = 30
KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
ATTEMPTS = 3  # Secret writes per check, each after reading it again on a conflict
REQUEST_TIMEOUT = 10  # seconds per API call: a hung connection must not stall the checks


class Conflict(Exception):
    """The object changed since it was read (its resourceVersion moved): read it again."""


@dataclass(frozen=True)
class Secret:
    data: dict[str, bytes]
    resource_version: str
    raw: Any = None  # the object as read, written back with its new data (labels kept)


@dataclass(frozen=True)
class Configuration:
    resource_version: str
    ca_bundles: list[bytes]  # one per webhook, in order; b"" where none is set


class Cluster(Protocol):
    def read_secret(self, namespace: str, name: str) -> Secret | None: ...

    def write_secret(
        self, namespace: str, name: str, data: Mapping[str, bytes], read: Secret | None
    ) -> None:
        """Replace ``read`` with ``data`` (or create it when ``read`` is None); Conflict when
        it changed since it was read (or exists already)."""

    def read_configuration(self, kind: str, name: str) -> Configuration | None: ...

    def write_ca_bundles(
        self, kind: str, name: str, read: Configuration, ca_bundles: list[bytes]
    ) -> None:
        """Set each webhook's caBundle; Conflict when the configuration changed since ``read``."""


@dataclass(frozen=True)
class ManagedCertificate:
    """What the webhook manages: the Secret, the Service the certificate is for, the
    configurations (both kinds) whose caBundle carries its CA."""

    namespace: str
    secret: str
    service: str
    configuration: str = "fulcrum.io"
    renew_before: datetime.timedelta = datetime.timedelta(days=RENEW_BEFORE_DAYS)
    validity_days: int = certs.VALID_DAYS

    @property
    def host(self) -> str:
        return certs.service_hosts(self.service, self.namespace)[0]


def parse_target(value: str) -> tuple[str, str]:
    """``NAMESPACE/SECRET`` of --manage-certificate."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ServeError(
            f"--manage-certificate {value!r}: give NAMESPACE/SECRET, e.g. "
            "fulcrum-system/fulcrum-webhook-tls"
        )
    return namespace, name


def managed_certificate(
    target: str,
    *,
    service: str,
    configuration: str | None = None,
    renew_before_days: int = RENEW_BEFORE_DAYS,
    validity_days: int = certs.VALID_DAYS,
) -> ManagedCertificate:
    """The flags of ``fulcrum webhook --manage-certificate``, checked (ServeError naming the
    flag and the fix)."""
    namespace, secret = parse_target(target)
    if renew_before_days >= validity_days:
        raise ServeError(
            f"--renew-before-days {renew_before_days} is not less than "
            f"--certificate-validity-days {validity_days}: every check would renew; give a "
            "window shorter than the lifetime (e.g. 30 of 365)"
        )
    return ManagedCertificate(
        namespace=namespace,
        secret=secret,
        service=service,
        configuration=configuration or certs.configuration_name(service),
        renew_before=datetime.timedelta(days=renew_before_days),
        validity_days=validity_days,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateManager:
    def __init__(
        self,
        cluster: Cluster,
        target: ManagedCertificate,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self.cluster, self.target, self.clock = cluster, target, clock
        self.checks = Counter(
            "fulcrum_webhook_certificate_checks",
            "Checks of the managed webhook certificate, by outcome (kept, renewed, failed)",
            ["outcome"],
            registry=registry,
        )

    def check(self) -> str:
        """One check: renew what needs it, put the caBundle right. ``kept`` or ``renewed``;
        raises on a failure (the caller retries)."""
        t = self.target
        for _ in range(ATTEMPTS):
            now = self.clock()
            read = self.cluster.read_secret(t.namespace, t.secret)
            stored = certs.parse_stored(read.data if read else {})
            decision = certs.renewal(stored, host=t.host, now=now, renew_before=t.renew_before)
            if not decision.needed:
                assert stored.ca is not None
                self._ensure_ca_bundles(stored.ca.cert, now=now)
                return "kept"
            ca = stored.ca
            if decision.ca or ca is None:
                ca = certs.new_ca(f"{t.service}-ca", now=now, days=t.validity_days)
                self._ensure_ca_bundles(ca.cert, now=now)  # trusted before any pod serves it
            hosts = certs.service_hosts(t.service, t.namespace)
            serving = certs.new_serving(ca, hosts, now=now, days=t.validity_days)
            try:
                self.cluster.write_secret(
                    t.namespace, t.secret, certs.secret_data(ca, serving), read
                )
            except Conflict:
                log.info(
                    "Secret %s/%s changed meanwhile (another replica): reading it again",
                    t.namespace,
                    t.secret,
                )
                if ca is not stored.ca:
                    self._ensure_ca_bundles(None, now=now, drop=[ca.cert])
                continue
            log.warning(
                "renewed the webhook %s in Secret %s/%s: %s; valid until %s",
                "CA and serving certificate" if decision.ca else "serving certificate",
                t.namespace,
                t.secret,
                decision.reason,
                serving.cert.not_valid_after_utc.isoformat(),
            )
            self._ensure_ca_bundles(ca.cert, now=now)
            return "renewed"
        raise Conflict(f"Secret {t.namespace}/{t.secret} changed at each of {ATTEMPTS} writes")

    def _ensure_ca_bundles(
        self,
        ca: x509.Certificate | None,
        *,
        now: datetime.datetime,
        drop: list[x509.Certificate] | None = None,
    ) -> None:
        """Every webhook's caBundle: ``ca`` first (None: the first CA there), the others still
        valid after it, none of ``drop``."""
        for kind in KINDS:
            for _ in range(ATTEMPTS):
                read = self.cluster.read_configuration(kind, self.target.configuration)
                if read is None:
                    raise LookupError(
                        f"{kind} {self.target.configuration} not found: is "
                        "--webhook-configuration the chart's name for it?"
                    )
                bundles = [self._bundle(b, ca, now, drop or []) for b in read.ca_bundles]
                if bundles == read.ca_bundles:
                    break
                try:
                    self.cluster.write_ca_bundles(kind, self.target.configuration, read, bundles)
                except Conflict:
                    continue
                log.info("caBundle of %s %s written", kind, self.target.configuration)
                break
            else:
                raise Conflict(f"{kind} {self.target.configuration} changed at each write")

    @staticmethod
    def _bundle(
        existing: bytes,
        ca: x509.Certificate | None,
        now: datetime.datetime,
        drop: list[x509.Certificate],
    ) -> bytes:
        if ca is None:
            kept = [c for c in certs.load_bundle(existing) if c not in drop]
            if not kept:
                return existing
            ca = kept[0]
        return certs.ca_bundle(ca, existing, now=now, drop=drop)

    def run(self, stop: threading.Event, *, check_seconds: float = CHECK_SECONDS) -> None:
        """Check now, then every ``check_seconds`` (``RETRY_SECONDS`` after a failure) until
        ``stop`` is set. A failure is logged and counted; it never ends the loop."""
        while not stop.is_set():
            wait = check_seconds
            try:
                self.checks.labels(self.check()).inc()
            except Exception as exc:  # an unreachable API server must not stop the webhook
                self.checks.labels("failed").inc()
                wait = min(check_seconds, RETRY_SECONDS)
                log.error(
                    "webhook certificate check of Secret %s/%s failed, again in %.0f s: %s",
                    self.target.namespace,
                    self.target.secret,
                    wait,
                    exc,
                )
            stop.wait(wait)


# --- the Kubernetes calls ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pem(value: str | bytes | None) -> bytes:
    """A caBundle as the client gives it: base64 text, or bytes already decoded."""
    if not value:
        return b""
    if isinstance(value, bytes):
        return value if value.lstrip().startswith(b"-----") else base64.b64decode(value)
    return base64.b64decode(value)


class KubeCluster:
    """``Cluster`` through the API server: get/update of one Secret, get/patch of the two
    webhook configurations (webhook-rbac.yaml grants exactly these)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)

    def read_secret(self, namespace: str, name: str) -> Secret | None:
        try:
            raw = self.core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = {k: base64.b64decode(v) for k, v in (raw.data or {}).items()}
        return Secret(data, raw.metadata.resource_version, raw)

    def write_secret(
        self, namespace: str, name: str, data: Mapping[str, bytes], read: Secret | None
    ) -> None:
        encoded = {k: _b64(v) for k, v in data.items()}
        try:
            if read is None:
                body = client.V1Secret(
                    metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                    type="kubernetes.io/tls",
                    data=encoded,
                )
                self.core.create_namespaced_secret(
                    namespace, body, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                raw = read.raw
                raw.data = {**(raw.data or {}), **encoded}  # resourceVersion: as read
                self.core.replace_namespaced_secret(
                    name, namespace, raw, _request_timeout=REQUEST_TIMEOUT
                )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise

    def read_configuration(self, kind: str, name: str) -> Configuration | None:
        read = (
            self.admission.read_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else self.admission.read_validating_webhook_configuration
        )
        try:
            raw = read(name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        bundles = [_pem(w.client_config.ca_bundle) for w in raw.webhooks or []]
        return Configuration(raw.metadata.resource_version, bundles)

    def write_ca_bundles(
        self, kind: str, name: str, read: Configuration, ca_bundles: list[bytes]
    ) -> None:
        # a patch that sets resourceVersion is a precondition: 409 when it moved since the read
        patch: list[dict[str, Any]] = [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": read.resource_version}
        ]
        patch += [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": _b64(b)}
            for i, b in enumerate(ca_bundles)
        ]
        write = (
            self.admission.patch_mutating_webhook_configuration
            if kind == "MutatingWebhookConfiguration"
            else self.admission.patch_validating_webhook_configuration
        )
        try:
            write(
                name,
                patch,
                _content_type="application/json-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise
