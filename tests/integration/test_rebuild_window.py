"""Local rebuild when kube-scheduler shows Fulcrum only a window of the nodes.

With ``percentageOfNodesToScore`` below 100 (the chart's ``scheduler.percentageOfNodesToScore``),
kube-scheduler stops its Filter once it has found that many feasible nodes (at least 100),
starting where the last pod's search ended: a successor's held node is often not among them.
The extender then nominates it (``status.nominatedNodeName``), which kube-scheduler tries
first, alone. Without that, a lone successor waited for an unrelated cluster event, minutes
on a quiet cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr

pytestmark = pytest.mark.integration

NS = "it-window"
NODES = 300  # a window of 100 feasible nodes (kube-scheduler's minimum) is a third of them
PODS = 8
PROMPT_SECONDS = 30.0  # a successor out of the window used to wait up to 5 minutes


@pytest.fixture(scope="module")
def kit() -> Iterator[rr.Kit]:
    name = f"it-window-{os.getpid()}"
    cluster.up(name, nodes=NODES, nodes_to_score=10, log=print)
    try:
        kit = rr.Kit.of(name)
        kit.kubectl("create", "namespace", NS)
        yield kit
    finally:
        cluster.down(name, log=print)


def test_a_lone_successor_comes_back_to_its_node_promptly_at_ten_percent(kit: rr.Kit) -> None:
    """Bare opted-in pods replaced one at a time on a quiet cluster: each successor is Running
    on its predecessor's node within seconds, those outside the window by nomination."""
    rr.apply(kit, [rr.bare_pod(NS, f"solo-{i}", "solo") for i in range(PODS)])
    rr.wait_running(kit, NS, {"solo": PODS}, timeout=120)
    rr.wait_guarded(kit, NS, {"solo": PODS})
    homes = {m.name: m.node for m in rr.members(kit, NS, "solo").values()}
    nominated = 0
    for done, (name, home) in enumerate(homes.items()):
        started = time.monotonic()
        rr.replace_force(kit, [rr.bare_pod(NS, name, "solo", env="2")])
        rr.wait_for(
            f"{name} back",
            lambda done=done: rr.running(kit, NS, "solo", rr.has_env("2")) > done,
            timeout=PROMPT_SECONDS,
            interval=0.2,
        )
        pod = kit.core.read_namespaced_pod(name, NS)
        took, nomination = time.monotonic() - started, pod.status.nominated_node_name
        print(f"{name}: back on {pod.spec.node_name} after {took:.1f} s, nominated {nomination}")
        assert (pod.spec.node_name, nomination or home) == (home, home), name
        nominated += nomination is not None
    assert nominated  # the window left a held node out (each is out with odds about 2/3)
