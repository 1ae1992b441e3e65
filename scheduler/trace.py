"""Loading and validating openb-format traces (Alibaba clusterdata GPU v2023).

Nodes: ``sn, cpu_milli, memory_mib, gpu, model``. Pods: ``name, cpu_milli,
memory_mib, num_gpu, gpu_milli`` and optionally ``gpu_spec`` (further columns
are ignored).
Every problem is reported as a :class:`TraceError` naming the file, the line
(the header is line 1) and the column.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import GPU_MILLI, MIB, PodRequest
from scheduler.snapshot import Snapshot

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
OPTIONAL_POD_COLUMNS = ("gpu_spec",)
TRACE_MAX_PODS = 1001  # the FGD simulator's allocatable pods per node


class TraceError(ValueError):
    """A trace file is malformed; the message names file, line and column."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, message: str):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class NodeTrace:
    path: str
    names: tuple[str, ...]
    cpu_milli: NDArray[np.int64]
    memory_mib: NDArray[np.int64]
    gpu_count: NDArray[np.int64]
    models: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_gpu_milli(self) -> int:
        return int(self.gpu_count.sum()) * GPU_MILLI

    def to_snapshot(self, *, max_pods: int = TRACE_MAX_PODS) -> Snapshot:
        """A fresh snapshot of these nodes (memory converted from MiB to bytes)."""
        max_gpus = max(8, int(self.gpu_count.max(initial=0)))
        snapshot = Snapshot(max_gpus_per_node=max_gpus, capacity=max(len(self), 1))
        for i, name in enumerate(self.names):
            count = int(self.gpu_count[i])
            snapshot.add_node(
                name,
                cpu_milli=int(self.cpu_milli[i]),
                memory=int(self.memory_mib[i]) * MIB,
                max_pods=max_pods,
                gpu_count=count,
                gpu_model=self.models[i] if count > 0 and self.models[i] != "nan" else None,
            )
        return snapshot


@dataclass(frozen=True, slots=True)
class PodTrace:
    path: str
    names: tuple[str, ...]
    cpu_milli: NDArray[np.int64]
    memory_mib: NDArray[np.int64]
    num_gpu: NDArray[np.int64]
    gpu_milli: NDArray[np.int64]
    gpu_spec: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def request(self, i: int) -> PodRequest:
        k = int(self.num_gpu[i])
        return PodRequest(
            cpu_milli=int(self.cpu_milli[i]),
            memory=int(self.memory_mib[i]) * MIB,
            gpu_count=k,
            gpu_milli=int(self.gpu_milli[i]) if k else 0,
            gpu_models=spec_models(self.gpu_spec[i]),
        )

    @property
    def gpu_demand_milli(self) -> NDArray[np.int64]:
        """``num_gpu * gpu_milli`` per pod."""
        return self.num_gpu * self.gpu_milli


def spec_models(spec: str) -> frozenset[str]:
    """Acceptable GPU models from a ``gpu_spec`` cell (``|``-separated, empty = any)."""
    if spec.strip().lower() in ("", "nan"):
        return frozenset()
    return frozenset(piece.strip() for piece in spec.split("|") if piece.strip())


def _read_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise TraceError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(path, None, None, f"cannot read: {exc}") from None
    if not rows:
        raise TraceError(path, 1, None, "empty file (expected a header row)")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise TraceError(
            path, 1, missing[0], f"missing column(s) {', '.join(missing)}; header is {header}"
        )
    body = [r for r in rows[1:]]
    return header, body


