"""examples/fulcrum-tenant-affinity and fulcrum-zone-spread pip-installed into a fresh virtual
environment, as their READMEs say: their own tests pass there, the registry there has them,
and ``fulcrum simulate --policy TenantAffinity`` replays a slice of the openb trace with it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from policies.registry import available
from tests.pluginenv import fresh_venv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ROOT / "examples" / "fulcrum-tenant-affinity",
    ROOT / "examples" / "fulcrum-zone-spread",
]
OPENB = ROOT / "fulcrum" / "lab" / "traces" / "openb"


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def head(source: Path, lines: int, target: Path) -> Path:
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:lines]))
    return target


def test_the_examples_install_with_pip_and_replay_the_openb_trace(tmp_path: Path) -> None:
    python = fresh_venv(tmp_path, *EXAMPLES)
    ask = "from policies.registry import available; print(' '.join(available()))"
    names = run(python, "-c", ask, cwd=tmp_path)
    assert names.returncode == 0, names.stderr
    assert {"TenantAffinity", "ZoneSpread"} <= set(names.stdout.split())
    assert "TenantAffinity" not in available()  # installed there only
    tests = run(
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *(str(e / "tests") for e in EXAMPLES),
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    nodes = head(OPENB / "openb_node_list_gpu_node.csv", 121, tmp_path / "nodes.csv")
    pods = head(OPENB / "openb_pod_list_default.csv", 801, tmp_path / "pods.csv")
    replay = run(
        python,
        "-m",
        "fulcrum",
        "simulate",
        "--nodes",
        str(nodes),
        "--pods",
        str(pods),
        "--policy",
        "tenantaffinity",
        "-o",
        "json",
        cwd=tmp_path,
    )
    assert replay.returncode == 0, replay.stderr
    document = json.loads(replay.stdout)
    assert document["policy"] == "TenantAffinity"
    assert document["seeds"][0]["alloc_at_100"] > 0
