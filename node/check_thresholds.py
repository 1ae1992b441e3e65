"""The thresholds of the node checks (``node/checks.py``): the defaults shipped in
``node/checks.yaml``, overridden by a file of the user's.

A threshold file maps a check's name to its levels, ``{warn: W, alarm: A, error: E}`` (null or
left out: that level is off). Whether a value is bad above or below its levels is the check's
own (:data:`SPECS`): disk used is bad above, memory available below. A value beyond a level
takes that level's severity (the most severe one it passes), otherwise it is Info. Comparisons
are strict, as the kubelet's eviction thresholds are (``memory.available<100Mi``): a value
exactly at a level has not crossed it.

A user's file replaces the levels of each check it names, wholly: ``disk.kubelet: {error: 0}``
makes any use of the kubelet's disk an Error and nothing a Warn, which is how a test puts a
healthy node in trouble. Every mistake in a file is a :class:`ThresholdError` naming the file,
the key and the fix; the agent refuses to start the plugin with it rather than check against
levels nobody meant.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml

from node.plugin import Severity

Direction = Literal["above", "below"]
Bound = float | str  # a number, or a kernel version ("5.8")
LEVELS: dict[str, Severity] = {
    "warn": Severity.WARN,
    "alarm": Severity.ALARM,
    "error": Severity.ERROR,
}


class ThresholdError(ValueError):
    """A threshold file that cannot be used: the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Spec:
    """How a check's value is judged: bad ``above`` or ``below`` its levels, in ``unit``."""

    direction: Direction
    unit: str
    version: bool = False  # levels are kernel versions, compared part by part


SPECS: dict[str, Spec] = {
    "disk.kubelet": Spec("above", "% used"),
    "disk.runtime": Spec("above", "% used"),
    "disk.root": Spec("above", "% used"),
    "inodes.kubelet": Spec("above", "% used"),
    "inodes.runtime": Spec("above", "% used"),
    "inodes.root": Spec("above", "% used"),
    "load.per_cpu": Spec("above", "per CPU"),
    "memory.available": Spec("below", "MiB"),
    "memory.available_pct": Spec("below", "%"),
    "pids.pct": Spec("above", "% used"),
    "filehandles.pct": Spec("above", "% used"),
    "conntrack.pct": Spec("above", "% used"),
    "clock.offset": Spec("above", "s"),
    "kernel.version": Spec("below", "", version=True),
}
# checks whose severity is fixed by what they find (answers or not), with no levels to set
FIXED = ("kubelet.process", "kubelet.health", "kubelet.version", "runtime.version")


