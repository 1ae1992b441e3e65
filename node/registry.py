"""Which node plugins exist: the built-ins and those installed under ``fulcrum.node_plugins``.

A package adds a plugin with an entry point naming its :class:`~node.plugin.NodePlugin` class::

    [project.entry-points."fulcrum.node_plugins"]
    annotation-env = "fulcrum_node_example:AnnotationEnv"

``fulcrum node --plugins gpu,annotation-env`` runs it; ``fulcrum node --list-plugins`` lists
every plugin with its hooks and where it comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TypedDict

from node.checks import NodeChecks
from node.gpu import GpuDevices
from node.ipam_check import IpamAgreement
from node.plugin import NodePlugin, hooks_of
from node.prepull import PrePull
from policies.plugins import PluginError, PluginRegistry, UnknownPluginError

ENTRY_POINT_GROUP = "fulcrum.node_plugins"
BUILTINS: dict[str, type[NodePlugin]] = {
    GpuDevices.name: GpuDevices,
    IpamAgreement.name: IpamAgreement,
    NodeChecks.name: NodeChecks,
    PrePull.name: PrePull,
}
DEFAULT_PLUGINS = (GpuDevices.name, IpamAgreement.name, NodeChecks.name, PrePull.name)


class PluginRow(TypedDict):
    name: str
    hooks: list[str]
    order: int
    timeout: float
    failure_policy: str
    source: str
    description: str


@dataclass(frozen=True)
class Available:
    name: str
    cls: type[NodePlugin]
    source: str  # "built-in" or "<distribution> <version> (<module:attr>)"


def available(points: Iterable[EntryPoint] | None = None) -> dict[str, Available]:
    """Every node plugin by name; an installed one that fails to load or clashes raises
    :class:`PluginError` naming it."""
    found = {name: Available(name, cls, "built-in") for name, cls in BUILTINS.items()}
    taken = {name.lower() for name in found}
    for point in entry_points(group=ENTRY_POINT_GROUP) if points is None else points:
        label = f"node plugin {point.name!r} ({point.value})"
        if point.name.lower() in taken:
            raise PluginError(f"{label} clashes with an existing node plugin")
        try:
            cls = point.load()
        except Exception as exc:
            raise PluginError(f"cannot load {label}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, NodePlugin)):
            raise PluginError(f"{label} is not a subclass of node.plugin.NodePlugin")
        if cls.name.lower() != point.name.lower():
            raise PluginError(f"{label}: its class's name is {cls.name!r}; make them equal")
        dist = point.dist
        source = f"{dist.name} {dist.version} ({point.value})" if dist else point.value
        found[point.name] = Available(point.name, cls, source)
        taken.add(point.name.lower())
    return found


def create(names: Sequence[str], points: Iterable[EntryPoint] | None = None) -> list[NodePlugin]:
    """One instance of each named plugin; an unknown name raises :class:`UnknownPluginError`
    listing the available ones."""
    table = available(points)
    registry = PluginRegistry("node plugin", {name: a.cls for name, a in table.items()})
    seen: set[str] = set()
    plugins = []
    for name in names:
        canonical = registry.canonical(name)
        if canonical in seen:
            continue
        seen.add(canonical)
        plugins.append(registry.get(canonical)())
    return plugins


def describe(points: Iterable[EntryPoint] | None = None) -> list[PluginRow]:
    """``fulcrum node --list-plugins``: name, hooks, order, timeout, failure policy, source."""
    rows: list[PluginRow] = []
    for name, a in sorted(available(points).items(), key=lambda item: item[0].lower()):
        rows.append(
            {
                "name": name,
                "hooks": hooks_of(a.cls),
                "order": a.cls.order,
                "timeout": a.cls.timeout,
                "failure_policy": a.cls.failure_policy,
                "source": a.source,
                "description": a.cls.description,
            }
        )
    return rows


__all__ = ["DEFAULT_PLUGINS", "PluginError", "UnknownPluginError", "available", "create"]
