"""openb production pods on 200 openb nodes: fulcrum-scheduler against default-scheduler.

Same pods, same nodes, same run (one scheduler after the other). The report is printed; the
test asserts what matters: every pod placed, none where it does not fit (GPU shares included),
fewer nodes used than default-scheduler.
"""

from __future__ import annotations

import os

import pytest

from fulcrum.harness import cluster
from fulcrum.lab.openb import compare, format_reports

pytestmark = pytest.mark.integration


def test_fulcrum_places_every_pod_where_it_fits_on_fewer_nodes() -> None:
    name = f"it-openb-{os.getpid()}"
    cluster.up(name, nodes=0, log=print)
    try:
        result = compare(name, n_nodes=200, n_pods=2000, seed=42, log=print)
    finally:
        cluster.down(name, log=print)
    print(format_reports(result))
    [(baseline, ours)], bound = result.rounds, result.lower_bound

    assert ours.bound == ours.pods > 1000
    assert ours.overcommitted_nodes == 0
    assert bound <= ours.nodes_used < baseline.nodes_used
