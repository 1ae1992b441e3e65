"""``fulcrum simulate`` (fulcrum.lab.simulate.main): output, JSON, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fulcrum.lab.simulate import main

NODES = "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(
    f"n{i},32000,131072,{[1, 2, 4, 8][i % 4]},{'T4' if i % 2 else 'V100'}\n" for i in range(12)
)
PODS = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + "".join(
    f"p{i},{[1000, 2000, 4000][i % 3]},1024,{[0, 1, 1, 2][i % 4]},"
    f"{[0, 500, 1000, 1000][i % 4]},{'T4' if i % 7 == 0 and i % 4 else ''}\n"
    for i in range(60)
)


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes, pods = tmp_path / "nodes.csv", tmp_path / "pods.csv"
    nodes.write_text(NODES)
    pods.write_text(PODS)
    return nodes, pods


def test_simulate_writes_summary_and_json(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    code = main(
        [
            "--nodes",
            str(trace[0]),
            "--pods",
            str(trace[1]),
            "--policy",
            "ARCHIMEDES",
            "--seed",
            "1",
            "2",
            "-o",
            "json",
            "--output-file",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "seed 1: alloc@100" in captured.out and "mean over 2 seeds" in captured.out
    assert "pods" in captured.err  # progress goes to stderr
    document = json.loads(out.read_text())
    assert document["policy"] == "Archimedes"
    assert [s["seed"] for s in document["seeds"]] == [1, 2]
    first = document["seeds"][0]
    assert len(first["alloc_curve"]) == 131
    assert first["alloc_at_130"] == first["alloc_curve"][130]
    assert {"alloc_at_100", "frag_curve", "pods_failed", "nodes_used", "nodes_lower_bound"} <= set(
        first
    )


def test_bad_trace_is_a_one_line_error(
    trace: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(PODS.replace("\np3,1000,", "\np3,abc,"))
    code = main(["--nodes", str(trace[0]), "--pods", str(bad), "--policy", "fgd"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}, line 5, column 'cpu_milli': not a number: 'abc'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy", "fgd", "--seed", "x"], "invalid int value"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(
    trace: tuple[Path, Path], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--nodes", str(trace[0]), "--pods", str(trace[1])] if argv else []
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_in_order_places_cpu_pods_then_gpu_shares_without_stranding_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14's sequence: 160 CPU pods, then 40 GPU shares, on 10 nodes of 32 cpu, 2 A100."""
    nodes, pods, out = tmp_path / "n.csv", tmp_path / "p.csv", tmp_path / "out.json"
    nodes.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        + "".join(f"n{i},32000,262144,2,A100\n" for i in range(10))
    )
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        + "".join(f"cpu-{i},1000,1024,0,0,\n" for i in range(160))
        + "".join(f"share-{i},100,128,1,300,\n" for i in range(40))
    )
    args = ["--nodes", str(nodes), "--pods", str(pods), "--in-order", "-o", "json"]
    args += ["--output-file", str(out)]
    assert main([*args, "--policy", "archimedes"]) == 0
    assert "Archimedes, in order: placed 200/200" in capsys.readouterr().out
    assert json.loads(out.read_text())["in_order"]["placed"] == 200
    assert main([*args, "--policy", "mostallocated"]) == 0  # a plain packer strands GPUs
    printed = capsys.readouterr().out
    assert "placed 190/200" in printed and "unplaced: share-30 (line 192)" in printed
