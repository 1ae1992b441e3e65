"""Decide before kube-scheduler looks: nominate Fulcrum's pick for each new pending pod.

kube-scheduler tries a pod's ``status.nominatedNodeName`` first, and when that node passes its
filters it goes no further: it filters one node instead of every node, and sends the extender's
filter one name instead of all the feasible ones. So, with ``nominate: true``, the extender
decides each pod as the pod watch first shows it pending (``ClusterCache.arrivals``), in batches,
in arrival order, and writes its pick as the pod's nomination (one ``pods/status`` PATCH per pod).
The pick is charged to its node at once (``ClusterCache.nominate``), so the next pods are
decided around it as kube-scheduler's own accounting of nominated pods does; the charge is lifted
when kube-scheduler asks about the pod (``Verbs.filter``), which then decides it as always, over
the names sent, so a node that filled meanwhile is not chosen: kube-scheduler's Filter fails it
and sends the other nodes.

Only pods kube-scheduler binds itself are nominated: those Fulcrum binds (GPU devices, IP pools,
the decision record) and local-rebuild successors (``extender.rebuild_gate``) are decided at
filter over every node, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from extender.cache import ClusterCache, PendingPod
from extender.decide import Decider
from extender.events import EventSink

log = logging.getLogger(__name__)

BATCH = 25  # pods decided per turn of the event loop: a filter waits at most one batch
IDLE_SECONDS = 0.01  # how often an idle nominator looks for arrivals
PATCHES_IN_FLIGHT = 32


class Nominator:
    """Takes the cache's arrivals, decides them with ``decider`` and writes each pick through
    ``sink``; ``scheduler``: the kube-scheduler profile whose pods it nominates."""

    def __init__(
        self,
        cache: ClusterCache,
        decider: Decider,
        sink: EventSink,
        scheduler: str,
        *,
        binds: Callable[[PendingPod], bool],
    ) -> None:
        self.cache, self.decider, self.sink, self.scheduler = cache, decider, sink, scheduler
        self.binds = binds  # whether Fulcrum binds the pod (then it is not nominated)
        self.nominated = 0
        self._slots = asyncio.Semaphore(PATCHES_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        cache.arrivals_wanted = True

    def wanted(self, pod: PendingPod) -> bool:
        """Whether ``pod`` is nominated: kube-scheduler's pod of our profile, bound by it."""
        return pod.scheduler == self.scheduler and pod.successor is None and not self.binds(pod)

    def decide(self, limit: int = BATCH) -> list[tuple[PendingPod, str]]:
        """Up to ``limit`` arrivals decided and charged: (pod, node) to nominate."""
        picks = []
        cache = self.cache
        with cache.lock:
            for _ in range(min(limit, len(cache.arrivals))):
                pod = cache.pending(cache.arrivals.popleft())
                if pod is None or not self.wanted(pod):
                    continue
                node = self.decider.pick(cache.snapshot, pod.request)
                if node and cache.nominate(pod.uid, node):
                    picks.append((pod, node))
        return picks

    async def run(self) -> None:
        """Until cancelled: decide arrivals a batch at a time, and write the nominations."""
        while True:
            if not self.cache.arrivals:
                await asyncio.sleep(IDLE_SECONDS)
                continue
            for pod, node in self.decide():
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._write(pod, node))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)  # let filter requests in between batches

    async def _write(self, pod: PendingPod, node: str) -> None:
        try:
            namespace, _, name = pod.key.partition("/")
            await self.sink.nominate(namespace, name, pod.uid, node)
            self.nominated += 1
        except Exception as exc:  # advice: kube-scheduler decides without it
            log.warning("could not nominate node %s for pod %s: %s", node, pod.key, exc)
        finally:
            self._slots.release()
