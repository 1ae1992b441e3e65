"""The admission webhook of a local cluster: its certificate, its process, its registration."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import yaml

from admission.config import webhook_configurations
from fulcrum.harness import processes
from fulcrum.harness.certs import make_serving_cert


class WebhookError(RuntimeError):
    """The API server would not take the webhook configurations; the message says why."""


def start(directory: Path, port: int, kubeconfig: Path | None = None) -> int:
    """Start ``fulcrum webhook`` on HTTPS ``port`` (log and certificate under ``directory``;
    the CA and serving certificate are made once and kept across restarts), reading IPPools
    with ``kubeconfig``."""
    tls = directory / "webhook-tls"
    if not (tls / "tls.key").exists():
        make_serving_cert(tls, ["127.0.0.1", "localhost"])
    cmd = [sys.executable, "-m", "fulcrum.cli", "webhook", "--port", str(port)]
    cmd += ["--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]
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
