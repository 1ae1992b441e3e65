from fulcrum.lab.openb import MACHINE, RunReport, format_cpu


def report(scheduler: str, bound: int, cluster_cpu: float) -> RunReport:
    return RunReport(
        scheduler=scheduler,
        pods=bound,
        bound=bound,
        nodes_used=1,
        overcommitted_nodes=0,
        create_seconds=1.0,
        schedule_seconds=10.0,
        cpu_seconds={"kube-apiserver": cluster_cpu, MACHINE: cluster_cpu},
    )


def test_the_cpu_table_gives_each_column_cluster_cpu_per_pod_relative_to_the_first() -> None:
    # 1,000 pods for 6 s of CPU against 500 pods for 4.5 s: 6 ms against 9 ms per pod
    table = format_cpu(report("default-scheduler", 1000, 6.0), report("fulcrum", 500, 4.5))
    row = next(line for line in table.splitlines() if "first/this per pod" in line)
    assert row.split()[-2:] == ["1.00", "0.67"]
    total = next(line for line in table.splitlines() if "cluster total" in line)
    assert total.split()[-2:] == ["6.00", "9.00"]


def test_compare_as_json_has_every_round_and_the_ratios() -> None:
    import orjson

    from fulcrum.lab.openb import Comparison

    default = RunReport("default-scheduler", 10, 10, 5, 0, 1.0, 2.0, {"machine": 1.0})
    ours = RunReport("fulcrum-scheduler", 10, 10, 3, 0, 1.0, 4.0, {"machine": 2.0})
    document = orjson.loads(orjson.dumps(Comparison([(default, ours)], 3).to_json()))
    assert document["lower_bound"] == 3 and document["throughput_ratios"] == [0.5]
    assert document["rounds"][0]["fulcrum-scheduler"]["nodes_used"] == 3
    assert document["rounds"][0]["default-scheduler"]["throughput"] == 5.0
