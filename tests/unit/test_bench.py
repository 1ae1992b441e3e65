"""``fulcrum bench``'s pure parts: the shape mix, the lower bound, latency percentiles from
kube-scheduler's histograms, the table and the JSON."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from fulcrum import cli
from fulcrum.harness import cluster
from fulcrum.harness.cluster import NodeShape
from fulcrum.inspect import metrics
from fulcrum.lab import bench
from fulcrum.lab.successors import Kept
from fulcrum.lab.workload import PodShape


def test_default_mix_parses_into_four_weighted_shapes() -> None:
    shapes = bench.parse_mix(bench.DEFAULT_MIX)
    assert [(s.cpu, s.memory, s.weight) for s in shapes] == [
        ("250m", "512Mi", 40),
        ("500m", "1Gi", 30),
        ("1", "2Gi", 20),
        ("2", "4Gi", 10),
    ]


@pytest.mark.parametrize("spec", ["", "1/2Gi", "1:2Gi:3", "x/2Gi:1", "1/2Gi:0", "1/2Gi:many"])
def test_bad_mixes_are_refused_with_the_expected_form(spec: str) -> None:
    with pytest.raises(ValueError, match=r"CPU/MEMORY:WEIGHT|positive"):
        bench.parse_mix(spec)


def test_the_mix_keeps_its_proportions_exactly_and_is_seeded() -> None:
    pods = bench.mix(bench.parse_mix(bench.DEFAULT_MIX), 1001)
    counts = Counter((p.cpu, p.memory) for p in pods)
    assert len(pods) == 1001
    assert counts == {
        ("250m", "512Mi"): 401,  # 400.4: the largest remainder
        ("500m", "1Gi"): 300,
        ("1", "2Gi"): 200,
        ("2", "4Gi"): 100,
    }
    assert pods == bench.mix(bench.parse_mix(bench.DEFAULT_MIX), 1001)
    assert pods[:20] != sorted(pods[:20], key=lambda p: (p.cpu, p.memory))  # interleaved


def test_openb_shapes_are_cpu_only_pods_that_fit_a_node() -> None:
    pods = bench.pod_shapes("openb:default", 200)
    assert len(pods) == 200
    assert all(p.gpu == 0 and p.cpu.endswith("m") and p.memory.endswith("Mi") for p in pods)
    with pytest.raises(ValueError, match="openb:nope"):
        bench.pod_shapes("openb:nope", 1)


def test_lower_bound_takes_the_tightest_resource() -> None:
    node = NodeShape(cpu="32", memory="256Gi", pods=110)
    assert bench.lower_bound([PodShape("1", "1Gi")] * 64, node) == 2  # cpu
    assert bench.lower_bound([PodShape("100m", "64Gi")] * 9, node) == 3  # memory
    assert bench.lower_bound([PodShape("10m", "16Mi")] * 221, node) == 3  # pods per node
    assert bench.lower_bound([], node) == 0
    # the default bench: 25,000 pods of the mix on 32-cpu nodes, cpu bound (16,250 cpu)
    assert bench.lower_bound(bench.pod_shapes(bench.DEFAULT_MIX, 25000)) == 508


METRICS = """\
# HELP scheduler_scheduling_attempt_duration_seconds ...
scheduler_scheduling_attempt_duration_seconds_bucket{profile="a",result="scheduled",le="0.001"} 10
scheduler_scheduling_attempt_duration_seconds_bucket{profile="a",result="scheduled",le="0.01"} 90
scheduler_scheduling_attempt_duration_seconds_bucket{profile="a",result="scheduled",le="0.1"} 100
scheduler_scheduling_attempt_duration_seconds_bucket{profile="a",result="scheduled",le="+Inf"} 100
scheduler_scheduling_attempt_duration_seconds_bucket{result="unschedulable",le="0.001"} 0
scheduler_scheduling_attempt_duration_seconds_bucket{result="unschedulable",le="+Inf"} 50
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="1",le="1"} 50
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="1",le="2"} 100
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="1",le="+Inf"} 100
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="2",le="1"} 0
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="2",le="2"} 0
scheduler_pod_scheduling_sli_duration_seconds_bucket{attempts="2",le="+Inf"} 100
""".splitlines()


def test_histogram_sums_series_over_labels_and_filters() -> None:
    buckets = bench.histogram(METRICS, bench.ATTEMPT, 'result="scheduled"')
    assert buckets == {0.001: 10, 0.01: 90, 0.1: 100, math.inf: 100}
    assert bench.histogram(METRICS, bench.ATTEMPT)[math.inf] == 150
    assert bench.histogram(METRICS, bench.SLI) == {1.0: 50, 2.0: 100, math.inf: 200}


def test_quantile_interpolates_within_a_bucket_like_prometheus() -> None:
    buckets = {0.001: 10.0, 0.01: 90.0, 0.1: 100.0, math.inf: 100.0}
    assert bench.quantile(buckets, 0.05) == pytest.approx(0.0005)
    assert bench.quantile(buckets, 0.5) == pytest.approx(0.001 + 0.009 * 40 / 80)
    assert bench.quantile(buckets, 0.99) == pytest.approx(0.01 + 0.09 * 9 / 10)
    # in +Inf: the highest finite bound; empty: None
    assert bench.quantile({1.0: 50.0, 2.0: 100.0, math.inf: 200.0}, 0.99) == 2.0
    assert bench.quantile({1.0: 0.0, math.inf: 0.0}, 0.5) is None
    assert bench.quantile({}, 0.5) is None


def test_latency_is_the_difference_between_two_reads() -> None:
    before = [line.rsplit(" ", 1)[0] + " 0" for line in METRICS if not line.startswith("#")]
    got = bench.latency(before, METRICS)
    assert got["attempt"]["p50"] == pytest.approx(0.0055)
    assert got["sli"]["p50"] == pytest.approx(2.0)  # 100 of 200 at or below 2 s, none past it
    assert set(got["sli"]) == {"p50", "p90", "p99"}
    assert bench.latency(METRICS, METRICS)["sli"] == {"p50": None, "p90": None, "p99": None}


def _requests() -> dict[str, object]:
    """The apiserver's requests over 10 s: half of what kube-apiserver 1.34 had served when its
    /metrics was recorded (tests/unit/data/apiserver.metrics) came before the window."""
    after = metrics.parse((Path(__file__).parent / "data" / "apiserver.metrics").read_text())
    before = metrics.Scrape(
        {n: {labels: v / 2 for labels, v in series.items()} for n, series in after.samples.items()}
    )
    return bench.requests_between(before, after, 10.0)


REQUESTS = _requests()


def _phase(scheduler: str, throughput: float) -> bench.Phase:
    return bench.Phase(
        scheduler=scheduler,
        pods=300,
        bound=300,
        nodes_used=9,
        configmap_seconds=1.5,
        create_seconds=2.0,
        schedule_seconds=300 / throughput,
        latency={
            "sli": {"p50": 0.5, "p90": 0.9, "p99": 1.0},
            "attempt": {"p50": 0.001, "p90": None, "p99": 0.004},
        },
        apiserver_qps=1234.4,
        cpu_seconds={"kube-apiserver": 0.6, scheduler: 0.3, "(machine)": 1.2, "(stolen)": 0.0},
        rss_mib={"kube-apiserver": 400.2, "etcd": 80.0},
        api_requests=REQUESTS,
    )


REBUILD = {
    "local": {
        "pods": 20,
        "seconds": 2.5,
        "p50": 0.5,
        "p99": 1.2,
        **Kept(20, 20, pooled=20, ip=20, with_claims=0, claims=0).to_json(),
    },
    "plain": {
        "pods": 20,
        "seconds": 2.0,
        "p50": 0.3,
        "p99": 0.5,
        **Kept(20, 19, pooled=0, ip=0, with_claims=0, claims=0).to_json(),
    },
    "ratio": 1.25,
    "api_requests": REQUESTS,
}


def _bench() -> bench.Bench:
    phases = {
        bench.DEFAULT: [_phase(bench.DEFAULT, 100.0)],
        bench.FULCRUM: [
            _phase(bench.FULCRUM, 40.0),
            _phase(bench.FULCRUM, 60.0),
            _phase(bench.FULCRUM, 50.0),
        ],
    }
    config = bench.Config(nodes=20, pods=300, configmaps=200, rounds=3, rebuild=20)
    return bench.Bench(config, 7, phases, REBUILD)


def test_the_table_has_a_column_per_scheduler_and_every_measure() -> None:
    table = bench.format_table(_bench())
    lines = table.splitlines()
    assert "default-scheduler" in lines[0] and "fulcrum-scheduler" in lines[0]
    row = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in lines
        if line.startswith("| ")
    }
    assert row["throughput (pods/s)"] == ["100.0", "50.0"]  # the median round of three
    assert row["nodes used (lower bound 7)"] == ["9", "9"]
    assert row["latency p50/p90/p99 s, queued to bound"] == ["0.500 / 0.900 / 1.000"] * 2
    assert row["latency p50/p90/p99 s, attempt (cycle + bind)"] == ["0.001 / - / 0.004"] * 2
    assert row["apiserver requests/s"] == ["1234", "1234"]
    assert row["CPU ms/pod kube-apiserver"] == ["2.00", "2.00"]
    assert row["CPU ms/pod default-scheduler"] == ["1.00", "-"]  # no such process
    assert row["CPU ms/pod (machine)"] == ["4.00", "4.00"]
    assert "CPU ms/pod (stolen)" not in row
    assert row["RSS MiB kube-apiserver"] == ["400", "400"]
    assert len({len(line) for line in lines if line.startswith("|")}) == 1  # aligned
    assert "same node 20/20, same IP 20/20 (IP pool), same PVCs n/a (no PVCs)" in table
    assert "same node 19/20, same IP n/a (no IP pool), same PVCs n/a (no PVCs)" in table
    assert "local/plain time: 1.25" in table


def test_the_json_names_the_config_every_round_and_the_rebuild() -> None:
    document = orjson.loads(orjson.dumps(_bench().to_json()))
    assert set(document) == {"config", "lower_bound", "schedulers", "rebuild"}
    assert document["config"]["node"] == {
        "cpu": "32",
        "memory": "256Gi",
        "pods": 110,
        "ephemeral_storage": "1Ti",
        "gpu": 0,
        "gpu_model": "",
    }
    rounds = document["schedulers"][bench.FULCRUM]
    assert len(rounds) == 3
    first = rounds[0]
    assert first["throughput"] == pytest.approx(40.0)
    assert first["cpu_ms_per_pod"] == {"kube-apiserver": 2.0, bench.FULCRUM: 1.0, "(machine)": 4.0}
    assert first["latency"]["sli"]["p99"] == 1.0
    assert {"bound", "nodes_used", "apiserver_qps", "rss_mib", "schedule_seconds"} <= set(first)
    assert document["rebuild"]["local"]["same_node"] == 20


def test_each_phase_has_the_apiservers_requests_by_resource_and_verb() -> None:
    top = REQUESTS["api_requests"][0]  # type: ignore[index]
    assert (top["resource"], top["verb"], top["count"]) == ("leases.coordination.k8s.io", "PUT", 37)
    assert top["rate"] == 3.7 and top["codes"] == {"200": 37}  # over the 10 s
    table = bench.format_table(_bench())
    for phase in ("default-scheduler, resumed to all bound:", "fulcrum-scheduler, resumed to"):
        assert phase in table
    assert "the local-rebuild roll, both Deployments created and rolled:" in table
    assert table.count("leases.coordination.k8s.io  PUT") == 3  # two phases and the roll
    document = orjson.loads(orjson.dumps(_bench().to_json()))
    assert document["schedulers"][bench.FULCRUM][0]["api_requests"] == REQUESTS
    assert document["rebuild"]["api_requests"]["total"] == REQUESTS["total"]
    legacy = dict(document["schedulers"][bench.FULCRUM][0])
    del legacy["api_requests"]  # a run saved before they were recorded
    old = bench.Bench.from_json({**document, "schedulers": {bench.FULCRUM: [legacy]}})
    assert "resumed to all bound" not in bench.format_table(old)


def test_bench_flags_and_defaults() -> None:
    args = cli.build_parser().parse_args(["bench"])
    assert (args.nodes, args.pods, args.configmaps, args.rebuild) == (1000, 25000, 150000, 1000)
    assert (args.scheduler, args.rounds, args.output) == ("both", 1, "text")
    assert args.shapes == bench.DEFAULT_MIX
    assert args.nodes_to_score == 100
    assert not (args.nominate or args.fulcrum_first or args.go_default_gc)  # off unless asked
    for bad in (["--scheduler", "other"], ["--nodes-to-score", "101"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["bench", *bad])
    compare = cli.build_parser().parse_args(["compare", "--nodes-to-score", "10"])
    assert compare.nodes_to_score == 10  # fulcrum compare takes the same setting


def test_fulcrum_first_runs_fulcrum_schedulers_cluster_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str | None] = []

    def on_cluster(config: bench.Config, scheduler: str | None, *_: object, **__: object) -> Any:
        order.append(scheduler)
        return [], None

    monkeypatch.setattr(bench, "on_cluster", on_cluster)
    config = bench.Config(nodes=1, pods=1, rebuild=0, fulcrum_first=True)
    bench.run_bench(config, log=lambda _: None)
    assert order == [bench.FULCRUM, bench.DEFAULT]


def test_nodes_to_score_is_fulcrum_schedulers_percentage() -> None:
    registration = cluster.ExtenderRegistration(port=1, nodes_to_score=10)
    assert cluster.scheduler_config(registration, Path("k"))["percentageOfNodesToScore"] == 10


def test_a_bad_shape_is_refused_before_any_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--shapes", "1cpu"]) == 2
    assert "--shapes" in capsys.readouterr().err


def test_a_saved_run_prints_the_same_table() -> None:
    original = _bench()
    document = orjson.loads(orjson.dumps(original.to_json()))
    assert bench.format_table(bench.Bench.from_json(document)) == bench.format_table(original)


def test_a_run_saved_before_the_kept_counts_prints_as_it_did() -> None:
    legacy = {"pods": 20, "seconds": 2.0, "p50": 0.3, "p99": 0.5, "same_node": 20}
    rebuild = {
        "local": {**legacy, "same_ip": 20, "total": 20},
        "plain": {**legacy, "same_ip": 0, "total": 20},
        "ratio": 1.0,
    }
    lines = bench.format_rebuild(rebuild)
    assert lines[1].endswith("same node 20/20, same IP 20/20")
    assert lines[2].endswith("same node 20/20, same IP 0/20")


def test_a_failed_roll_is_reported_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(*args: object, **kwargs: object) -> None:
        raise TimeoutError("local, plain running: not done after 300 s")

    monkeypatch.setattr(bench.demo, "rebuild_pair", stuck)
    rolled = bench.roll("x", 20, log=lambda _: None)
    assert rolled == {"error": "local, plain running: not done after 300 s"}
    table = bench.format_table(bench.Bench(bench.Config(), 7, _bench().phases, rolled))
    assert table.endswith("  failed: local, plain running: not done after 300 s")
