"""The rebuild controller's ``/metrics``: reconciles by outcome, and, read from its informers'
store at each scrape, the work queue, Reservations by phase and IP pool usage; and how long
rebuilds take, from reserving a room to its successor's claim."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kube import ippool, objects
from kube.metrics import standard_registry
from rebuild.store import Store
from rebuild.workqueue import WorkQueue

RESERVED_REMEMBERED = 100_000


class _StoreCollector(Collector):
    def __init__(self, store: Store, queue: WorkQueue) -> None:
        self.store, self.queue = store, queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("fulcrum_rebuild_queue_depth", "Work keys ready to reconcile")
        depth.add_metric([], len(self.queue))
        yield depth
        phases = GaugeMetricFamily(
            "fulcrum_rebuild_reservations", "Reservations by phase", labels=["phase"]
        )
        reservations = self.store.all("reservations")
        counted = Tally(str((r.get("status") or {}).get("phase", "Held")) for r in reservations)
        for phase in ("Held", "Expired", "Claimed"):
            phases.add_metric([phase], counted[phase])
        yield phases
        used = GaugeMetricFamily(
            "fulcrum_rebuild_pool_addresses",
            "IP pool addresses by state",
            labels=["namespace", "pool", "state"],
        )
        for pool in self.store.all("ippools"):
            meta = objects.meta(pool)
            try:
                held, size = len(ippool.holders(pool)), len(ippool.pool_addresses(pool))
            except ValueError:  # a pool the controller cannot read: its Events say why
                continue
            where = [str(meta.get("namespace")), str(meta.get("name"))]
            used.add_metric([*where, "used"], held)
            used.add_metric([*where, "free"], size - held)
        yield used


class ControllerMetrics:
    """The registry ``fulcrum rebuild`` serves, and the counter its workers increment."""

    def __init__(self, store: Store, queue: WorkQueue) -> None:
        self.registry: CollectorRegistry = standard_registry("rebuild")
        self.reconciles = Counter(
            "fulcrum_rebuild_reconciles",
            "Work keys reconciled, by kind and outcome (done, later: asked to look again, "
            "error: retried with back-off)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.bad_objects = Counter(
            "fulcrum_rebuild_bad_objects",
            "Objects read in part or skipped: a value not what Fulcrum writes, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, queue))
        self.rebuild_latency = Histogram(
            "fulcrum_rebuild_latency_seconds",
            "From reserving a deleted pod's room to its successor claiming it (bound there)",
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self._reserved: OrderedDict[str, float] = OrderedDict()

    def reserved(self, reservation: str) -> None:
        """The controller created Reservation ``namespace/name`` now."""
        self._reserved[reservation] = time.monotonic()
        while len(self._reserved) > RESERVED_REMEMBERED:
            self._reserved.popitem(last=False)

    def claimed(self, reservation: str) -> None:
        """A successor claimed it: one rebuild's latency (unknown if created before a restart)."""
        started = self._reserved.pop(reservation, None)
        if started is not None:
            self.rebuild_latency.observe(time.monotonic() - started)
