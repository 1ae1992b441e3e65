"""Rebuild hooks: the built-ins, the pod annotation, combining verdicts, entry-point plugins."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import EntryPoint
from typing import Any

import pytest

import kube.hooks as hooks
import policies.plugins
from kube.hooks import (
    ANNOTATION,
    BUILTIN,
    INSTALL_HINT,
    HookNameError,
    LeaderAwareHook,
    ReadyHook,
    RebuildHook,
    UnknownHookError,
    Verdict,
    combine,
    default_hook_registry,
    hooks_for,
    load_plugins,
    named_hooks,
)
from policies.plugins import PluginError
from tests import builders


def pod(*, ready: bool | None = None, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A pod as the API server sends it, with a Ready condition if ``ready`` is not None."""
    out = builders.pod("u", name="web-0", labels=labels or {})
    if ready is not None:
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        out["status"] = {"conditions": [{"type": "PodScheduled", "status": "True"}, condition]}
    return out


# --- the built-ins -----------------------------------------------------------------------------


@pytest.mark.parametrize("hook", [ReadyHook(), LeaderAwareHook()], ids=lambda h: h.name)
def test_the_successor_is_rebuilt_once_ready(hook: RebuildHook) -> None:
    assert hook.post_rebuild(pod(ready=True)) == Verdict(allow=True)
    for waiting in (pod(ready=False), pod(), {}):
        assert hook.post_rebuild(waiting) == Verdict(
            allow=False, retry_after=1.0, reason="waiting for Ready"
        )


def test_ready_never_delays_a_rebuild() -> None:
    assert ReadyHook().pre_rebuild(pod(labels={"fulcrum.io/role": "leader"})).allow


def test_leader_aware_delays_the_leader_only() -> None:
    hook = LeaderAwareHook()
    verdict = hook.pre_rebuild(pod(labels={"fulcrum.io/role": "leader"}))
    assert not verdict.allow
    assert verdict.retry_after == 5.0
    assert "fulcrum.io/role=leader" in verdict.reason
    assert hook.pre_rebuild(pod(labels={"fulcrum.io/role": "follower"})).allow
    assert hook.pre_rebuild(pod()).allow
    assert hook.pre_rebuild({"metadata": {"labels": None}}).allow


def test_the_built_ins_are_registered_under_their_names() -> None:
    registry = default_hook_registry(plugins=False)
    assert registry.names() == ["leader-aware", "ready"]
    for name in registry.names():
        assert registry.get(name).name == name
    with pytest.raises(UnknownHookError, match="unknown rebuild hook 'nope'; available: leader"):
        registry.get("nope")


# --- the annotation ----------------------------------------------------------------------------


@pytest.fixture
def registry() -> hooks.HookRegistry:
    return default_hook_registry(plugins=False)


@pytest.mark.parametrize("annotations", [None, {}, {"other": "x"}, {ANNOTATION: " , "}])
def test_the_default_is_ready(
    annotations: Mapping[str, str] | None, registry: hooks.HookRegistry
) -> None:
    assert [h.name for h in hooks_for(annotations, registry)] == ["ready"]


def test_hooks_are_listed_in_order_case_insensitively_once_each(
    registry: hooks.HookRegistry,
) -> None:
    chosen = hooks_for({ANNOTATION: "Leader-Aware, ready,leader-aware"}, registry)
    assert [h.name for h in chosen] == ["leader-aware", "ready"]
    assert chosen[1] is registry.get("ready")  # the registry's instances, not new ones


def test_an_unknown_hook_names_the_annotation_and_the_alternatives(
    registry: hooks.HookRegistry,
) -> None:
    with pytest.raises(UnknownHookError) as caught:
        hooks_for({ANNOTATION: "ready,nope"}, registry)
    message = str(caught.value)
    assert ANNOTATION in message
    assert "the rebuild controller has no hook 'nope' (it has leader-aware, ready)" in message
    assert message.endswith(INSTALL_HINT)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", ["drain connections", "ready;drain", "-drain", "a" * 64, "é"])
