"""What a Prometheus scrape of the extender's cluster figures costs, and what it costs the
filter (a benchmark: it asserts nothing).

A cache of ``--nodes`` nodes (one in four with 8 GPUs) and ``--pods`` bound pods, as the
informers would fill it. It prints the CPU of one scrape that computes the figures (a copy of
the snapshot under the cache's lock, then the inspection's allocation and FGD) and of one that
reads the cached figures (``ClusterCollector``'s ``max_age``), and how long a thread that takes
the cache's lock, as filter does, waits for it while another thread scrapes without pause.

    .venv/bin/python benchmarks/scrape_cost.py [--nodes 1000] [--pods 5000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).parents[1]))
from extender.cache import ClusterCache
from fulcrum.inspect.inspection import ClusterCollector
from tests import builders


def cache_of(nodes: int, pods: int) -> ClusterCache:
    cache = ClusterCache()
    for i in range(nodes):
        cache.apply("nodes", "ADDED", builders.node(f"n{i}", cpu="64", gpus=8 if i % 4 == 0 else 0))
    for i in range(pods):
        cache.apply("pods", "ADDED", builders.pod(f"p{i}", node_name=f"n{i % nodes}", cpu="1"))
    return cache


def cpu_ms(fn: object, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()  # type: ignore[operator]
        times.append((time.thread_time() - start) * 1000)
    return statistics.median(times)


def filter_waits(cache: ClusterCache, registry: CollectorRegistry, seconds: float) -> list[float]:
    """The filter's waits for the cache's lock (ms) while another thread scrapes nonstop."""
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    waits = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        with cache.lock:
            waits.append((time.perf_counter() - start) * 1000)
        time.sleep(0.001)
    stop.set()
    scraper.join()
    return waits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cache = cache_of(args.nodes, args.pods)
    print(f"{args.nodes} nodes, {args.pods} bound pods")
    print(f"  snapshot copy under the lock: {cpu_ms(cache.snapshot_copy):.2f} ms CPU")
    for label, max_age in (("computed at every scrape", 0.0), ("cached (max_age 15 s)", 15.0)):
        registry = CollectorRegistry()
        registry.register(ClusterCollector(cache.snapshot_copy, max_age=max_age))
        scrape_ms = cpu_ms(lambda r=registry: generate_latest(r))
        waits = filter_waits(cache, registry, args.seconds)
        p99 = statistics.quantiles(waits, n=100)[98]
        print(
            f"  {label}: scrape {scrape_ms:.2f} ms CPU; filter's wait for the lock over "
            f"{len(waits)} takes: median {statistics.median(waits):.3f} ms, p99 {p99:.3f} ms, "
            f"max {max(waits):.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
