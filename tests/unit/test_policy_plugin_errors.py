"""Installed plugin packages that break, pip-installed as users install them: each is refused
with an error naming it and the fix, and none stops Fulcrum from starting unless it is named.

``tests/plugins/broken_policy`` declares a plugin that raises at import (``BrokenAtImport``),
one named like a built-in (``MostAllocated``) and four whose scores break the contract; the
example package beside it is a plugin that works.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.pluginenv import fresh_venv

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "plugins" / "broken_policy"
EXAMPLE = ROOT / "examples" / "fulcrum-policy-example"


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_venv(tmp_path_factory.mktemp("plugins"), EXAMPLE, BROKEN)


def fulcrum(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "fulcrum.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def check(python: Path, tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    """``fulcrum serve --check`` of ``config``: the start-up of ``fulcrum serve``, less serving."""
    path = tmp_path / "extender.yaml"
    path.write_text(config)
    return fulcrum(python, "serve", "--check", "--config", str(path))


def test_policies_lists_each_plugin_with_where_it_comes_from(python: Path) -> None:
    listed = fulcrum(python, "policies", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["policies"]}
    assert rows["GpuNodesForGpuPods"] == {
        "name": "GpuNodesForGpuPods",
        "builtin": False,
        "source": "fulcrum-policy-example 0.1.0 "
        "(fulcrum_policy_example.gpu_nodes_for_gpu_pods:create)",
        "distribution": "fulcrum-policy-example",
        "version": "0.1.0",
        "entry_point": "fulcrum_policy_example.gpu_nodes_for_gpu_pods:create",
        "loaded": True,
        "reads": "resources only",
    }
    assert rows["Archimedes"] == {
        "name": "Archimedes",
        "builtin": True,
        "source": "built-in",
        "reads": "resources only",
    }
    broken = rows["BrokenAtImport"]
    assert not broken["loaded"]
    assert (
        "RuntimeError: fulcrum_broken_policy.broken_at_import fails at import" in broken["problem"]
    )
    assert broken["fix"].endswith("(pip uninstall fulcrum-broken-policy)")

    text = fulcrum(python, "policies").stdout
    assert "GpuNodesForGpuPods           fulcrum-policy-example 0.1.0 (" in text
    assert "BrokenAtImport" in text and "NOT LOADED" in text


def test_a_plugin_named_like_a_builtin_is_reported_and_the_builtin_wins(python: Path) -> None:
    listed = json.loads(fulcrum(python, "policies", "-o", "json").stdout)["policies"]
    clash = [r for r in listed if r["name"] == "MostAllocated"]
    assert [r["source"] for r in clash] == [
        "built-in",
        "fulcrum-broken-policy 0.0.1 (fulcrum_broken_policy.bad_scores:raises)",
    ]
    assert (
        "clashes with an existing policy of that name, which is used instead"
        in (clash[1]["problem"])
    )
    assert "rename the entry point in fulcrum-broken-policy" in clash[1]["fix"]


def test_serve_starts_when_the_broken_plugin_is_not_named(python: Path, tmp_path: Path) -> None:
    checked = check(python, tmp_path, "prioritize: [{policy: GpuNodesForGpuPods}]\n")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["prioritize"] == [
        {"policy": "GpuNodesForGpuPods", "weight": 1.0}
    ]
    clash = check(python, tmp_path, "prioritize: [{policy: mostallocated}]\n")
    assert clash.returncode == 0, clash.stderr  # the built-in


def test_serve_refuses_a_configuration_naming_a_plugin_that_fails_at_import(
    python: Path, tmp_path: Path
) -> None:
    checked = check(
        python, tmp_path, "prioritize: [{policy: Archimedes}, {policy: BrokenAtImport}]\n"
    )
    assert checked.returncode == 1
    error = checked.stderr.strip()
    assert error.startswith(
        "fulcrum: error: prioritize[1].policy: cannot load plugin policy 'BrokenAtImport' "
        "(fulcrum-broken-policy 0.0.1 (fulcrum_broken_policy.broken_at_import:create)): "
        "RuntimeError: fulcrum_broken_policy.broken_at_import fails at import on purpose; "
        "fix or reinstall fulcrum-broken-policy, or uninstall it "
        "(pip uninstall fulcrum-broken-policy)"
    ), error
