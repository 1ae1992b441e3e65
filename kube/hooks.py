"""Rebuild hooks: plugins that gate a local rebuild before it starts and decide when it is done.

The controller asks every hook a pod names in its ``fulcrum.io/rebuild-hooks``
annotation (comma-separated, default ``ready``):

- ``pre_rebuild(pod)`` before it starts rebuilding ``pod``: a hook may veto
  (``allow=False``) or delay it (``allow=False, retry_after=seconds``);
- ``post_rebuild(successor)`` to decide whether the successor counts as rebuilt
  (``allow=True``) or must be looked at again later.

Pods are given as JSON mappings (camelCase keys, as the API server sends them). The
verdicts of several hooks are merged with :func:`combine`.

Built-in hooks: ``ready`` (the successor is rebuilt once its Ready condition is True) and
``leader-aware`` (also delays the rebuild of a pod labelled ``fulcrum.io/role=leader``,
so that leadership can move away first).

Hooks are plugins of the same kind as placement policies (:mod:`policies.plugins`). A
third-party package ships one as an entry point in the group ``fulcrum.rebuild_hooks``;
the entry-point name is the hook name, and the object a zero-argument factory returning
the hook (a class will do), called once when the registry is built::

    [project.entry-points."fulcrum.rebuild_hooks"]
    drain-connections = "my_package.hooks:DrainConnections"

Names are case-insensitive, must not clash with the built-ins, and are written as
``HOOK_NAME`` says (letters, digits, ``-``, ``_``, ``.``; at most 63).

Only the controller runs hooks, so only the controller loads them: one authority. The admission
webhook and the extender read the annotation with :func:`named_hooks`, which checks the names'
spelling and nothing else, and take a pod naming any well-spelt hook as the controller would if
it had that hook; the controller refuses a pod naming one it lacks (an Event and
``fulcrum.io/rebuild-status``, with :data:`INSTALL_HINT`) and lets it go without a hold. So a hook
package is installed where the controller runs, and the three processes may run different
images, or be upgraded one at a time, without refusing a pod the controller would take.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Protocol

from kube import objects
from kube.api import quoted
from kube.objects import Raw
from policies.plugins import PluginError, PluginRegistry, load_entry_points

ENTRY_POINT_GROUP = "fulcrum.rebuild_hooks"
ANNOTATION = "fulcrum.io/rebuild-hooks"
DEFAULT_HOOKS = "ready"
ROLE_LABEL = "fulcrum.io/role"
LEADER = "leader"

HOOK_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
INSTALL_HINT = (
    "install the package that provides it where the rebuild controller runs "
    '(docs/rebuild.md, "Shipping a hook"), or fix the name'
)

READY_RETRY_SECONDS = 1.0
LEADER_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Verdict:
    """A hook's answer.

    ``allow=False`` with ``retry_after`` asks to be asked again after that many seconds;
    without it, the answer stands until the pod changes.
    """

    allow: bool
    retry_after: float | None = None
    reason: str = ""


ALLOW = Verdict(allow=True)


class RebuildHook(Protocol):
    """Gates a pod's local rebuild (``pre_rebuild``) and decides when it is done."""

    name: str

    def pre_rebuild(self, pod: Raw) -> Verdict:
        """May the controller start rebuilding ``pod`` now?"""
        ...

    def post_rebuild(self, successor: Raw) -> Verdict:
        """Does ``successor`` count as rebuilt (``allow=True``)?"""
        ...


HookFactory = Callable[[], RebuildHook]
HookRegistry = PluginRegistry[RebuildHook]


class UnknownHookError(ValueError):
    """A pod names a hook that is not registered; the message lists the available ones."""


class HookNameError(ValueError):
    """A pod's ``fulcrum.io/rebuild-hooks`` names a hook no plugin could be called."""


def _ready_verdict(pod: Raw) -> Verdict:
    if objects.ready(pod):
        return ALLOW
    return Verdict(allow=False, retry_after=READY_RETRY_SECONDS, reason="waiting for Ready")


class ReadyHook:
    """The default: rebuild at once; the successor is rebuilt once it is Ready."""

    name = "ready"

    def pre_rebuild(self, pod: Raw) -> Verdict:
        return ALLOW

    def post_rebuild(self, successor: Raw) -> Verdict:
        return _ready_verdict(successor)