def _column(
    path: Path,
    header: list[str],
    body: list[list[str]],
    name: str,
    *,
    numeric: bool,
    allow_empty: bool = False,
) -> list[str] | NDArray[np.int64]:
    col = header.index(name)
    if not numeric:
        values: list[str] = []
        for i, row in enumerate(body):
            if col >= len(row):
                if allow_empty:
                    values.append("")
                    continue
                raise TraceError(path, i + 2, name, "missing value")
            values.append(row[col].strip())
        return values
    out = np.empty(len(body), dtype=np.int64)
    for i, row in enumerate(body):
        cell = row[col].strip() if col < len(row) else ""
        if cell == "":
            raise TraceError(path, i + 2, name, "missing value")
        try:
            value = float(cell)
        except ValueError:
            raise TraceError(path, i + 2, name, f"not a number: {cell!r}") from None
        if not np.isfinite(value) or value != int(value):
            raise TraceError(path, i + 2, name, f"not a whole number: {cell!r}")
        if value < 0:
            raise TraceError(path, i + 2, name, f"negative value: {cell!r}")
        out[i] = int(value)
    return out


def load_nodes(path: str | Path) -> NodeTrace:
    """Read and validate a node list."""
    p = Path(path)
    header, body = _read_rows(p, NODE_COLUMNS)
    body = [r for r in body if any(cell.strip() for cell in r)]
    if not body:
        raise TraceError(p, None, None, "no nodes")
    names = _column(p, header, body, "sn", numeric=False)
    assert isinstance(names, list)
    models = _column(p, header, body, "model", numeric=False, allow_empty=True)
    assert isinstance(models, list)
    cpu = _column(p, header, body, "cpu_milli", numeric=True)
    mem = _column(p, header, body, "memory_mib", numeric=True)
    gpu = _column(p, header, body, "gpu", numeric=True)
    assert isinstance(cpu, np.ndarray) and isinstance(mem, np.ndarray)
    assert isinstance(gpu, np.ndarray)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            raise TraceError(p, i + 2, "sn", "empty node name")
        if name in seen:
            raise TraceError(p, i + 2, "sn", f"duplicate node name {name!r}")
        seen.add(name)
    return NodeTrace(str(p), tuple(names), cpu, mem, gpu, tuple(models))


def load_pods(path: str | Path, *, known_models: frozenset[str] | None = None) -> PodTrace:
    """Read and validate a pod list.

    ``gpu_milli`` above 1000 is clipped to 1000 (as the FGD artifact does).
    With ``known_models``, a ``gpu_spec`` naming a model no node has is an
    error.
    """
    p = Path(path)
    header, body = _read_rows(p, POD_COLUMNS)
    body = [r for r in body if any(cell.strip() for cell in r)]
    if not body:
        raise TraceError(p, None, None, "no pods")
    names = _column(p, header, body, "name", numeric=False)
    if "gpu_spec" in header:
        specs = _column(p, header, body, "gpu_spec", numeric=False, allow_empty=True)
    else:
        specs = [""] * len(body)
    assert isinstance(names, list) and isinstance(specs, list)
    cpu = _column(p, header, body, "cpu_milli", numeric=True)
    mem = _column(p, header, body, "memory_mib", numeric=True)
    k = _column(p, header, body, "num_gpu", numeric=True)
    q = _column(p, header, body, "gpu_milli", numeric=True)
    assert isinstance(cpu, np.ndarray) and isinstance(mem, np.ndarray)
    assert isinstance(k, np.ndarray) and isinstance(q, np.ndarray)
    q = np.where(k > 0, np.minimum(q, GPU_MILLI), 0)
    seen: set[str] = set()
    for i in range(len(body)):
        line = i + 2
        if not names[i]:
            raise TraceError(p, line, "name", "empty pod name")
        if names[i] in seen:
            raise TraceError(p, line, "name", f"duplicate pod name {names[i]!r}")
        seen.add(names[i])
        if k[i] > 0 and q[i] == 0:
            raise TraceError(p, line, "gpu_milli", "must be > 0 when num_gpu > 0")
        if k[i] > 1 and q[i] < GPU_MILLI:
            raise TraceError(p, line, "gpu_milli", "a multi-GPU pod must use whole GPUs (1000)")
        if known_models is not None and k[i] > 0:
            unknown = sorted(spec_models(specs[i]) - known_models)
            if unknown:
                raise TraceError(p, line, "gpu_spec", f"unknown GPU model(s) {', '.join(unknown)}")
    return PodTrace(str(p), tuple(names), cpu, mem, k, q, tuple(specs))
