"""The `fulcrum webhook` process on loopback: what a hostile client can cost it, and its
certificate's rotation (``admission.app``, ``fulcrum.run.webhook_serve``)."""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from fulcrum.harness.certs import ServingCert, make_serving_cert
from fulcrum.harness.cluster import free_port

MiB = 2**20


@dataclass
class Webhook:
    process: subprocess.Popen[bytes]
    port: int
    certs: ServingCert

    def connection(
        self, ca: Path | None = None, timeout: float = 30
    ) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(ca or self.certs.ca))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=timeout)

    def get(self, path: str, ca: Path | None = None) -> tuple[int, bytes]:
        conn = self.connection(ca, timeout=5)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def kib(self, field: str) -> int:
        """``VmRSS`` (now) or ``VmHWM`` (the peak) of the server, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.process.pid}/status")


@contextmanager
def start(tmp_path: Path, *flags: str) -> Iterator[Webhook]:
    certs = make_serving_cert(tmp_path, ["127.0.0.1"])
    port = free_port()
    cmd = [sys.executable, "-m", "fulcrum.cli", "webhook", "--port", str(port), *flags]
    process = subprocess.Popen([*cmd, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)])
    webhook = Webhook(process, port, certs)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert webhook.get("/healthz")[0] == 200
                break
            except OSError:
                assert process.poll() is None, "the webhook exited"
                assert time.monotonic() < deadline, "the webhook did not answer"
                time.sleep(0.2)
        yield webhook
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    with start(tmp_path) as running:
        yield running


def mebibytes(count: int) -> Iterator[bytes]:
    block = b" " * MiB  # one block, sent `count` times: the test holds 1 MiB, not 300
    for _ in range(count):
        yield block


def post_streamed(webhook: Webhook, path: str, size_mib: int, *, declare: bool) -> int:
    """POST a body of ``size_mib`` MiB, with its Content-Length or chunked; the status."""
    conn = webhook.connection()
    headers = {"Content-Length": str(size_mib * MiB)} if declare else {}
    try:
        # the server may answer and close while the body is still going out
        with suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", path, mebibytes(size_mib), headers, encode_chunked=not declare)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
def test_a_300_mib_body_is_refused_without_being_held(webhook: Webhook, declare: bool) -> None:
    idle = webhook.kib("VmRSS")
    assert post_streamed(webhook, "/mutate", 300, declare=declare) == 413
    peak = webhook.kib("VmHWM")
    print(f"webhook RSS idle {idle // 1024} MiB, peak {peak // 1024} MiB after a 300 MiB POST")
    assert peak <= 2 * idle, f"peak RSS {peak} KiB, idle {idle} KiB"
    status, text = webhook.get("/metrics")
    assert status == 200
    assert b'fulcrum_webhook_refused_requests_total{code="413"} 1.0' in text


def test_reviews_past_max_in_flight_are_answered_429_at_once(tmp_path: Path) -> None:
    with start(tmp_path, "--max-in-flight", "1") as webhook:
        context = ssl.create_default_context(cafile=str(webhook.certs.ca))
        raw = socket.create_connection(("127.0.0.1", webhook.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as slow:
            # a review whose body is still on its way holds the one place
            slow.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            deadline = time.monotonic() + 10
            while True:
                conn = webhook.connection(timeout=5)
                conn.request("POST", "/validate", orjson.dumps({"request": {"uid": "u"}}))
                reply = conn.getresponse()
                conn.close()
                if reply.status == 429:
                    break
                assert time.monotonic() < deadline, f"answered {reply.status}, not 429"
                time.sleep(0.1)
            assert reply.getheader("Retry-After") == "1"
        # the slow client gone, reviews are answered again
        deadline = time.monotonic() + 10
        while True:
            conn = webhook.connection(timeout=5)
            conn.request("POST", "/validate", orjson.dumps({"request": {"uid": "u"}}))
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                break
            assert time.monotonic() < deadline, f"answered {status} after the slow client left"
            time.sleep(0.1)


def expiry_seconds(webhook: Webhook, ca: Path | None = None) -> float:
    status, text = webhook.get("/metrics", ca)
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith("fulcrum_webhook_certificate_expiry_seconds "):
            return float(line.split()[1])
    raise AssertionError("no fulcrum_webhook_certificate_expiry_seconds on /metrics")


def test_a_renewed_certificate_is_served_without_a_restart(
    webhook: Webhook, tmp_path: Path
) -> None:
    days = expiry_seconds(webhook) / 86400
    assert 364 < days <= 365
    renewed = make_serving_cert(tmp_path / "renewed", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.get("/healthz", renewed.ca)
    # what the kubelet does to a mounted Secret, roughly: new files in place of the old
    shutil.copy(renewed.key, webhook.certs.key)
    shutil.copy(renewed.cert, webhook.certs.cert)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert webhook.get("/healthz", renewed.ca)[0] == 200
            break
        except ssl.SSLCertVerificationError:
            assert time.monotonic() < deadline, "the renewed certificate was not served"
            time.sleep(0.2)
    assert webhook.process.poll() is None
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.get("/healthz", webhook.certs.ca)  # the old CA no longer vouches for it


def test_files_that_do_not_load_keep_the_certificate_in_use(webhook: Webhook) -> None:
    webhook.certs.key.write_text("half-written\n")
    failed = b'fulcrum_webhook_certificate_reloads_total{outcome="failed"} 1.0'
    deadline = time.monotonic() + 10
    while True:
        status, text = webhook.get("/metrics")  # a handshake with the certificate in use
        assert status == 200
        if failed in text:
            break
        assert time.monotonic() < deadline, "the broken files were never looked at"
        time.sleep(0.2)
    assert b'outcome="loaded"' not in text