class LeaderAwareHook:
    """Delays the rebuild while the pod is labelled ``fulcrum.io/role=leader``.

    The workload is expected to hand leadership over and move the label; done as ``ready``.
    """

    name = "leader-aware"

    def pre_rebuild(self, pod: Raw) -> Verdict:
        if objects.labels(pod).get(ROLE_LABEL) == LEADER:
            return Verdict(
                allow=False,
                retry_after=LEADER_RETRY_SECONDS,
                reason=f"pod is labelled {ROLE_LABEL}={LEADER}",
            )
        return ALLOW

    def post_rebuild(self, successor: Raw) -> Verdict:
        return _ready_verdict(successor)


BUILTIN: Mapping[str, HookFactory] = {
    ReadyHook.name: ReadyHook,
    LeaderAwareHook.name: LeaderAwareHook,
}


def load_plugins(
    discovered: Iterable[EntryPoint] | None = None,
    *,
    reserved: Iterable[str] = (),
) -> dict[str, HookFactory]:
    """Load the factories behind ``fulcrum.rebuild_hooks`` entry points.

    ``discovered`` defaults to the installed entry points of the group. Clashing names
    and plugins that fail to import raise :class:`policies.plugins.PluginError`.
    """
    points = ENTRY_POINT_GROUP if discovered is None else discovered
    loaded = load_entry_points(points, kind="rebuild hook", reserved=reserved)
    for name in loaded:
        if not HOOK_NAME.fullmatch(name):
            raise PluginError(
                f"plugin rebuild hook {name!r}: no pod could name it in {ANNOTATION}; rename "
                "its entry point to letters, digits, '-', '_' and '.' (at most 63)"
            )
    return dict(loaded)


def default_hook_registry(*, plugins: bool = True) -> HookRegistry:
    """One instance of every built-in hook plus, if ``plugins``, of every installed plugin."""
    factories: dict[str, HookFactory] = dict(BUILTIN)
    if plugins:
        factories.update(load_plugins(reserved=BUILTIN))
    hooks: dict[str, RebuildHook] = {}
    for name, factory in factories.items():
        try:
            hooks[name] = factory()
        except Exception as exc:
            raise PluginError(f"cannot create rebuild hook {name!r}: {exc}") from exc
    return PluginRegistry("rebuild hook", hooks, unknown=UnknownHookError)


def named_hooks(annotations: Mapping[str, str] | None) -> list[str]:
    """The hook names a pod gives in its ``fulcrum.io/rebuild-hooks`` annotation, in order.

    A missing or blank annotation means ``ready``. A name spelt as no hook could be
    (``HOOK_NAME``) raises :class:`HookNameError`; whether a hook of that name is installed
    is the controller's question (:func:`hooks_for`).
    """
    value = (annotations or {}).get(ANNOTATION, "")
    names = [part.strip() for part in value.split(",") if part.strip()] or [DEFAULT_HOOKS]
    for name in names:
        if not HOOK_NAME.fullmatch(name):
            raise HookNameError(
                f"annotation {ANNOTATION}={quoted(value)!r}: {quoted(name)!r} is not a hook "
                "name; give comma-separated names of letters, digits, '-', '_' and '.' "
                "(at most 63 each)"
            )
    return names


def hooks_for(annotations: Mapping[str, str] | None, registry: HookRegistry) -> list[RebuildHook]:
    """The hooks a pod asks for (:func:`named_hooks`), in order, from ``registry``.

    Repeated names count once. A badly spelt name raises :class:`HookNameError`; one not in
    ``registry`` :class:`UnknownHookError`, naming it, the hooks there are and the fix.
    """
    hooks: dict[str, RebuildHook] = {}
    for name in named_hooks(annotations):
        if name not in registry:
            raise UnknownHookError(
                f"annotation {ANNOTATION}: the rebuild controller has no hook "
                f"{quoted(name)!r} (it has {', '.join(registry.names())}); {INSTALL_HINT}"
            )
        canonical = registry.canonical(name)
        hooks.setdefault(canonical, registry.get(canonical))
    return list(hooks.values())


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """All must allow. Otherwise: the earliest retry among the refusals, their reasons joined.

    No verdicts at all allow.
    """
    refusals = [v for v in verdicts if not v.allow]
    if not refusals:
        return ALLOW
    retries = [v.retry_after for v in refusals if v.retry_after is not None]
    return Verdict(
        allow=False,
        retry_after=min(retries) if retries else None,
        reason="; ".join(v.reason for v in refusals if v.reason),
    )
