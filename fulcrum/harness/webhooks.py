"""The admission webhook of a local cluster: its certificate, its process, its registration."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from admission.config import webhook_configurations
from fulcrum.harness import processes
from fulcrum.harness.certs import make_serving_cert


class WebhookError(RuntimeError):
    """The API server would not take the webhook configurations; the message says why."""


def kubeconfig_user(kubeconfig: Path) -> str:
    """The username the API server gives the client certificate of ``kubeconfig``'s current
    user (its subject's CN), as it reports it in an AdmissionReview's ``userInfo``."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(
        c["context"] for c in config["contexts"] if c["name"] == config["current-context"]
    )
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    if "client-certificate-data" in user:
        pem = base64.b64decode(user["client-certificate-data"])
    else:
        pem = (kubeconfig.parent / user["client-certificate"]).read_bytes()
    names = x509.load_pem_x509_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise WebhookError(f"{kubeconfig}: the client certificate has no CN, so no username")
    return str(names[0].value)


def start(
    directory: Path,
    port: int,
    trusted_users: tuple[str, ...] = (),
    kubeconfig: Path | None = None,
    fulcrum: Sequence[str] = (sys.executable, "-m", "fulcrum.cli"),
) -> int:
    """Start ``fulcrum webhook`` (the command ``fulcrum``) on HTTPS ``port`` (log and
    certificate under ``directory``; the CA and serving certificate are made once and kept
    across restarts); ``trusted_users``: the identities Fulcrum's own processes use
    (``--trusted-user``); IPPools are read with ``kubeconfig``."""
    tls = directory / "webhook-tls"
    if not (tls / "tls.key").exists():
        make_serving_cert(tls, ["127.0.0.1", "localhost"])
    cmd = [*fulcrum, "webhook", "--port", str(port)]
    cmd += ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
    for user in trusted_users:
        cmd += ["--trusted-user", user]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    return processes.start_process(directory, "webhook", cmd, f"https://127.0.0.1:{port}/healthz")


def register(kubectl: list[str], directory: Path, port: int) -> None:
    """``kubectl apply`` both webhook configurations, calling 127.0.0.1:``port`` with the CA
    that ``start`` made under ``directory``."""
    ca = (directory / "webhook-tls" / "ca.crt").read_bytes()
    client_config = {"url": f"https://127.0.0.1:{port}", "caBundle": base64.b64encode(ca).decode()}
    result = subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input=yaml.safe_dump_all(webhook_configurations(client_config)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise WebhookError(f"registering the admission webhooks failed: {result.stderr.strip()}")
