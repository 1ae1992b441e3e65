"""A refused bind becomes a Warning Event on the pod: posted in the background, not repeated."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

from extender.cache import ClusterCache
from extender.config import ExtenderSettings
from extender.verbs import Verbs
from extender.wire import ExtenderBindingArgs
from kube.api import SCHEDULER_NAME
from tests import builders
from tests.builders import node

# the pods of the scheduler that calls the extender: bind serves no other
pod = functools.partial(builders.pod, scheduler=SCHEDULER_NAME)


class Apiserver:
    """Binds nothing (every pod is already bound to n2); records Events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    async def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        from extender.bind import BindConflict

        raise BindConflict

    async def current(self, namespace: str, name: str) -> tuple[str, str]:
        return "p", "n2"

    async def allocate_ip(
        self, namespace: str, pool: str, holder: str, want: str | None, pod: Mapping[str, object]
    ) -> str:
        raise AssertionError("no IP pools here")

    async def event(self, namespace: str, name: str, uid: str, reason: str, message: str) -> None:
        self.events.append((f"{namespace}/{name}", uid, reason, message))


def test_a_refused_bind_is_told_on_the_pod_once() -> None:
    cache = ClusterCache()
    cache.apply("nodes", "ADDED", node("n1"))
    cache.apply("pods", "ADDED", pod("p"))
    apiserver = Apiserver()
    verbs = Verbs(ExtenderSettings(), cache, apiserver, events=apiserver)
    args = ExtenderBindingArgs(PodName="p", PodNamespace="ns", PodUID="p", Node="n1")

    async def twice() -> list[str]:
        errors = [(await verbs.bind(args)).Error for _ in range(2)]
        await asyncio.sleep(0.01)  # the Event is posted in the background
        return errors

    errors = asyncio.run(twice())

    assert errors[0] == "pod ns/p is already bound to n2, not n1"
    assert apiserver.events == [("ns/p", "p", "BindRefused", errors[0])]  # the retry: quiet
