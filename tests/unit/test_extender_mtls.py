"""The extender off loopback only with mutual TLS: ``tls.clientCAFile`` refuses a client without
a certificate that CA signed."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from extender.config import ConfigError, load_settings
from fulcrum.harness.certs import make_serving_cert
from fulcrum.harness.cluster import free_port
from policies.registry import default_registry

GOLDEN = Path(__file__).parents[1] / "contract" / "golden"


def test_a_non_loopback_host_needs_a_client_ca(tmp_path: Path) -> None:
    server = make_serving_cert(tmp_path / "server", ["127.0.0.1"])
    clients = make_serving_cert(tmp_path / "clients", ["kube-scheduler"])
    registry = default_registry()
    for host in ("127.0.0.1", "::1", "localhost"):
        assert load_settings(None, registry, host=host).host == host
    with pytest.raises(ConfigError, match=r"^host '0\.0\.0\.0' is not a loopback address"):
        load_settings(None, registry, host="0.0.0.0")
    https_only = tmp_path / "https.yaml"
    https_only.write_text(f"tls: {{certFile: {server.cert}, keyFile: {server.key}}}\n")
    with pytest.raises(ConfigError, match=r"tls\.clientCAFile"):
        load_settings(https_only, registry, host="10.0.0.5")
    mutual = tmp_path / "mutual.yaml"
    mutual.write_text(
        f"tls: {{certFile: {server.cert}, keyFile: {server.key}, clientCAFile: {clients.ca}}}\n"
    )
    settings = load_settings(mutual, registry, host="0.0.0.0")
    assert settings.tls is not None and settings.tls.client_ca_file == clients.ca
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        f"tls: {{certFile: {server.cert}, keyFile: {server.key}, clientCAFile: /nope.crt}}\n"
    )
    with pytest.raises(ConfigError, match=r"clientCAFile /nope\.crt: no such file"):
        load_settings(missing, registry)


def test_with_a_client_ca_only_clients_it_signed_are_served(tmp_path: Path) -> None:
    server = make_serving_cert(tmp_path / "server", ["127.0.0.1"])
    clients = make_serving_cert(tmp_path / "clients", ["kube-scheduler"])
    strangers = make_serving_cert(tmp_path / "strangers", ["kube-scheduler"])
    config = tmp_path / "extender.yaml"
    config.write_text(
        f"tls: {{certFile: {server.cert}, keyFile: {server.key}, clientCAFile: {clients.ca}}}\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "fulcrum.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    body = json.loads((GOLDEN / "filter_full_request.json").read_text())
    url = f"https://127.0.0.1:{port}/filter"

    def context(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        trust = ssl.create_default_context(cafile=str(server.ca))
        if cert is not None:
            trust.load_cert_chain(str(cert), str(key))
        return trust

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = httpx.post(url, json=body, verify=context(clients.cert, clients.key))
                break
            except httpx.ConnectError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the extender never listened"
                time.sleep(0.2)
        assert reply.status_code == 200
        for refused in (context(), context(strangers.cert, strangers.key)):
            with pytest.raises(httpx.HTTPError):  # the handshake fails: no request is read
                httpx.post(url, json=body, verify=refused)
    finally:
        process.terminate()
        process.wait(timeout=10)
