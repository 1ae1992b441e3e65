"""Fulcrum's health and metrics listeners: loopback unless told, a health server that starts no
thread per connection, cluster figures computed at most every ``max_age`` seconds."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest

from extender.cache import ClusterCache
from fulcrum import cli
from fulcrum.inspect.inspection import ClusterCollector
from fulcrum.run import rebuild_serve
from tests import builders


def test_health_and_metrics_listen_on_loopback_unless_told() -> None:
    parser = cli.build_parser()
    serve = parser.parse_args(["serve", "--metrics-port", "9090"])
    rebuild = parser.parse_args(["rebuild"])
    webhook = parser.parse_args(["webhook", "--tls-cert", "c", "--tls-key", "k"])
    assert (serve.metrics_host, rebuild.health_host, webhook.host) == ("127.0.0.1",) * 3
    assert serve.host is None  # the ExtenderConfiguration's, 127.0.0.1 unless set


class Counting:
    """A snapshot source that counts the copies it is asked for."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache, self.copies = cache, 0

    def __call__(self):  # type: ignore[no-untyped-def]
        self.copies += 1
        return self.cache.snapshot_copy()


def test_scrapes_within_max_age_read_the_cached_figures() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", builders.node("n0", cpu="4"))
    cache.apply("pods", "ADDED", builders.pod("a", node_name="n0", cpu="2"))
    now = [100.0]
    source = Counting(cache)
    registry = CollectorRegistry()
    registry.register(ClusterCollector(source, max_age=15, clock=lambda: now[0]))
    assert source.copies == 0  # registering asks for nothing (the registry only describes)
    first = generate_latest(registry).decode()
    assert 'fulcrum_cluster_allocated_ratio{resource="cpu"} 0.5' in first
    cache.apply("pods", "ADDED", builders.pod("b", node_name="n0", cpu="2"))
    now[0] += 14.9
    assert generate_latest(registry).decode() == first  # cached: the cache's lock not taken
    assert source.copies == 1
    now[0] += 0.1  # 15 s after the first computation
    assert (
        'fulcrum_cluster_allocated_ratio{resource="cpu"} 1.0' in generate_latest(registry).decode()
    )
    assert source.copies == 2


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status)


def test_the_rebuild_health_server_answers_on_one_thread(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rebuild_serve, "HEALTH_TIMEOUT_SECONDS", 0.5)
    ready = threading.Event()
    ready.set()
    before = threading.active_count()
    server = rebuild_serve.health_server("127.0.0.1", 0, ready, CollectorRegistry())
    port = server.server_address[1]
    try:
        assert server.server_address[0] == "127.0.0.1"
        # connections that send nothing: a threading server would start a thread for each
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        time.sleep(0.05)
        assert threading.active_count() == before + 1  # the server's own thread only
        start = time.monotonic()
        assert get(port, "/healthz") == 200  # answered once the stalled clients time out
        assert time.monotonic() - start < 5 * 0.5 + 5
        for conn in idle:
            conn.close()
        assert get(port, "/readyz") == 200
        assert threading.active_count() == before + 1
    finally:
        server.shutdown()
        server.server_close()
