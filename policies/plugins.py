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
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownPluginError(KeyError):
    """No plugin of that name; the message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class PluginError(RuntimeError):
    """An entry point could not be loaded, or its name clashes with another plugin."""


class PluginRegistry(Generic[T]):
    """Names -> plugins of one ``kind`` ("policy", "rebuild hook"...), case-insensitive.

    ``aliases`` maps extra names (any case) to registered ones. An unknown name raises
    ``unknown(message)``, an :class:`UnknownPluginError` unless the caller picks its own
    exception type.
    """

    def __init__(
        self,
        kind: str,
        plugins: Mapping[str, T],
        *,
        aliases: Mapping[str, str] | None = None,
        unknown: Callable[[str], Exception] = UnknownPluginError,
    ) -> None:
        self.kind = kind
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
    if isinstance(points, str):
        points = entry_points(group=points)
    taken = {name.lower() for name in reserved}
    loaded: dict[str, Callable[..., Any]] = {}
    for point in points:
        label = f"plugin {kind} {point.name!r} ({point.value})"
        if point.name.lower() in taken:
            raise PluginError(f"{label} clashes with an existing {kind}")
        try:
            obj = point.load()
        except Exception as exc:
            raise PluginError(f"cannot load {label}: {exc}") from exc
        if not callable(obj):
            raise PluginError(f"{label} is not callable")
        loaded[point.name] = obj
        taken.add(point.name.lower())
    return loaded
