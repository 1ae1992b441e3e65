"""What a policy may see beyond resource sizes: node labels and taints, the pod's labels,
namespace, priority and owner, and how many pods of an owner each node holds.

A policy declares what it reads (``Reads``, its ``reads`` attribute); only what some
configured policy declares is kept, so a policy that reads nothing costs nothing:

- node labels, per declared key, as integer codes aligned with the snapshot's rows
  (``Snapshot.label_column``): ``codes[row]`` indexes ``values``, -1 where the node lacks
  the label;
- taints (``Snapshot.taints``, ``Snapshot.has_taint``);
- the pod's ``PodRequest.attributes`` (``PodAttributes``), and ``Snapshot.owner_counts``:
  per row, the pods of one owner placed there.

Zone and instance type are the well-known labels ``ZONE`` and ``INSTANCE_TYPE``; declare
them like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

ZONE = "topology.kubernetes.io/zone"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
NO_VALUE = -1  # the code of a node without the label


@dataclass(frozen=True, slots=True)
class Reads:
    """What a policy reads beyond resources: node ``labels`` (their keys), ``taints``, and
    ``pod`` (``PodRequest.attributes`` and ``Snapshot.owner_counts``)."""

    labels: frozenset[str] = frozenset()
    taints: bool = False
    pod: bool = False

    def __or__(self, other: Reads) -> Reads:
        return Reads(self.labels | other.labels, self.taints or other.taints, self.pod or other.pod)

    def __bool__(self) -> bool:
        return bool(self.labels) or self.taints or self.pod

    def describe(self) -> str:
        """One line for listings: "labels a,b; taints; pod" or "resources only"."""
        parts = [f"labels {','.join(sorted(self.labels))}"] if self.labels else []
        parts += ["taints"] * self.taints + ["pod"] * self.pod
        return "; ".join(parts) or "resources only"


NOTHING = Reads()


def reads_of(policy: object) -> Reads:
    """The policy's declared ``reads`` (``NOTHING`` if it declares none)."""
    reads = getattr(policy, "reads", NOTHING)
    if not isinstance(reads, Reads):
        name = getattr(policy, "name", type(policy).__name__)
        raise TypeError(
            f"policy {name!r}: reads must be a scheduler.attributes.Reads, got "
            f"{type(reads).__name__}; declare e.g. reads = Reads(labels=frozenset({{ZONE}}))"
        )
    return reads


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True, slots=True)
class PodAttributes:
    """The pod as a policy that declares ``Reads(pod=True)`` sees it. ``labels`` are sorted
    (name, value) pairs; the owner is the pod's controller (a ReplicaSet, StatefulSet, Job...).
    """

    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    owner_kind: str = ""
    owner_name: str = ""
    owner_uid: str = ""

    def label(self, key: str) -> str | None:
        for name, value in self.labels:
            if name == key:
                return value
        return None

    @property
    def owner(self) -> str:
        """A key for the owner (its uid, else kind/namespace/name), "" for a bare pod."""
        if self.owner_uid:
            return self.owner_uid
        return f"{self.owner_kind}/{self.namespace}/{self.owner_name}" if self.owner_name else ""


@dataclass(frozen=True)
class LabelColumn:
    """One label key over the snapshot's rows: ``codes[row]`` indexes ``values``."""

    codes: NDArray[np.int32]
    values: tuple[str, ...]

    def code(self, value: str | None) -> int:
        """The code of ``value``; -2 (matches no row) if no node has it."""
        try:
            return self.values.index(value) if value is not None else -2
        except ValueError:
            return -2

    def equals(self, value: str | None) -> NDArray[np.bool_]:
        """Rows whose label is ``value``."""
        result: NDArray[np.bool_] = self.codes == self.code(value)
        return result


@dataclass
class NodeAttributes:
    """Labels and taints per node and pods per owner per node, beside a ``Snapshot``, which
    keeps it in step (rows follow the snapshot's names)."""

    labels: dict[str, Mapping[str, str]] = field(default_factory=dict)
    taints: dict[str, tuple[Taint, ...]] = field(default_factory=dict)
    owners: dict[str, dict[str, int]] = field(default_factory=dict)  # owner -> node -> pods
    _columns: dict[str, LabelColumn] = field(default_factory=dict)
    _layout: Any = None  # the (snapshot, layout) the columns were built for

    def set_node(
        self, name: str, labels: Mapping[str, str] | None, taints: Sequence[Taint]
    ) -> None:
        if labels:
            self.labels[name] = dict(labels)
        else:
            self.labels.pop(name, None)
        if taints:
            self.taints[name] = tuple(taints)
        else:
            self.taints.pop(name, None)

    def remove_node(self, name: str) -> None:
        self.labels.pop(name, None)
        self.taints.pop(name, None)
        for nodes in self.owners.values():
            nodes.pop(name, None)

    def placed(self, owner: str, node: str, delta: int) -> None:
        nodes = self.owners.setdefault(owner, {})
        count = nodes.get(node, 0) + delta
        if count > 0:
            nodes[node] = count
        else:
            nodes.pop(node, None)
            if not nodes:
                del self.owners[owner]

    def copy(self, *, pods: bool = True) -> NodeAttributes:
        owners = {o: dict(nodes) for o, nodes in self.owners.items()} if pods else {}
        return NodeAttributes(dict(self.labels), dict(self.taints), owners)

    def column(self, key: str, names: Sequence[str], layout: Any) -> LabelColumn:
        if self._layout != layout:
            self._columns.clear()
            self._layout = layout
        column = self._columns.get(key)
        if column is None:
            column = self._columns[key] = _column(key, names, self.labels)
        return column

    def owner_counts(self, owner: str, index: Mapping[str, int], n: int) -> NDArray[np.int64]:
        counts = np.zeros(n, dtype=np.int64)
        for node, count in self.owners.get(owner, {}).items():
            row = index.get(node)
            if row is not None:
                counts[row] = count
        return counts


def _column(key: str, names: Iterable[str], labels: Mapping[str, Mapping[str, str]]) -> LabelColumn:
    values: dict[str, int] = {}
    codes = [
        NO_VALUE if value is None else values.setdefault(value, len(values))
        for value in (labels.get(name, {}).get(key) for name in names)
    ]
    return LabelColumn(np.asarray(codes, dtype=np.int32), tuple(values))
