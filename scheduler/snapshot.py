"""A cluster snapshot as numpy arrays, cheap to keep up to date.

Rows are nodes. Scalar resources are columns of ``allocatable`` and ``free``
(``cpu`` in millicores, ``memory`` and ``ephemeral-storage`` in **bytes**,
``pods`` as a count, then extended resources in the order first seen). GPUs
are devices: ``gpu_free[n, j]`` is the free milli (0..1000) of device ``j`` of
node ``n``; devices a node does not have read 0. Each node has at most one GPU
model, stored as a code into ``model_names`` (``-1`` = no GPU).

Adding, updating or removing a node and assigning or releasing a pod cost
O(resources + devices); fit is vectorised over all nodes and reports, for
nodes that do not fit, every reason as a bit set (``FitResult``). Policies
read the arrays and must not write them; the read-only accessors below return
views for speed, so writing into them is a bug the conformance suite catches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from scheduler.attributes import LabelColumn, NodeAttributes, Taint
from scheduler.pod import BASE_RESOURCES, GPU_MILLI, PodRequest

CPU_COL, MEMORY_COL, EPHEMERAL_COL, PODS_COL = 0, 1, 2, 3
DEFAULT_MAX_PODS = 110
# A node reporting GPUs without a model label: its devices count as one model of their own,
# usable by every pod that names no model (a GPU model constraint never matches it).
UNKNOWN_GPU_MODEL = "unknown"

# Reason bits of FitResult.reason_bits. Extended resource c sets bit
# FIRST_EXTENDED_BIT + (c - len(BASE_RESOURCES)).
REASON_CPU = 1 << 0
REASON_MEMORY = 1 << 1
REASON_EPHEMERAL = 1 << 2
REASON_PODS = 1 << 3
REASON_GPU_MODEL = 1 << 4
REASON_GPU = 1 << 5
FIRST_EXTENDED_BIT = 6
_REASON_TEXT = {
    REASON_CPU: "Insufficient cpu",
    REASON_MEMORY: "Insufficient memory",
    REASON_EPHEMERAL: "Insufficient ephemeral-storage",
    REASON_PODS: "Too many pods",
    REASON_GPU_MODEL: "GPU model not acceptable",
    REASON_GPU: "Insufficient GPU",
}

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class FitResult:
    """Per-node fit of one pod: ``feasible[n]`` and, when not, why."""

    feasible: BoolArray
    reason_bits: NDArray[np.int64]
    resource_names: tuple[str, ...]

    def reason(self, index: int) -> str:
        """Human-readable reasons node ``index`` does not fit ("" if it fits)."""
        bits = int(self.reason_bits[index])
        texts = [text for bit, text in _REASON_TEXT.items() if bits & bit]
        extended = self.resource_names[len(BASE_RESOURCES) :]
        for offset, name in enumerate(extended):
            if bits & (1 << (FIRST_EXTENDED_BIT + offset)):
                texts.append(f"Insufficient {name}")
        return ", ".join(texts)

    def reasons(self, names: Iterable[str]) -> dict[str, str]:
        """Map of node name -> reason for every node that does not fit."""
        return {name: self.reason(i) for i, name in enumerate(names) if not self.feasible[i]}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a pod sits: node name and the device indices it uses."""

    node: str
    pod: PodRequest
    devices: tuple[int, ...]


