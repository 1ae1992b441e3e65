"""A private CA and a serving certificate for the admission webhook (the ``cryptography`` package).

The API server calls admission webhooks over HTTPS only, and checks the server's certificate
against the webhook configuration's ``caBundle``. ``fulcrum cluster up`` makes both here; on a
real cluster, supply your own (or cert-manager's) as ``deploy/README.md`` says.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class ServingCert:
    ca: Path  # PEM: the CA certificate, the webhook configurations' caBundle
    cert: Path  # PEM: the serving certificate, signed by the CA
    key: Path  # PEM: its private key (mode 0600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_serving_cert(directory: Path, hosts: list[str]) -> ServingCert:
    """A new CA and a certificate for ``hosts`` (IP addresses or DNS names) in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fulcrum-webhook-ca"))
        .issuer_name(_name("fulcrum-webhook-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_alt_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    out = ServingCert(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    out.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.touch(mode=0o600)
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out


def configuration_name(service: str) -> str:
    """The chart's name for both webhook configurations of the release whose webhook Service is
    ``service``: ``fulcrum.io`` for ``fulcrum-webhook``, ``<prefix>.fulcrum.io`` for
    ``<prefix>-webhook`` (a release with ``fullnameOverride: <prefix>``)."""
    prefix = service.removesuffix("-webhook")
    return "fulcrum.io" if prefix in ("fulcrum", service) else f"{prefix}.fulcrum.io"


def install_commands(certs: ServingCert, *, namespace: str, service: str) -> str:
    """The commands that install ``certs`` for ``deploy/`` or a chart release with
    ``webhook.certificate.source: secret``: the Secret the webhook serves from, and the caBundle
    of every webhook of both configurations (named after ``service``, as the chart names them)."""
    ca = base64.b64encode(certs.ca.read_bytes()).decode()
    lines = [
        f"kubectl -n {namespace} create secret tls {service}-tls "
        f"--cert={certs.cert} --key={certs.key}"
    ]
    for kind, count in (("mutatingwebhookconfiguration", 2), ("validatingwebhookconfiguration", 2)):
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca}
            for i in range(count)
        ]
        name = configuration_name(service)
        lines.append(f"kubectl patch {kind} {name} --type=json -p '{json.dumps(patch)}'")
    return "\n".join(lines)