def version_tuple(text: str) -> tuple[int, ...]:
    """``"5.15.0-91-generic"`` -> (5, 15, 0): the leading dotted numbers; ValueError if none."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a version (expected e.g. 5.8 or 6.1.0-18-amd64)")
    return tuple(int(part) for part in match.group(1).split("."))


@dataclass(frozen=True)
class Levels:
    """One check's levels: severity -> bound, in the check's direction."""

    check: str
    spec: Spec
    bounds: Mapping[Severity, Bound]

    def crossed(self, value: float | str, bound: Bound) -> bool:
        if self.spec.version:
            here, there = version_tuple(str(value)), version_tuple(str(bound))
            return here < there if self.spec.direction == "below" else here > there
        number, limit = float(value), float(bound)
        return number < limit if self.spec.direction == "below" else number > limit

    def judge(self, value: float | str) -> tuple[Severity, Bound | None]:
        """The most severe level ``value`` is beyond and that level's bound; or Info and the
        mildest level set (how far trouble is), None when the check has no level."""
        for severity in (Severity.ERROR, Severity.ALARM, Severity.WARN):
            bound = self.bounds.get(severity)
            if bound is not None and self.crossed(value, bound):
                return severity, bound
        mildest = next(
            (
                self.bounds[s]
                for s in (Severity.WARN, Severity.ALARM, Severity.ERROR)
                if s in self.bounds
            ),
            None,
        )
        return Severity.INFO, mildest


def _levels(source: str, check: str, raw: Any, specs: Mapping[str, Spec] | None = None) -> Levels:
    """One entry of a threshold file, checked."""
    spec = (SPECS if specs is None else specs)[check]
    if raw is None:
        return Levels(check, spec, {})
    if not isinstance(raw, Mapping):
        raise ThresholdError(
            f"{source}: {check}: expected levels like {{warn: 80, alarm: 85, error: 90}} "
            f"(or null to turn them off), got {raw!r}"
        )
    bounds: dict[Severity, Bound] = {}
    for key, bound in raw.items():
        if key not in LEVELS:
            raise ThresholdError(
                f"{source}: {check}.{key}: unknown level; use warn, alarm or error"
            )
        if bound is None:
            continue
        if spec.version:
            if not isinstance(bound, str):  # YAML reads 5.10 as the number 5.1
                raise ThresholdError(
                    f"{source}: {check}.{key}: {bound!r} is not a quoted kernel version; "
                    f'write it as a string, e.g. {check}: {{{key}: "5.10"}}'
                )
            try:
                version_tuple(bound)
            except ValueError as exc:
                raise ThresholdError(f"{source}: {check}.{key}: {exc}") from None
            bounds[LEVELS[key]] = str(bound)
        else:
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise ThresholdError(
                    f"{source}: {check}.{key}: {bound!r} is not a number; give one in "
                    f"{spec.unit.strip() or 'the check unit'}, e.g. {check}: {{{key}: 90}}"
                )
            bounds[LEVELS[key]] = float(bound)
    _check_order(source, Levels(check, spec, bounds))
    return Levels(check, spec, bounds)


def _check_order(source: str, levels: Levels) -> None:
    """Warn before Alarm before Error, in the check's direction: a value that is an Error must
    have passed the Warn level on its way."""
    order = [
        (s, b)
        for s in (Severity.WARN, Severity.ALARM, Severity.ERROR)
        if (b := levels.bounds.get(s)) is not None
    ]
    for (milder, low), (worse, high) in itertools.pairwise(order):
        if levels.crossed(low, high):  # the milder bound is already past the worse one
            way = "rise" if levels.spec.direction == "above" else "fall"
            raise ThresholdError(
                f"{source}: {levels.check}: {milder.name.lower()} {low} is beyond "
                f"{worse.name.lower()} {high}; values {way} through warn, then alarm, then "
                f"error: order the levels so"
            )


def parse(
    text: str,
    source: str,
    specs: Mapping[str, Spec] | None = None,
    fixed: tuple[str, ...] | None = None,
) -> dict[str, Levels]:
    """A threshold file's text -> the levels of the checks it names. ``specs`` and ``fixed``
    are the node checks' unless given: ``fulcrum inspect``'s cluster checks
    (``fulcrum.inspect.thresholds``) read their own file with the same rules."""
    specs = SPECS if specs is None else specs
    fixed = FIXED if fixed is None else fixed
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ThresholdError(f"{source}: not YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        raise ThresholdError(
            f"{source}: expected a mapping of check names to levels, "
            f"e.g. 'disk.kubelet: {{warn: 80, alarm: 85, error: 90}}'"
        )
    found = {}
    for check, raw in document.items():
        if check in fixed:
            raise ThresholdError(
                f"{source}: {check}: this check has no levels (its severity is what it finds); "
                "remove the key"
            )
        if check not in specs:
            raise ThresholdError(
                f"{source}: {check}: unknown check; the checks with levels are {', '.join(specs)}"
            )
        found[str(check)] = _levels(source, str(check), raw, specs)
    return found


class Thresholds:
    """Every check's levels: the shipped defaults, with a user's file over them.

    A subclass with other checks (``fulcrum.inspect.thresholds.ClusterThresholds``) names its
    own ``SPECS``, ``FIXED``, defaults file and the flag that takes a user's file."""

    SPECS: ClassVar[Mapping[str, Spec]] = SPECS
    FIXED: ClassVar[tuple[str, ...]] = FIXED
    DEFAULTS: ClassVar[tuple[str, str]] = ("node", "checks.yaml")  # package, resource
    USER_FILE: ClassVar[str] = "the plugin option node-checks.thresholds names a readable YAML file"

    def __init__(self, levels: Mapping[str, Levels]) -> None:
        missing = [c for c in self.SPECS if c not in levels]
        if missing:
            raise ThresholdError(f"no levels for {', '.join(missing)}")
        self.levels = dict(levels)

    @classmethod
    def load(cls, path: Path | str | None = None) -> Self:
        """The defaults, and ``path``'s levels over them when given."""
        package, name = cls.DEFAULTS
        defaults = resources.files(package).joinpath(name).read_text(encoding="utf-8")
        source = f"{package.replace('.', '/')}/{name}"
        levels = parse(defaults, source, cls.SPECS, cls.FIXED)
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ThresholdError(
                    f"{path}: cannot read it ({exc.strerror or exc}); {cls.USER_FILE}"
                ) from None
            levels.update(parse(text, str(path), cls.SPECS, cls.FIXED))
        return cls(levels)

    def judge(self, check: str, value: float | str) -> tuple[Severity, Bound | None]:
        return self.levels[check].judge(value)

    def unit(self, check: str) -> str:
        return self.SPECS[check].unit
