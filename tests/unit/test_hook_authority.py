"""One authority for rebuild hooks: the controller, which runs them. The webhook and the extender
load none and defer to it, so running them without a hook's package (another image, an upgrade
half done) never refuses a pod the controller takes nor loses its held room; a hook nobody has
is refused by the controller, naming the hook and where to install it."""

from __future__ import annotations

from typing import Any

import pytest

from admission.review import mutate, validate
from extender.cache import ClusterCache
from extender.rebuild_gate import RebuildGate
from kube import api, eligibility
from kube.hooks import ANNOTATION, INSTALL_HINT, ReadyHook, UnknownHookError, default_hook_registry
from policies.plugins import PluginRegistry
from tests import builders

OWNER = {"kind": "StatefulSet", "name": "db", "controller": True}
BUILTINS = default_hook_registry(plugins=False)  # a controller without the package
WITH_PLUGIN = PluginRegistry(  # a controller with it
    "rebuild hook",
    {"ready": ReadyHook(), "drain-connections": ReadyHook()},
    unknown=UnknownHookError,
)


def pod(hooks: str, *, node: str = "") -> dict[str, Any]:
    return builders.pod(
        "u",
        name="db-0",
        annotations={api.REBUILD: "local", ANNOTATION: hooks},
        owners=[OWNER],
        labels={"apps.kubernetes.io/pod-index": "0"},
        node_name=node,
    )


def review(obj: dict[str, Any]) -> dict[str, Any]:
    return {"uid": "r", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": obj}


def extender_holds_room(obj: dict[str, Any]) -> bool:
    cache = ClusterCache()
    gate = RebuildGate(cache)
    cache.apply("nodes", "ADDED", builders.node("n1"))
    cache.apply("pods", "ADDED", obj)
    cache.apply("pods", "DELETED", obj)
    return bool(gate._leaving)


@pytest.mark.parametrize("hooks", ["drain-connections", "ready, Drain-Connections"])
def test_a_hook_only_the_controller_has_is_taken_by_all_three(hooks: str) -> None:
    bound = pod(hooks, node="n1")
    decision = validate(review(bound))
    assert decision.allowed
    [warning] = decision.warnings  # said once, with where the package goes
    assert "is not a built-in rebuild hook" in warning and INSTALL_HINT in warning
    assert api.FINALIZER in str(mutate(review(pod(hooks))).patch)  # guarded at birth
    assert extender_holds_room(bound)
    options = api.read_options(bound["metadata"]["annotations"])
    assert eligibility.refusal(bound, options, WITH_PLUGIN) == ""
    assert eligibility.reserved_on_delete(bound, options, WITH_PLUGIN)


def test_a_hook_nobody_has_is_refused_by_the_controller_naming_it_and_the_fix() -> None:
    bound = pod("drain-connections", node="n1")
    options = api.read_options(bound["metadata"]["annotations"])
    why = eligibility.refusal(bound, options, BUILTINS)
    assert "no hook 'drain-connections'" in why and why.endswith(INSTALL_HINT)
    # what the controller writes on the pod, and the extender then holds nothing for it
    refused = builders.pod(
        "u",
        name="db-0",
        annotations={**bound["metadata"]["annotations"], api.STATUS: '{"action": "refused"}'},
        owners=[OWNER],
        labels={"apps.kubernetes.io/pod-index": "0"},
        node_name="n1",
    )
    assert not extender_holds_room(refused)


def test_built_in_hooks_draw_no_warning() -> None:
    assert validate(review(pod("ready,leader-aware"))).warnings == []


def test_a_misspelt_name_is_refused_at_the_webhook_and_held_by_nobody() -> None:
    bound = pod("ready;drain", node="n1")
    decision = validate(review(bound))
    assert not decision.allowed
    assert "metadata.annotations[fulcrum.io/rebuild-hooks]" in decision.message
    assert "'ready;drain' is not a hook name" in decision.message
    assert api.FINALIZER not in str(mutate(review(pod("ready;drain"))).patch)
    assert not extender_holds_room(bound)
