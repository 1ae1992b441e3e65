"""The policy registry: built-ins listed explicitly, plugins merged on request.

Plugins are ordinary Python packages declaring an entry point in the group
``fulcrum.policies``; the entry-point name is the policy name and the object
is a factory ``(PolicyContext) -> Policy``::

    [project.entry-points."fulcrum.policies"]
    MyPolicy = "my_package.my_policy:create"

Nothing is registered by importing anything: :func:`default_registry` builds
a fresh registry from the built-in table plus the installed entry points each
time it is called. Names are matched case-insensitively. A plugin that fails to
import, or whose name is a built-in's (the built-in wins), is left out and
listed in ``Registry.installed`` with the problem; naming it raises
:class:`UnknownPolicyError` saying why and what to do. The generic part (lookup,
aliases, entry-point loading) is :mod:`policies.plugins`, shared with rebuild hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint

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
from policies.plugins import (
    Installed,
    PluginRegistry,
    UnknownPluginError,
    discover_entry_points,
    load_entry_points,
)
from policies.plugins import PluginError as PluginError
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


class UnknownPolicyError(UnknownPluginError):
    """No policy of that name; the message lists the available ones."""


class Registry(PluginRegistry[PolicyFactory]):
    """Names -> policy factories. Implements ``scheduler.policy.PolicyCatalog``."""

    def __init__(
        self, factories: Mapping[str, PolicyFactory], installed: Iterable[Installed] = ()
    ) -> None:
        super().__init__(
            "policy", factories, aliases=ALIASES, unknown=UnknownPolicyError, installed=installed
        )

    def factory(self, name: str) -> PolicyFactory:
        return self.get(name)

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
    points = ENTRY_POINT_GROUP if discovered is None else discovered
    return dict(load_entry_points(points, kind="policy", reserved=reserved))


def default_registry(*, plugins: bool = True) -> Registry:
    """Built-in policies plus, if ``plugins``, the installed entry-point plugins that load
    (those that do not are in ``installed``, with their problem)."""
    if not plugins:
        return Registry(BUILTIN)
    loaded, installed = discover_entry_points(
        ENTRY_POINT_GROUP, kind="policy", reserved=[*BUILTIN, *ALIASES]
    )
    return Registry({**BUILTIN, **loaded}, installed)


def available(*, plugins: bool = True) -> list[str]:
    """Names of every policy, built-in and plugin."""
    return default_registry(plugins=plugins).names()


def get_policy(name: str, context: PolicyContext | None = None) -> Policy:
    """Create the policy ``name`` (case-insensitive) for ``context``."""
    return default_registry().create(name, context or PolicyContext())
