"""Trace loading: the real openb files load; broken ones name file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.lab.traces import openb_dir
from scheduler.snapshot import UNKNOWN_GPU_MODEL
from scheduler.trace import TraceError, load_nodes, load_pods, spec_models

OPENB = openb_dir()
NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,T4\nn1,32000,131072,0,\n"
PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
    "p0,1000,1024,1,500,\n"
    "p1,2000,2048,2,1000,T4\n"
    "p2,500,512,0,0,\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_small_trace_loads(tmp_path: Path) -> None:
    nodes = load_nodes(write(tmp_path, "n.csv", NODES))
    pods = load_pods(write(tmp_path, "p.csv", PODS), known_models=frozenset(nodes.models))
    assert nodes.names == ("n0", "n1")
    assert nodes.total_gpu_milli == 2000
    assert pods.request(1).gpu_models == frozenset({"T4"})
    assert pods.request(1).memory == 2048 << 20
    assert pods.request(2).gpu_count == 0


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        (PODS.replace("gpu_milli,", "gpu_mili,"), 1, "gpu_milli", "missing column"),
        (PODS.replace("p1,2000", "p1,-2000"), 3, "cpu_milli", "negative value"),
        (PODS.replace("p2,500,512", "p2,500,lots"), 4, "memory_mib", "not a number"),
        (PODS.replace("p0,1000,1024", "p0,1000.5,1024"), 2, "cpu_milli", "not a whole number"),
        (PODS.replace("1000,T4", "1000,H100|T4"), 3, "gpu_spec", "unknown GPU model"),
        (PODS.replace("p2,", "p0,"), 4, "name", "duplicate pod name"),
        (PODS.replace("p1,2000,2048,2,1000", "p1,2000,2048,2,500"), 3, "gpu_milli", "whole GPUs"),
    ],
)
def test_bad_pod_files_name_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: str, message: str
) -> None:
    path = write(tmp_path, "pods.csv", text)
    with pytest.raises(TraceError) as info:
        load_pods(path, known_models=frozenset({"T4"}))
    error = info.value
    assert (error.path, error.line, error.column) == (str(path), line, column)
    assert message in str(error)
    assert str(path) in str(error) and f"line {line}" in str(error)


def test_gpus_without_a_model_are_a_model_of_their_own(tmp_path: Path) -> None:
    snapshot = load_nodes(write(tmp_path, "n.csv", NODES.replace(",2,T4", ",2,"))).to_snapshot()
    assert UNKNOWN_GPU_MODEL in snapshot.model_names
    assert snapshot.gpu_supply_by_model()[UNKNOWN_GPU_MODEL] == 2


def test_bad_node_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="file not found"):
        load_nodes(tmp_path / "absent.csv")
    with pytest.raises(TraceError, match="empty file"):
        load_nodes(write(tmp_path, "e.csv", ""))


def test_gpu_milli_is_clipped_and_spec_is_optional(tmp_path: Path) -> None:
    text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1,1500\n"
    pods = load_pods(write(tmp_path, "p.csv", text))
    assert pods.gpu_milli.tolist() == [1000]
    assert pods.gpu_spec == ("",)


def test_spec_models() -> None:
    assert spec_models("") == frozenset()
    assert spec_models("nan") == frozenset()
    assert spec_models("V100M16|V100M32|") == frozenset({"V100M16", "V100M32"})


@pytest.mark.skipif(not OPENB.exists(), reason="openb trace not available")
def test_real_openb_files_load() -> None:
    nodes = load_nodes(OPENB / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213 and int(nodes.gpu_count.sum()) == 6212
    pods = load_pods(OPENB / "openb_pod_list_gpuspec33.csv", known_models=frozenset(nodes.models))
    assert len(pods) == 8152
