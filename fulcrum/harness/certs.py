"""A private CA and a serving certificate for the admission webhook, written to files.

The API server calls admission webhooks over HTTPS only, and checks the server's certificate
against the webhook configuration's ``caBundle``. ``fulcrum cluster up`` and ``fulcrum
webhook-cert`` make both here (``kube.certs`` makes them, the webhook's own renewal too); on a
real cluster, supply your own (or cert-manager's) as ``deploy/README.md`` says, or let the
chart generate them and the webhook renew them.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from kube.certs import configuration_name, new_ca, new_serving


@dataclass(frozen=True)
class ServingCert:
    ca: Path  # PEM: the CA certificate, the webhook configurations' caBundle
    cert: Path  # PEM: the serving certificate, signed by the CA
    key: Path  # PEM: its private key (mode 0600)


def make_serving_cert(directory: Path, hosts: list[str]) -> ServingCert:
    """A new CA and a certificate for ``hosts`` (IP addresses or DNS names) in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca = new_ca("fulcrum-webhook-ca", now=now)
    serving = new_serving(ca, hosts, now=now)
    directory.mkdir(parents=True, exist_ok=True)
    out = ServingCert(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    out.ca.write_bytes(ca.cert_pem())
    out.cert.write_bytes(serving.cert_pem())
    out.key.touch(mode=0o600)
    out.key.write_bytes(serving.key_pem())
    return out


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