class Snapshot:
    """Nodes x resources, GPUs as devices, and the pods placed on them."""

    def __init__(self, *, max_gpus_per_node: int = 8, capacity: int = 64) -> None:
        self._n = 0
        self._cap = max(capacity, 1)
        self._resource_names: list[str] = list(BASE_RESOURCES)
        self._resource_index = {name: i for i, name in enumerate(self._resource_names)}
        r = len(self._resource_names)
        d = max_gpus_per_node
        self._allocatable = np.zeros((self._cap, r), dtype=np.int64)
        self._free = np.zeros((self._cap, r), dtype=np.int64)
        self._gpu_free = np.zeros((self._cap, d), dtype=np.int64)
        self._gpu_count = np.zeros(self._cap, dtype=np.int64)
        self._gpu_model = np.full(self._cap, -1, dtype=np.int64)
        # Column 0: GPU-sharing pods; column k: pods holding k whole GPUs.
        self._gpu_pod_kinds = np.zeros((self._cap, d + 1), dtype=np.int64)
        self._node_version = np.zeros(self._cap, dtype=np.int64)
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._model_names: list[str] = []
        self._model_index: dict[str, int] = {}
        self._pods: dict[str, Placement] = {}
        self._pods_by_node: dict[str, set[str]] = {}
        self._version = 0
        self._layout = 0
        self._supply: tuple[int, dict[str, int]] | None = None
        self._attributes = NodeAttributes()

    # ------------------------------------------------------------------ reads
    @property
    def num_nodes(self) -> int:
        return self._n

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def resource_names(self) -> tuple[str, ...]:
        return tuple(self._resource_names)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._model_names)

    @property
    def allocatable(self) -> IntArray:
        return self._allocatable[: self._n]

    @property
    def free(self) -> IntArray:
        return self._free[: self._n]

    @property
    def gpu_free(self) -> IntArray:
        """Free milli per device, shape (nodes, max devices); absent devices read 0."""
        return self._gpu_free[: self._n]

    @property
    def gpu_count(self) -> IntArray:
        return self._gpu_count[: self._n]

    @property
    def gpu_model(self) -> IntArray:
        """GPU model code per node (index into ``model_names``), -1 for none."""
        return self._gpu_model[: self._n]

    @property
    def gpu_pod_kinds(self) -> IntArray:
        """Per node: column 0 counts GPU-sharing pods, column k pods with k whole GPUs."""
        return self._gpu_pod_kinds[: self._n]

    @property
    def node_version(self) -> IntArray:
        """Bumped whenever a node's row changes; lets callers reuse per-node results."""
        return self._node_version[: self._n]

    @property
    def layout(self) -> int:
        """Bumped whenever rows are added, removed or reordered."""
        return self._layout

    @property
    def version(self) -> int:
        return self._version

    @property
    def max_gpus_per_node(self) -> int:
        return int(self._gpu_free.shape[1])

    def index_of(self, name: str) -> int:
        return self._index[name]

    def model_code(self, model: str) -> int:
        """Code of a GPU model, -1 if no node has it."""
        return self._model_index.get(model, -1)

    def gpu_supply_by_model(self) -> dict[str, int]:
        """GPU devices per model over the whole cluster (a subset from :meth:`take`
        reports its parent's), cached until nodes are added, removed or updated."""
        if self._supply is None or self._supply[0] != self._layout:
            counts = np.bincount(
                self.gpu_model[self.gpu_model >= 0],
                weights=self.gpu_count[self.gpu_model >= 0],
                minlength=len(self._model_names),
            )
            supply = {m: int(counts[i]) for i, m in enumerate(self._model_names)}
            self._supply = (self._layout, supply)
        return dict(self._supply[1])

    def pods(self) -> Mapping[str, Placement]:
        return self._pods

    def pods_on(self, node: str) -> frozenset[str]:
        return frozenset(self._pods_by_node.get(node, ()))

    # ------------------------------------------------- attributes (scheduler.attributes)
    def label_column(self, key: str) -> LabelColumn:
        """Label ``key`` over the rows as integer codes (-1: the node lacks it); only keys some
        policy declared in its ``reads`` are kept, others read as absent everywhere."""
        return self._attributes.column(key, self._names, self._layout)

    def taints(self, row: int) -> tuple[Taint, ...]:
        """Node ``row``'s taints (empty unless some policy declared ``Reads(taints=True)``)."""
        return self._attributes.taints.get(self._names[row], ())

    def has_taint(
        self, key: str, effects: Iterable[str] = ("NoSchedule", "NoExecute")
    ) -> BoolArray:
        """Rows with a taint ``key`` of one of ``effects``."""
        wanted = set(effects)
        marks = self._attributes.taints
        return np.fromiter(
            (
                any(t.key == key and t.effect in wanted for t in marks.get(n, ()))
                for n in self._names
            ),
            dtype=np.bool_,
            count=self._n,
        )

    def owner_counts(self, owner: str) -> IntArray:
        """Per row, the placed pods whose ``attributes.owner`` is ``owner``."""
        return self._attributes.owner_counts(owner, self._index, self._n)

    # -------------------------------------------------------------- node CRUD
    def add_node(
        self,
        name: str,
        *,
        cpu_milli: int,
        memory: int,
        ephemeral_storage: int = 0,
        max_pods: int = DEFAULT_MAX_PODS,
        gpu_count: int = 0,
        gpu_model: str | None = None,
        extended: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Taint] = (),
    ) -> int:
        """Add a node with its *allocatable* resources (after system reservation).

        ``memory`` and ``ephemeral_storage`` are bytes; ``labels`` and ``taints`` are what
        policies declared they read (``scheduler.attributes``). Returns the row index.
        """
        if name in self._index:
            raise ValueError(f"node {name!r} already exists")
        if self._n == self._cap:
            self._grow_rows(self._cap * 2)
        row = self._n
        self._n += 1
        self._names.append(name)
        self._index[name] = row
        self._pods_by_node[name] = set()
        self._layout += 1
        self._attributes.set_node(name, labels, taints)
        self._write_node(
            row, cpu_milli, memory, ephemeral_storage, max_pods, gpu_count, gpu_model, extended
        )
        self._free[row] = self._allocatable[row]
        self._gpu_free[row, :gpu_count] = GPU_MILLI
        return row

    def update_node(
        self,
        name: str,
        *,
        cpu_milli: int,
        memory: int,
        ephemeral_storage: int = 0,
        max_pods: int = DEFAULT_MAX_PODS,
        gpu_count: int = 0,
        gpu_model: str | None = None,
        extended: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Taint] = (),
    ) -> None:
        """Change a node's allocatable resources, keeping the pods on it.

        Free resources may go negative if the node shrinks below its usage;
        such a node simply fits nothing until pods leave.
        """
        row = self._index[name]
        self._layout += 1
        self._attributes.set_node(name, labels, taints)
        used = self._allocatable[row] - self._free[row]
        old_gpu_count = int(self._gpu_count[row])
        gpu_used = GPU_MILLI - self._gpu_free[row, :old_gpu_count]
        self._write_node(
            row, cpu_milli, memory, ephemeral_storage, max_pods, gpu_count, gpu_model, extended
        )
        self._free[row] = self._allocatable[row] - used
        self._gpu_free[row] = 0
        keep = min(old_gpu_count, gpu_count)
        self._gpu_free[row, :gpu_count] = GPU_MILLI
        self._gpu_free[row, :keep] -= gpu_used[:keep]

    def remove_node(self, name: str) -> list[str]:
        """Remove a node; returns the keys of the pods that were on it (now forgotten)."""
        row = self._index.pop(name)
        dropped = sorted(self._pods_by_node.pop(name, set()))
        for key in dropped:
            del self._pods[key]
        self._attributes.remove_node(name)
        last = self._n - 1
        if row != last:
            for array in self._row_arrays():
                array[row] = array[last]
            moved = self._names[last]
            self._names[row] = moved
            self._index[moved] = row
        self._names.pop()
        for array in self._row_arrays():
            array[last] = 0
        self._gpu_model[last] = -1
        self._n -= 1
        self._layout += 1
        self._version += 1
        return dropped

    # --------------------------------------------------------------- pod CRUD
    def fit(self, pod: PodRequest) -> FitResult:
        """Vectorised NodeResourcesFit (+ GPU devices) over all nodes."""
        free = self.free
        bits = np.zeros(self._n, dtype=np.int64)
        bits |= np.where(free[:, CPU_COL] < pod.cpu_milli, REASON_CPU, 0)
        bits |= np.where(free[:, MEMORY_COL] < pod.memory, REASON_MEMORY, 0)
        bits |= np.where(free[:, EPHEMERAL_COL] < pod.ephemeral_storage, REASON_EPHEMERAL, 0)
        bits |= np.where(free[:, PODS_COL] < 1, REASON_PODS, 0)
        for name, quantity in pod.extended:
            col = self._resource_index.get(name)
            offset = (col if col is not None else len(self._resource_names)) - len(BASE_RESOURCES)
            bit = 1 << (FIRST_EXTENDED_BIT + offset)
            if col is None:
                bits |= bit if quantity > 0 else 0
            else:
                bits |= np.where(free[:, col] < quantity, bit, 0)
        if pod.gpu_count > 0:
            bits |= np.where(self._model_ok(pod), 0, REASON_GPU_MODEL)
            enough = (self.gpu_free >= pod.gpu_milli).sum(axis=1) >= pod.gpu_count
            bits |= np.where(enough, 0, REASON_GPU)
        return FitResult(bits == 0, bits, self.resource_names)

    def feasible(self, pod: PodRequest) -> BoolArray:
        """Just the boolean mask of :meth:`fit` (the hot path of the simulator)."""
        free = self.free
        ok = (
            (free[:, CPU_COL] >= pod.cpu_milli)
            & (free[:, MEMORY_COL] >= pod.memory)
            & (free[:, EPHEMERAL_COL] >= pod.ephemeral_storage)
            & (free[:, PODS_COL] >= 1)
        )
        for name, quantity in pod.extended:
            col = self._resource_index.get(name)
            if col is None:
                if quantity > 0:
                    ok[:] = False
            else:
                ok &= free[:, col] >= quantity
        if pod.gpu_count > 0:
            ok &= self._model_ok(pod)
            ok &= (self.gpu_free >= pod.gpu_milli).sum(axis=1) >= pod.gpu_count
        return ok

    def _model_ok(self, pod: PodRequest) -> BoolArray:
        if not pod.gpu_models:
            return np.ones(self._n, dtype=np.bool_)
        codes = [self._model_index[m] for m in pod.gpu_models if m in self._model_index]
        return np.isin(self.gpu_model, codes)

    def best_fit_devices(self, row: int, pod: PodRequest) -> tuple[int, ...]:
        """Devices for ``pod`` on node ``row`` by the FGD artifact's default rule.

        Whole GPUs: the lowest-index fully free devices. Sharing: the device
        with the least free milli that still fits, lowest index on ties.
        """
        if pod.gpu_count == 0:
            return ()
        g = self._gpu_free[row, : self._gpu_count[row]]
        if pod.is_gpu_sharing:
            candidates = np.flatnonzero(g >= pod.gpu_milli)
            if candidates.size == 0:
                raise ValueError(f"no device on {self._names[row]!r} fits {pod.gpu_milli} milli")
            return (int(candidates[np.argmin(g[candidates])]),)
        full = np.flatnonzero(g >= pod.gpu_milli)
        if full.size < pod.gpu_count:
            raise ValueError(f"node {self._names[row]!r} lacks {pod.gpu_count} free GPUs")
        return tuple(int(j) for j in full[: pod.gpu_count])

    def assign(
        self,
        key: str,
        pod: PodRequest,
        node: str,
        *,
        devices: tuple[int, ...] | None = None,
        check: bool = True,
    ) -> Placement:
        """Place ``pod`` (identified by ``key``) on ``node``.

        ``devices`` defaults to :meth:`best_fit_devices`. With ``check`` the
        scalar resources must fit; pass ``check=False`` to mirror a binding
        that already happened even if it over-commits the node.
        """
        if key in self._pods:
            raise ValueError(f"pod {key!r} is already assigned to {self._pods[key].node!r}")
        row = self._index[node]
        if check and not self._row_fits(row, pod):
            raise ValueError(f"pod {key!r} does not fit on node {node!r}")
        if devices is None:
            devices = self.best_fit_devices(row, pod)
        if len(devices) != pod.gpu_count or len(set(devices)) != len(devices):
            raise ValueError(f"pod {key!r} needs {pod.gpu_count} distinct devices, got {devices}")
        for j in devices:
            if not 0 <= j < self._gpu_count[row]:
                raise ValueError(f"node {node!r} has no GPU device {j}")
            if check and self._gpu_free[row, j] < pod.gpu_milli:
                raise ValueError(f"device {j} of node {node!r} lacks {pod.gpu_milli} milli")
        self._apply(row, pod, devices, -1)
        if pod.attributes is not None and pod.attributes.owner:
            self._attributes.placed(pod.attributes.owner, node, +1)
        placement = Placement(node, pod, tuple(devices))
        self._pods[key] = placement
        self._pods_by_node[node].add(key)
        return placement

    def release(self, key: str) -> Placement:
        """Remove pod ``key``, giving its resources back. Returns where it was."""
        placement = self._pods.pop(key)
        self._pods_by_node[placement.node].discard(key)
        self._apply(self._index[placement.node], placement.pod, placement.devices, +1)
        attributes = placement.pod.attributes
        if attributes is not None and attributes.owner:
            self._attributes.placed(attributes.owner, placement.node, -1)
        return placement

    # ---------------------------------------------------------------- copies
    def copy(self) -> Snapshot:
        """An independent deep copy."""
        other = Snapshot.__new__(Snapshot)
        other._n, other._cap = self._n, self._cap
        other._resource_names = list(self._resource_names)
        other._resource_index = dict(self._resource_index)
        for attr in (
            "_allocatable",
            "_free",
            "_gpu_free",
            "_gpu_count",
            "_gpu_model",
            "_gpu_pod_kinds",
            "_node_version",
        ):
            setattr(other, attr, getattr(self, attr).copy())
        other._names = list(self._names)
        other._index = dict(self._index)
        other._model_names = list(self._model_names)
        other._model_index = dict(self._model_index)
        other._pods = dict(self._pods)
        other._pods_by_node = {k: set(v) for k, v in self._pods_by_node.items()}
        other._version, other._layout = self._version, self._layout
        other._supply = self._supply
        other._attributes = self._attributes.copy()
        return other

    def take(self, rows: NDArray[np.intp]) -> Snapshot:
        """A new snapshot holding only ``rows`` (in that order), without pod records.

        Used to score a subset of nodes with a node-local policy.
        """
        other = Snapshot.__new__(Snapshot)
        other._n = other._cap = len(rows)
        other._resource_names = self._resource_names
        other._resource_index = self._resource_index
        other._allocatable = self._allocatable[rows]
        other._free = self._free[rows]
        other._gpu_free = self._gpu_free[rows]
        other._gpu_count = self._gpu_count[rows]
        other._gpu_model = self._gpu_model[rows]
        other._gpu_pod_kinds = self._gpu_pod_kinds[rows]
        other._node_version = self._node_version[rows]
        other._names = [self._names[i] for i in rows]
        other._index = {name: i for i, name in enumerate(other._names)}
        other._model_names = self._model_names
        other._model_index = self._model_index
        other._pods = {}
        other._pods_by_node = {name: set() for name in other._names}
        other._version = self._version
        other._layout = self._layout
        self.gpu_supply_by_model()
        other._supply = self._supply
        other._attributes = NodeAttributes(self._attributes.labels, self._attributes.taints)
        return other

    # -------------------------------------------------------------- internals
    def _row_fits(self, row: int, pod: PodRequest) -> bool:
        free = self._free[row]
        if (
            free[CPU_COL] < pod.cpu_milli
            or free[MEMORY_COL] < pod.memory
            or free[EPHEMERAL_COL] < pod.ephemeral_storage
            or free[PODS_COL] < 1
        ):
            return False
        for name, quantity in pod.extended:
            col = self._resource_index.get(name)
            if quantity > 0 and (col is None or free[col] < quantity):
                return False
        if pod.gpu_count > 0:
            code = int(self._gpu_model[row])
            if self._gpu_count[row] == 0:
                return False
            if pod.gpu_models and (code < 0 or self._model_names[code] not in pod.gpu_models):
                return False
        return True

    def _apply(self, row: int, pod: PodRequest, devices: tuple[int, ...], sign: int) -> None:
        free = self._free[row]
        free[CPU_COL] += sign * pod.cpu_milli
        free[MEMORY_COL] += sign * pod.memory
        free[EPHEMERAL_COL] += sign * pod.ephemeral_storage
        free[PODS_COL] += sign
        for name, quantity in pod.extended:
            col = self._resource_index.get(name)
            if col is None:
                col = self._add_resource(name)
            self._free[row, col] += sign * quantity
        for j in devices:
            self._gpu_free[row, j] += sign * pod.gpu_milli
        if pod.gpu_count > 0:
            kind = 0 if pod.is_gpu_sharing else pod.gpu_count
            if kind >= self._gpu_pod_kinds.shape[1]:
                self._grow_devices(kind)
            self._gpu_pod_kinds[row, kind] -= sign
        self._node_version[row] += 1
        self._version += 1

    def _write_node(
        self,
        row: int,
        cpu_milli: int,
        memory: int,
        ephemeral_storage: int,
        max_pods: int,
        gpu_count: int,
        gpu_model: str | None,
        extended: Mapping[str, int] | None,
    ) -> None:
        for label, value in (
            ("cpu_milli", cpu_milli),
            ("memory", memory),
            ("ephemeral_storage", ephemeral_storage),
            ("max_pods", max_pods),
            ("gpu_count", gpu_count),
        ):
            if value < 0:
                raise ValueError(f"node {self._names[row]!r}: {label} must be >= 0, got {value}")
        if gpu_count > self._gpu_free.shape[1]:
            self._grow_devices(gpu_count)
        gpu_model = (gpu_model or UNKNOWN_GPU_MODEL) if gpu_count > 0 else None
        alloc = self._allocatable[row]
        alloc[:] = 0
        alloc[CPU_COL], alloc[MEMORY_COL] = cpu_milli, memory
        alloc[EPHEMERAL_COL], alloc[PODS_COL] = ephemeral_storage, max_pods
        for name, quantity in (extended or {}).items():
            col = self._resource_index.get(name)
            if col is None:
                col = self._add_resource(name)
            self._allocatable[row, col] = quantity
        self._gpu_count[row] = gpu_count
        if gpu_count > 0 and gpu_model:
            code = self._model_index.get(gpu_model)
            if code is None:
                code = len(self._model_names)
                self._model_names.append(gpu_model)
                self._model_index[gpu_model] = code
            self._gpu_model[row] = code
        else:
            self._gpu_model[row] = -1
        self._node_version[row] += 1
        self._version += 1

    def _row_arrays(self) -> tuple[NDArray[np.int64], ...]:
        return (
            self._allocatable,
            self._free,
            self._gpu_free,
            self._gpu_count,
            self._gpu_model,
            self._gpu_pod_kinds,
            self._node_version,
        )

    def _grow_rows(self, cap: int) -> None:
        def grow(a: NDArray[np.int64], fill: int = 0) -> NDArray[np.int64]:
            out = np.full((cap, *a.shape[1:]), fill, dtype=a.dtype)
            out[: self._cap] = a
            return out

        self._allocatable = grow(self._allocatable)
        self._free = grow(self._free)
        self._gpu_free = grow(self._gpu_free)
        self._gpu_count = grow(self._gpu_count)
        self._gpu_model = grow(self._gpu_model, -1)
        self._gpu_pod_kinds = grow(self._gpu_pod_kinds)
        self._node_version = grow(self._node_version)
        self._cap = cap

    def _grow_devices(self, devices: int) -> None:
        d_old = self._gpu_free.shape[1]
        if devices <= d_old:
            return
        gpu_free = np.zeros((self._cap, devices), dtype=np.int64)
        gpu_free[:, :d_old] = self._gpu_free
        self._gpu_free = gpu_free
        kinds = np.zeros((self._cap, devices + 1), dtype=np.int64)
        kinds[:, : self._gpu_pod_kinds.shape[1]] = self._gpu_pod_kinds
        self._gpu_pod_kinds = kinds
        self._layout += 1

    def _add_resource(self, name: str) -> int:
        col = len(self._resource_names)
        self._resource_names.append(name)
        self._resource_index[name] = col
        pad = np.zeros((self._cap, 1), dtype=np.int64)
        self._allocatable = np.hstack([self._allocatable, pad])
        self._free = np.hstack([self._free, pad])
        self._layout += 1
        return col
