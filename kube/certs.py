"""The admission webhook's private CA and serving certificate, made and judged (``cryptography``).

Pure: no files, no cluster. ``fulcrum cluster up`` and ``fulcrum webhook-cert`` write what
``new_ca`` and ``new_serving`` make to files (``fulcrum.harness.certs``); ``fulcrum webhook
--manage-certificate`` keeps them in a Secret and renews them (``fulcrum.run.webhook_certs``),
deciding with ``renewal`` and writing the configurations' caBundle with ``ca_bundle``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

VALID_DAYS = 365
BACKDATE = datetime.timedelta(minutes=5)  # clocks of the API server and the webhook may differ

# The keys of the Secret a managed certificate lives in (the chart's, type kubernetes.io/tls)
CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey  # Helm's genCA makes RSA keys


@dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def new_ca(common_name: str, *, now: datetime.datetime, days: int = VALID_DAYS) -> KeyPair:
    """A self-signed CA, valid ``days`` from ``now``, that may sign server certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def new_serving(
    ca: KeyPair, hosts: Sequence[str], *, now: datetime.datetime, days: int = VALID_DAYS
) -> KeyPair:
    """A certificate for ``hosts`` (DNS names or IP addresses) signed by ``ca``, valid ``days``
    from ``now`` but never past the CA (a chain is only as valid as its shortest link)."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(_alt_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def service_hosts(service: str, namespace: str) -> list[str]:
    """The names the API server may call the webhook Service by; the first is what it uses."""
    return [
        f"{service}.{namespace}.svc",
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def configuration_name(service: str) -> str:
    """The chart's name for both webhook configurations of the release whose webhook Service is
    ``service``: ``fulcrum.io`` for ``fulcrum-webhook``, ``<prefix>.fulcrum.io`` for
    ``<prefix>-webhook`` (a release with ``fullnameOverride: <prefix>``)."""
    prefix = service.removesuffix("-webhook")
    return "fulcrum.io" if prefix in ("fulcrum", service) else f"{prefix}.fulcrum.io"


# --- what a Secret holds, and whether it needs renewing ----------------------------------------


@dataclass(frozen=True)
class Stored:
    """A Secret's certificates, parsed; ``None`` where a part is missing or does not load (a
    Secret made before the webhook managed it has no CA key: its CA cannot sign, so it is
    replaced)."""

    ca: KeyPair | None
    serving: KeyPair | None


def _pair(cert_pem: bytes | None, key_pem: bytes | None) -> KeyPair | None:
    if not cert_pem or not key_pem:
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return None
    if not isinstance(key, PrivateKey) or key.public_key() != cert.public_key():
        return None
    return KeyPair(cert, key)


def parse_stored(data: Mapping[str, bytes]) -> Stored:
    return Stored(
        ca=_pair(data.get(CA_CERT), data.get(CA_KEY)),
        serving=_pair(data.get(TLS_CERT), data.get(TLS_KEY)),
    )


def secret_data(ca: KeyPair, serving: KeyPair) -> dict[str, bytes]:
    return {
        CA_CERT: ca.cert_pem(),
        CA_KEY: ca.key_pem(),
        TLS_CERT: serving.cert_pem(),
        TLS_KEY: serving.key_pem(),
    }


@dataclass(frozen=True)
class Renewal:
    """What to make anew, and why (for the log)."""

    ca: bool
    serving: bool
    reason: str

    @property
    def needed(self) -> bool:
        return self.ca or self.serving


def _left(cert: x509.Certificate, now: datetime.datetime) -> datetime.timedelta:
    return cert.not_valid_after_utc - now


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(sans.get_values_for_type(x509.DNSName))


def renewal(
    stored: Stored,
    *,
    host: str,
    now: datetime.datetime,
    renew_before: datetime.timedelta,
) -> Renewal:
    """Whether the CA and the serving certificate must be made anew at ``now``.

    The CA is, when it is missing or does not load with its key, or expires within
    ``renew_before``. The serving certificate is, when the CA is; when it is missing, does not
    load, expires within ``renew_before``, is not signed by the CA, or lacks the DNS name
    ``host`` (the one the API server calls).
    """
    days = renew_before.days
    ca_reason = ""
    if stored.ca is None:
        ca_reason = "no CA with its key (ca.crt, ca.key)"
    elif _left(stored.ca.cert, now) <= renew_before:
        ca_reason = (
            f"the CA expires in {_left(stored.ca.cert, now).days} days (renewing {days} before)"
        )
    if ca_reason:
        return Renewal(ca=True, serving=True, reason=ca_reason)
    assert stored.ca is not None
    serving = stored.serving
    if serving is None:
        reason = "no serving certificate with its key (tls.crt, tls.key)"
    elif _left(serving.cert, now) <= renew_before:
        left = _left(serving.cert, now).days
        reason = f"the serving certificate expires in {left} days (renewing {days} before)"
    elif not _signed_by(serving.cert, stored.ca.cert):
        reason = "the serving certificate is not signed by the CA"
    elif host not in _names(serving.cert):
        reason = f"the serving certificate is not for {host}"
    else:
        return Renewal(ca=False, serving=False, reason="")
    return Renewal(ca=False, serving=True, reason=reason)


# --- the configurations' caBundle ----------------------------------------------------------------


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle; none when it does not load."""
    try:
        return x509.load_pem_x509_certificates(pem) if pem.strip() else []
    except ValueError:
        return []


def ca_bundle(
    ca: x509.Certificate,
    existing: bytes,
    *,
    now: datetime.datetime,
    drop: Iterable[x509.Certificate] = (),
) -> bytes:
    """The caBundle to write: ``ca`` first, then every other CA of ``existing`` still valid at
    ``now`` (the previous CA, while pods may still serve a certificate it signed), without
    duplicates or anything in ``drop``; an expired CA is dropped."""
    out = [ca]
    dropped = set(drop)
    for cert in load_bundle(existing):
        if cert in out or cert in dropped or cert.not_valid_after_utc <= now:
            continue
        out.append(cert)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in out)
