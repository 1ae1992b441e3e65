"""The registry: explicit built-ins, case-insensitive names, entry-point plugins."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import policies.plugins
import policies.registry as registry
from policies.registry import (
    BUILTIN,
    PluginError,
    UnknownPolicyError,
    available,
    default_registry,
    get_policy,
    load_plugins,
)
from scheduler.policy import Policy, PolicyContext

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "fulcrum-policy-example" / "src"
PLUGIN = EntryPoint(
    name="GpuNodesForGpuPods",
    value="fulcrum_policy_example.gpu_nodes_for_gpu_pods:create",
    group=registry.ENTRY_POINT_GROUP,
)


@pytest.fixture
def installed_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the example plugin package is installed."""
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))

    def fake_entry_points(*, group: str) -> Iterable[EntryPoint]:
        return [PLUGIN] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(policies.plugins, "entry_points", fake_entry_points)


def test_builtins_are_listed_explicitly() -> None:
    names = available(plugins=False)
    assert names == sorted(BUILTIN, key=str.lower)
    assert {"Archimedes", "FGD", "BestFit", "LeastAllocated"} <= set(names)


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        ("fgd", "FGD"),
        ("ARCHIMEDES", "Archimedes"),
        ("bestfit", "BestFit"),
        ("DotProd", "DotProduct"),
    ],
)
def test_names_are_case_insensitive(asked: str, name: str) -> None:
    policy = get_policy(asked)
    assert isinstance(policy, Policy)
    assert policy.name == name


def test_unknown_names_list_the_alternatives() -> None:
    with pytest.raises(UnknownPolicyError, match="unknown policy 'nope'; available: Archimedes"):
        default_registry(plugins=False).create("nope", PolicyContext())


def test_plugins_are_merged_only_when_asked(installed_plugin: None) -> None:
    assert "GpuNodesForGpuPods" in available()
    assert "GpuNodesForGpuPods" not in available(plugins=False)
    policy = get_policy("gpunodesforgpupods")
    assert policy.name == "GpuNodesForGpuPods"
    # Importing the registry module did not register anything by itself.
    assert "GpuNodesForGpuPods" not in BUILTIN


def test_plugin_clashing_with_a_builtin_is_rejected() -> None:
    clash = EntryPoint(name="fgd", value="policies.fgd:create", group=registry.ENTRY_POINT_GROUP)
    with pytest.raises(PluginError, match="clashes"):
        load_plugins([clash], reserved=BUILTIN)


def test_broken_plugin_names_itself() -> None:
    broken = EntryPoint(name="Broken", value="no_such_module:create", group="fulcrum.policies")
    with pytest.raises(PluginError, match=r"cannot load plugin policy 'Broken' \(no_such_module"):
        load_plugins([broken])


def test_a_broken_or_clashing_plugin_is_left_out_and_named_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    points = [
        EntryPoint(name="Broken", value="no_such_module:create", group=registry.ENTRY_POINT_GROUP),
        EntryPoint(
            name="fgd", value="policies.random_fit:create", group=registry.ENTRY_POINT_GROUP
        ),
    ]
    monkeypatch.setattr(policies.plugins, "entry_points", lambda *, group: points)
    found = default_registry()
    assert found.create("FGD", PolicyContext()).name == "FGD"  # the built-in
    assert [(p.name, bool(p.problem)) for p in found.installed] == [("Broken", True), ("fgd", True)]
    with pytest.raises(UnknownPolicyError) as refused:
        found.canonical("broken")
    assert str(refused.value).startswith(
        "cannot load plugin policy 'Broken' (no_such_module:create): ModuleNotFoundError: "
    )
    assert "uninstall it (pip uninstall the package of no_such_module)" in str(refused.value)
