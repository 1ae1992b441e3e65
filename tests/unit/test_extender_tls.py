"""`fulcrum serve` with `tls:` in its configuration serves the verbs over HTTPS."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fulcrum.harness.cluster import free_port

GOLDEN = Path(__file__).parents[1] / "contract" / "golden"


def test_serves_filter_over_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    config = tmp_path / "extender.yaml"
    config.write_text(f"tls: {{certFile: {cert}, keyFile: {key}}}\n")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fulcrum.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = json.loads((GOLDEN / "filter_full_request.json").read_text())
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = httpx.post(f"https://127.0.0.1:{port}/filter", json=body, verify=trust)
                break
            except httpx.ConnectError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "the extender never listened"
                time.sleep(0.2)
        assert reply.status_code == 200
        assert {n["metadata"]["name"] for n in reply.json()["Nodes"]["items"]} == {"n1"}
        # plain HTTP is refused on the TLS port
        try:
            plain = httpx.post(f"http://127.0.0.1:{port}/filter", json=body)
            assert plain.status_code >= 400
        except httpx.HTTPError:
            pass
    finally:
        server.terminate()
        server.wait(timeout=10)
