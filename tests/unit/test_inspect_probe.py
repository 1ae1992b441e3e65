"""``fulcrum.inspect.probe.read`` against an apiserver on loopback that serves recorded metrics:
what the command runs meanwhile runs between the two scrapes, and the window is measured."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fulcrum.inspect import probe
from fulcrum.run import kubeconfig

METRICS = (Path(__file__).parent / "data" / "apiserver.metrics").read_bytes()
# the fields of /version the client requires, all but gitVersion empty
VERSION = (
    "major",
    "minor",
    "gitCommit",
    "gitTreeState",
    "buildDate",
    "goVersion",
    "compiler",
    "platform",
)


@pytest.fixture
def apiserver() -> Iterator[tuple[str, list[str]]]:
    """An apiserver on loopback: recorded /metrics, ok health, empty Lease lists; the paths it
    was asked for, in order."""
    asked: list[str] = []

    class Serve(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path.split("?")[0])
            if self.path.startswith("/metrics"):
                body = METRICS
            elif self.path.startswith("/version"):
                body = json.dumps({**dict.fromkeys(VERSION, ""), "gitVersion": "v1.34.4"}).encode()
            elif "/leases" in self.path:
                body = json.dumps({"kind": "LeaseList", "items": []}).encode()
            else:
                body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def client(tmp_path: Path, server: str) -> Any:
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
"""
    )
    return kubeconfig.api_client(path, user_default=False, context=None)


def test_the_window_runs_meanwhile_and_is_measured(
    apiserver: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, asked = apiserver
    during: list[list[str]] = []

    def meanwhile() -> bool:
        during.append(list(asked))
        time.sleep(0.5)  # longer than the window: nothing more is slept
        return True

    started = time.monotonic()
    view = probe.read(
        client(tmp_path, url),
        window=0.2,
        etcd=None,
        scheduler=None,
        controller_manager=None,
        meanwhile=meanwhile,
    )
    assert time.monotonic() - started < 1.5
    assert during == [["/metrics"]]  # after the first scrape, before the second
    assert 0.5 <= view.window < 1.0  # as measured, not as asked
    assert view.apiserver.window is not None and view.apiserver.window.window == view.window
    assert set(view.apiserver.last.samples) <= {  # type: ignore[union-attr]
        f"{family}{suffix}"
        for family in probe.APISERVER_FAMILIES
        for suffix in ("", "_bucket", "_sum", "_count")
    }
    assert "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases" in asked


def test_an_apiserver_that_cannot_list_is_not_asked_for_its_leases(
    apiserver: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, asked = apiserver
    view = probe.read(
        client(tmp_path, url),
        window=0.1,
        etcd=None,
        scheduler=None,
        controller_manager=None,
        meanwhile=lambda: False,
    )
    assert not [path for path in asked if "/leases" in path]
    assert view.leases_error is not None and "not ready" in view.leases_error
    assert view.window >= 0.1
