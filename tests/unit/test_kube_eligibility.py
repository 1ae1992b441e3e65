"""The one eligibility rule (kube.eligibility) that the controller and the extender share."""

from __future__ import annotations

from typing import Any

import pytest

from kube import api
from kube.eligibility import refusal, reserved_on_delete
from kube.hooks import ANNOTATION as HOOKS
from kube.hooks import default_hook_registry
from tests import builders

REGISTRY = default_hook_registry(plugins=False)
OWNER = {"kind": "StatefulSet", "name": "web", "controller": True}


def pod(annotations: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("owners", [OWNER])
    kwargs.setdefault("labels", {"apps.kubernetes.io/pod-index": "0"})
    return builders.pod("u", name="web-0", annotations=annotations, **kwargs)


def verdict(p: dict[str, Any]) -> tuple[str, bool]:
    options = api.read_options(p["metadata"]["annotations"])
    return refusal(p, options, REGISTRY), reserved_on_delete(p, options, REGISTRY)


def test_an_opted_in_statefulset_pod_is_held_for() -> None:
    assert verdict(pod({api.REBUILD: "local"})) == ("", True)


def test_create_first_is_taken_but_nothing_is_held() -> None:
    assert verdict(pod({api.REBUILD: "local", api.ORDER: "create-first"})) == ("", False)


def test_a_pod_without_the_opt_in_is_neither_refused_nor_held() -> None:
    assert verdict(pod({})) == ("", False)


@pytest.mark.parametrize(
    ("annotations", "kwargs", "says"),
    [
        ({api.REBUILD: "lcoal"}, {}, 'rebuild="lcoal" is not allowed; use one of: local'),
        ({api.REBUILD: "local", HOOKS: "nope"}, {}, "the rebuild controller has no hook 'nope'"),
        (
            {api.REBUILD: "local"},
            {"volumes": [{"name": "scratch", "emptyDir": {}}]},
            "volume(s) scratch are emptyDir or ephemeral",
        ),
        (
            {api.REBUILD: "local"},
            {"owners": [{"kind": "Job", "name": "j", "controller": True}]},
            "pods owned by Job cannot be rebuilt locally",
        ),
    ],
)
def test_refused_pods_are_never_held_for(
    annotations: dict[str, str], kwargs: dict[str, Any], says: str
) -> None:
    why, held = verdict(pod(annotations, **kwargs))
    assert says in why
    assert not held


def test_accepting_data_loss_lifts_the_volume_refusal() -> None:
    p = pod(
        {api.REBUILD: "local", api.ACCEPT_DATA_LOSS: "true"},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    assert verdict(p) == ("", True)


@pytest.mark.parametrize("key", [HOOKS, api.REBUILD, api.IP_POOL])
def test_a_huge_bad_value_is_quoted_only_in_part(key: str) -> None:
    """A 200 KB value once made the status write fail (annotations too long): the refusal
    that names it must stay small enough to reach the pod."""
    annotations = {api.REBUILD: "local", key: "x" * 200_000}
    why, _ = verdict(pod(annotations))
    assert "200000 characters" in why
    assert len(why) < 1024
