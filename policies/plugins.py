"""A generic plugin registry: a built-in table plus ``importlib.metadata`` entry points.

Placement policies (:mod:`policies.registry`) and rebuild hooks (``kube.hooks``) are
both looked up this way. A registry maps names to plugins, matches names
case-insensitively, accepts aliases and, for an unknown name, raises an error that lists
the available ones. :func:`load_entry_points` loads the objects behind a group's entry
points, refusing names that clash with the built-ins or with each other.

Discovering the entry points (``importlib.metadata.entry_points(group=...)``) is left to
each caller, so that each plugin kind's module owns its group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownPluginError(KeyError):
    """No plugin of that name; the message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class PluginError(RuntimeError):
    """An entry point could not be loaded, or its name clashes with another plugin."""


@dataclass(frozen=True)
class Installed:
    """One installed entry point of a plugin group; ``problem``: why it is not loaded ("": it
    is), and ``fix``: what to do about it."""

    name: str
    entry_point: str  # module:attr
    distribution: str  # "" when unknown (an entry point not from an installed package)
    version: str
    problem: str = ""
    fix: str = ""

    @classmethod
    def of(cls, point: EntryPoint, problem: str = "", fix: str = "") -> Installed:
        dist = point.dist
        name, version = (dist.name, dist.version) if dist else ("", "")
        return cls(point.name, point.value, name, version, problem, fix)

    @property
    def source(self) -> str:
        """``<distribution> <version> (<module:attr>)``, or the ``module:attr`` alone."""
        if not self.distribution:
            return self.entry_point
        return f"{self.distribution} {self.version} ({self.entry_point})"


class PluginRegistry(Generic[T]):
    """Names -> plugins of one ``kind`` ("policy", "rebuild hook"...), case-insensitive.

    ``aliases`` maps extra names (any case) to registered ones. An unknown name raises
    ``unknown(message)``, an :class:`UnknownPluginError` unless the caller picks its own
    exception type; ``installed`` lists the plugins found installed, and the message for the
    name of one that could not be loaded says why and what to do.
    """

    def __init__(
        self,
        kind: str,
        plugins: Mapping[str, T],
        *,
        aliases: Mapping[str, str] | None = None,
        unknown: Callable[[str], Exception] = UnknownPluginError,
        installed: Iterable[Installed] = (),
    ) -> None:
        self.kind = kind
        self.installed = tuple(installed)
        self._plugins = dict(plugins)
        self._by_key = {name.lower(): name for name in self._plugins}
        self._aliases = {alias.lower(): name for alias, name in (aliases or {}).items()}
        self._unknown = unknown

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted case-insensitively."""
        return sorted(self._plugins, key=str.lower)

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` or of the name it is an alias of."""
        key = self._aliases.get(name.lower(), name).lower()
        if key not in self._by_key:
            for plugin in self.installed:
                if plugin.problem and plugin.name.lower() == key:
                    raise self._unknown(f"{plugin.problem}; {plugin.fix}")
            raise self._unknown(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        return self._by_key[key]

    def get(self, name: str) -> T:
        """The plugin registered as ``name`` (case-insensitive)."""
        return self._plugins[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self._aliases.get(name.lower(), name).lower() in self._by_key


def discover_entry_points(
    points: Iterable[EntryPoint] | str,
    *,
    kind: str,
    reserved: Iterable[str] = (),
) -> tuple[dict[str, Callable[..., Any]], list[Installed]]:
    """Load what can be loaded behind ``points`` (or the installed entry points of the group
    named ``points``); never raises for a bad plugin.

    Returns the loaded callables by entry-point name and every point found, each with its
    ``problem``: a name that clashes (case-insensitively) with ``reserved`` or with an earlier
    point (the earlier one wins), an object that fails to import or is not callable.
    """
    if isinstance(points, str):
        points = entry_points(group=points)
    taken = {name.lower() for name in reserved}
    loaded: dict[str, Callable[..., Any]] = {}
    found: list[Installed] = []
    for point in points:
        plugin = Installed.of(point)
        label = f"plugin {kind} {point.name!r} ({plugin.source})"
        package = plugin.distribution or f"the package of {point.module}"
        problem, fix = "", f"fix or reinstall {package}, or uninstall it (pip uninstall {package})"
        if point.name.lower() in taken:
            problem = f"{label} clashes with an existing {kind} of that name, which is used instead"
            fix = f"rename the entry point in {package} ([project.entry-points.{point.group!r}])"
        else:
            try:
                obj = point.load()
            except Exception as exc:
                problem = f"cannot load {label}: {type(exc).__name__}: {exc}"
            else:
                if callable(obj):
                    loaded[point.name] = obj
                    taken.add(point.name.lower())
                else:
                    problem = f"{label} is not callable"
        found.append(replace(plugin, problem=problem, fix=fix) if problem else plugin)
    return loaded, found


def load_entry_points(
    points: Iterable[EntryPoint] | str,
    *,
    kind: str,
    reserved: Iterable[str] = (),
) -> dict[str, Callable[..., Any]]:
    """Load the callables behind ``points`` (or the installed entry points of the group named
    ``points``), keyed by entry-point name.

    A name that clashes (case-insensitively) with ``reserved`` or with an earlier point,
    an object that fails to import, or one that is not callable raises :class:`PluginError`
    naming the plugin and its ``module:attr``.
    """
    loaded, found = discover_entry_points(points, kind=kind, reserved=reserved)
    for plugin in found:
        if plugin.problem:
            raise PluginError(plugin.problem)
    return loaded