def test_a_name_no_hook_could_have_is_refused_by_everyone(
    value: str, registry: hooks.HookRegistry
) -> None:
    """The webhook and the extender check spelling only (``named_hooks``); the controller too."""
    for read in (named_hooks, lambda a: hooks_for(a, registry)):
        with pytest.raises(HookNameError, match="is not a hook name; give comma-separated"):
            read({ANNOTATION: f"ready,{value}"})


def test_any_well_spelt_name_is_left_to_the_controller() -> None:
    names = named_hooks({ANNOTATION: "ready, drain-connections,Vendor.Hook_2"})
    assert names == ["ready", "drain-connections", "Vendor.Hook_2"]


# --- combining verdicts ------------------------------------------------------------------------


def test_combine_allows_only_if_all_allow() -> None:
    assert combine([]) == Verdict(allow=True)
    assert combine([Verdict(True), Verdict(True, reason="fine")]).allow


def test_combine_keeps_the_earliest_retry_and_every_reason() -> None:
    combined = combine(
        [
            Verdict(False, 5.0, "leader"),
            Verdict(True, None, "ignored"),
            Verdict(False, None, "vetoed"),
            Verdict(False, 1.0, "waiting for Ready"),
        ]
    )
    assert combined == Verdict(False, 1.0, "leader; vetoed; waiting for Ready")


def test_combine_of_vetoes_only_has_no_retry() -> None:
    assert combine([Verdict(False, None, "no"), Verdict(False)]) == Verdict(False, None, "no")


# --- plugins -----------------------------------------------------------------------------------


class DrainHook:
    """A third-party hook: never lets a rebuild start."""

    name = "drain"

    def pre_rebuild(self, pod: Mapping[str, Any]) -> Verdict:
        return Verdict(False, 30.0, "draining")

    def post_rebuild(self, successor: Mapping[str, Any]) -> Verdict:
        return Verdict(True)


PLUGIN = EntryPoint(
    name="drain", value="fulcrum_test_hooks:DrainHook", group=hooks.ENTRY_POINT_GROUP
)


@pytest.fixture
def installed_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend a package providing ``drain`` is installed."""
    module = types.ModuleType("fulcrum_test_hooks")
    module.DrainHook = DrainHook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fulcrum_test_hooks", module)

    def fake_entry_points(*, group: str) -> Iterable[EntryPoint]:
        return [PLUGIN] if group == hooks.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(policies.plugins, "entry_points", fake_entry_points)
    yield


def test_plugins_are_loaded_through_entry_points(installed_plugin: None) -> None:
    registry = default_hook_registry()
    assert registry.names() == ["drain", "leader-aware", "ready"]
    assert "drain" not in default_hook_registry(plugins=False)
    chosen = hooks_for({ANNOTATION: "DRAIN,ready"}, registry)
    assert isinstance(chosen[0], DrainHook)
    assert combine(h.pre_rebuild(pod()) for h in chosen) == Verdict(False, 30.0, "draining")


def test_a_plugin_clashing_with_a_built_in_is_rejected() -> None:
    clash = EntryPoint(name="Ready", value="kube.hooks:ReadyHook", group=hooks.ENTRY_POINT_GROUP)
    with pytest.raises(PluginError, match=r"plugin rebuild hook 'Ready' .* clashes"):
        load_plugins([clash], reserved=BUILTIN)


def test_a_broken_plugin_names_itself() -> None:
    broken = EntryPoint(name="broken", value="no_such_module:Hook", group=hooks.ENTRY_POINT_GROUP)
    with pytest.raises(PluginError, match=r"cannot load plugin rebuild hook 'broken' \(no_such"):
        load_plugins([broken])


def test_a_plugin_whose_factory_fails_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing() -> RebuildHook:
        raise RuntimeError("no config")

    monkeypatch.setattr(hooks, "load_plugins", lambda **_: {"failing": failing})
    with pytest.raises(PluginError, match="cannot create rebuild hook 'failing': no config"):
        default_hook_registry()


def test_a_plugin_no_pod_could_name_stops_the_controller_at_start_up() -> None:
    spaced = EntryPoint(name="my hook", value="kube.hooks:ReadyHook", group=hooks.ENTRY_POINT_GROUP)
    with pytest.raises(PluginError, match=r"'my hook': no pod could name it in fulcrum.io/rebu"):
        load_plugins([spaced])
