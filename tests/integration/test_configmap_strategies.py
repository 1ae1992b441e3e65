"""``fulcrum bench-configmaps`` at its smallest, on a real node: the kubelet's configmap strategy
decides what mounted configmaps cost the apiserver (``fulcrum.lab.configmap_bench``).

With ``Get`` the kubelet GETs every mounted configmap again at each pod's resync (every 60-90 s),
so a steady window of 95 s holds at least one GET per configmap; with ``Watch`` it opens one
watch per configmap and GETs none (20 s show it). Each strategy runs on its own cluster, one
real node; about 3 minutes in all.
"""

from __future__ import annotations

import pytest

from fulcrum.lab import configmap_bench as cb
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

PODS, CONFIGMAPS = 3, 2


def _run(strategy: str, window: float) -> cb.Row:
    config = cb.Config(
        name="it-cm",
        strategies=(strategy,),
        real_nodes=1,
        pods=PODS,
        configmaps=CONFIGMAPS,
        window=window,
        baseline=10,
        updates=0,
    )
    result = cb.run(config, say=print)
    print(cb.format_table(result))
    return result.rows[0]


def test_get_rereads_every_configmap_and_watch_watches_them() -> None:
    require_real_nodes()
    mounted = PODS * CONFIGMAPS
    # Get: one GET per configmap as each pod starts, and again at its resync in the window
    get = _run("Get", 95)
    assert get.startup.configmaps.get("GET", 0) >= mounted, get.startup
    assert get.steady.configmaps.get("GET", 0) >= mounted, get.steady
    assert get.steady.open_watches - get.baseline.open_watches == 0, get.steady
    # Watch: a watch per configmap, opened as the pods start and still open; no GETs
    watch = _run("Watch", 20)
    assert watch.steady.open_watches - watch.baseline.open_watches == mounted, watch.steady
    assert watch.startup.configmaps.get("GET", 0) <= 1, watch.startup
    assert watch.steady.configmaps.get("GET", 0) <= 1, watch.steady
