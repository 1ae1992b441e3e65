"""``fulcrum bench-configmaps`` without a cluster: the kubelet's strategy in its configuration,
the flags, the pods, and the figures from two scrapes of the apiserver's /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum import cli
from fulcrum.harness import cluster, realnodes
from fulcrum.inspect import metrics
from fulcrum.lab import configmap_bench as cb


def _config(strategy: str) -> dict[str, object]:
    node = realnodes.RealNode("real-1", 1, 10250, 10248)
    return realnodes._kubelet_config("c", node, Path("/n"), Path("/ca"), strategy)


def test_the_kubelet_gets_the_strategy_and_refuses_another() -> None:
    for strategy in ("Get", "Cache", "Watch"):
        assert _config(strategy)["configMapAndSecretChangeDetectionStrategy"] == strategy
    with pytest.raises(realnodes.RealNodeError, match="give one of Get, Cache, Watch"):
        _config("Poll")
    with pytest.raises(cluster.ClusterError, match="--kubelet-configmap-strategy Poll"):
        cluster.up("cm-bench-unit-never", real_nodes=1, kubelet_configmap_strategy="Poll")


def test_flags() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["bench-configmaps", "--strategies", "Watch,Get", "--pods", "4"])
    assert args.strategies == ("Watch", "Get")
    assert parser.parse_args(["bench-configmaps"]).strategies == ("Get", "Cache", "Watch")
    up = parser.parse_args(["cluster", "up", "--kubelet-configmap-strategy", "Get"])
    assert up.kubelet_configmap_strategy == "Get"
    assert parser.parse_args(["cluster", "up"]).kubelet_configmap_strategy == "Watch"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench-configmaps", "--strategies", "Get,Poll"])


def test_each_pod_mounts_its_own_configmaps_and_no_token() -> None:
    pod = cb.pod_manifest(7, "real-2", "img", 3)
    spec = pod["spec"]
    assert [v["configMap"]["name"] for v in spec["volumes"]] == [
        "p007-cm0",
        "p007-cm1",
        "p007-cm2",
    ]
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "real-2"}
    assert len(spec["containers"][0]["volumeMounts"]) == 3


def _scrape(gets: int, lists: int, other: int, watches: int) -> metrics.Scrape:
    labels = 'component="apiserver",group="",resource="{r}",scope="namespace",subresource=""'
    text = "\n".join(
        [
            "# TYPE apiserver_request_total counter",
            f'apiserver_request_total{{{labels.format(r="configmaps")},verb="GET",code="200"}} '
            f"{gets}",
            f'apiserver_request_total{{{labels.format(r="configmaps")},verb="LIST",code="200"}} '
            f"{lists}",
            f'apiserver_request_total{{{labels.format(r="pods")},verb="GET",code="200"}} {other}',
            "# TYPE apiserver_longrunning_requests gauge",
            f'apiserver_longrunning_requests{{{labels.format(r="configmaps")},verb="WATCH"}} '
            f"{watches}",
            "# TYPE etcd_requests_total counter",
            f'etcd_requests_total{{operation="get",group="",resource="configmaps"}} {gets // 2}',
            f'etcd_requests_total{{operation="get",group="",resource="pods"}} {other}',
        ]
    )
    return metrics.parse(text + "\n")


def test_the_kubelets_share_is_the_steady_window_less_the_baseline() -> None:
    baseline = cb.window(_scrape(10, 5, 100, 2), _scrape(12, 5, 160, 2), 60)
    steady = cb.window(_scrape(100, 50, 1000, 2), _scrape(250, 50, 1090, 12), 60)
    assert baseline.configmaps == {"GET": 2}
    assert steady.configmaps == {"GET": 150}
    assert (steady.total, steady.open_watches) == (240, 12)
    row = cb.Row("Get", ["0", "0"], baseline, baseline, steady, [30.5, 61.0, 44.0])
    figures = row.figures(pods=10)
    assert figures["configmap_get_per_min"] == 148  # 150 less the baseline's 2
    assert figures["watches_opened"] == 10
    assert figures["etcd_configmap_reads_per_min"] == 74  # 75 less the baseline's 1
    assert figures["configmap_share"] == 0.625
    assert figures["per_pod_per_min"] == 14.8
    assert (figures["propagation_median_s"], figures["propagation_max_s"]) == (44.0, 61.0)
    table = cb.format_table(cb.Result(cb.Config(pods=10), [row]))
    assert "| Get | 148.0 | 0.0 | 10 | 74.0 | 240.0 (62.0) | 62.5 % | 14.8 | 44.0 / 61.0 |" in table
