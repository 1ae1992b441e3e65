"""The policy registry: built-ins listed explicitly, plugins merged on request.

Plugins are ordinary Python packages declaring an entry point in the group
``fulcrum.policies``; the entry-point name is the policy name and the object
is a factory ``(PolicyContext) -> Policy``::

    [project.entry-points."fulcrum.policies"]
    MyPolicy = "my_package.my_policy:create"

Nothing is registered by importing anything: :func:`default_registry` builds
a fresh registry from the built-in table plus the installed entry points each
time it is called. Names are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from policies import (
    archimedes,
    best_fit,
    dot_product,
    fgd,
    gpu_clustering,
    gpu_packing,
    least_allocated,
    most_allocated,
    random_fit,
    requested_to_capacity_ratio,
)
from scheduler.policy import Policy, PolicyContext, PolicyFactory

ENTRY_POINT_GROUP = "fulcrum.policies"

BUILTIN: Mapping[str, PolicyFactory] = {
    "LeastAllocated": least_allocated.create,
    "MostAllocated": most_allocated.create,
    "RequestedToCapacityRatio": requested_to_capacity_ratio.create,
    "Random": random_fit.create,
    "BestFit": best_fit.create,
    "DotProduct": dot_product.create,
    "GpuPacking": gpu_packing.create,
    "GpuClustering": gpu_clustering.create,
    "FGD": fgd.create,
    "Archimedes": archimedes.create,
}

# The FGD paper's spelling of a peer, accepted as an alias.
ALIASES: Mapping[str, str] = {"dotprod": "DotProduct"}


class UnknownPolicyError(KeyError):
    """No policy of that name; the message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class PluginError(RuntimeError):
    """A ``fulcrum.policies`` entry point could not be loaded or clashes with another."""


class Registry:
    """Names -> policy factories. Implements ``scheduler.policy.PolicyCatalog``."""

    def __init__(self, factories: Mapping[str, PolicyFactory]) -> None:
        self._factories = dict(factories)
        self._by_key = {name.lower(): name for name in self._factories}

    def names(self) -> list[str]:
        return sorted(self._factories, key=str.lower)

    def canonical(self, name: str) -> str:
        key = ALIASES.get(name.lower(), name).lower()
        if key not in self._by_key:
            raise UnknownPolicyError(
                f"unknown policy {name!r}; available: {', '.join(self.names())}"
            )
        return self._by_key[key]

    def factory(self, name: str) -> PolicyFactory:
        return self._factories[self.canonical(name)]

    def create(self, name: str, context: PolicyContext) -> Policy:
        return self.factory(name)(context)


def load_plugins(
    discovered: Iterable[EntryPoint] | None = None,
    *,
    reserved: Iterable[str] = (),
) -> dict[str, PolicyFactory]:
    """Load the factories behind ``fulcrum.policies`` entry points.

    ``discovered`` defaults to the installed entry points of the group. A
    plugin whose name clashes (case-insensitively) with ``reserved`` or with
    another plugin, or that fails to import, raises :class:`PluginError`.
    """
    points = list(entry_points(group=ENTRY_POINT_GROUP) if discovered is None else discovered)
    taken = {name.lower() for name in reserved}
    loaded: dict[str, PolicyFactory] = {}
    for point in points:
        if point.name.lower() in taken:
            raise PluginError(
                f"plugin policy {point.name!r} ({point.value}) clashes with an existing policy"
            )
        try:
            obj = point.load()
        except Exception as exc:
            raise PluginError(
                f"cannot load plugin policy {point.name!r} ({point.value}): {exc}"
            ) from exc
        if not callable(obj):
            raise PluginError(f"plugin policy {point.name!r} ({point.value}) is not callable")
        loaded[point.name] = cast(Callable[[PolicyContext], Policy], obj)
        taken.add(point.name.lower())
    return loaded


def default_registry(*, plugins: bool = True) -> Registry:
    """Built-in policies plus, if ``plugins``, the installed entry-point plugins."""
    factories: dict[str, PolicyFactory] = dict(BUILTIN)
    if plugins:
        factories.update(load_plugins(reserved=[*BUILTIN, *ALIASES]))
    return Registry(factories)


def available(*, plugins: bool = True) -> list[str]:
    """Names of every policy, built-in and plugin."""
    return default_registry(plugins=plugins).names()


def get_policy(name: str, context: PolicyContext | None = None) -> Policy:
    """Create the policy ``name`` (case-insensitive) for ``context``."""
    return default_registry().create(name, context or PolicyContext())
