"""Expected GPU fragmentation of nodes against a target workload (FGD, ATC'23).

A *target workload* is a distribution over pod types ``m`` with probability
``p_m``: CPU millicores ``c_m``, GPU milli per device ``q_m``, device count
``k_m``, acceptable models ``S_m`` (empty = any) and, optionally, memory.

For a node with free CPU ``c_n``, free memory ``mem_n``, devices ``g_j`` and
``G_n = sum_j g_j``, the fragment a type sees is::

    f_m(n) = sum_{j: g_j < q_m} g_j   if the type fits: #{j: g_j >= q_m} >= k_m,
                                       c_n >= c_m, mem_n >= mem_m and model_n in S_m
           = G_n                      otherwise, and always for CPU-only types

and ``F(n) = sum_m p_m f_m(n)``: the GPU milli the workload expects to be
unable to use on that node.

Computed without a loop over types: with ``count_q`` the devices having at
least ``q`` free, ``small_q`` the free milli on the others, and ``W_{q,k}(n)``
the probability of the types of shape ``(q, k)`` whose CPU, memory and model
conditions hold on ``n``::

    F(n) = P * G_n  -  sum_{(q,k)} [count_q >= k] * (G_n - small_q) * W_{q,k}(n)

(``P = sum_m p_m``). That is vectorised over nodes and devices and costs
nodes x devices x distinct-q plus nodes x types for the weights, once per
node even when every device of the node is tried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from scheduler.pod import PodRequest

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TargetWorkload:
    """Pod types and their probabilities (tuples, so the workload is hashable)."""

    cpu_milli: tuple[int, ...]
    gpu_milli: tuple[int, ...]
    gpu_count: tuple[int, ...]
    models: tuple[frozenset[str], ...]
    probability: tuple[float, ...]
    memory: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.probability)
        lengths = {len(self.cpu_milli), len(self.gpu_milli), len(self.gpu_count), len(self.models)}
        if lengths != {n} or (self.memory and len(self.memory) != n):
            raise ValueError("all target-workload columns must have the same length")

    def __len__(self) -> int:
        return len(self.probability)

    @staticmethod
    def from_pods(
        pods: Sequence[PodRequest],
        *,
        coverage: float = 0.95,
        spec_strings: Sequence[str] | None = None,
        with_memory: bool = False,
    ) -> TargetWorkload:
        """The FGD artifact's "typical pods" of a workload.

        Group pods by ``(cpu, q, k, spec)``, order by count (ties: larger key
        first), keep the shortest prefix covering ``coverage`` of all pods and
        normalise the counts. ``spec_strings`` gives the verbatim ``gpu_spec``
        per pod (the artifact groups on the raw string); by default the sorted
        model names are joined with ``|``. ``with_memory`` adds memory to the
        key and to the fit test (Archimedes does; FGD does not).
        """
        keys: list[tuple[int, int, int, str, int]] = []
        for i, pod in enumerate(pods):
            spec = spec_strings[i] if spec_strings is not None else "|".join(sorted(pod.gpu_models))
            q = pod.gpu_milli if pod.gpu_count else 0
            keys.append((pod.cpu_milli, q, pod.gpu_count, spec, pod.memory if with_memory else 0))
        counts = Counter(keys)
        ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        total = sum(counts.values())
        chosen: list[tuple[tuple[int, int, int, str, int], int]] = []
        cumulative = 0
        for key, count in ordered:
            chosen.append((key, count))
            cumulative += count
            if cumulative >= coverage * total:
                break
        norm = float(sum(c for _, c in chosen))
        models = tuple(
            frozenset(p.strip() for p in key[3].split("|") if p.strip() and p.strip() != "nan")
            for key, _ in chosen
        )
        return TargetWorkload(
            cpu_milli=tuple(key[0] for key, _ in chosen),
            gpu_milli=tuple(key[1] for key, _ in chosen),
            gpu_count=tuple(key[2] for key, _ in chosen),
            models=models,
            probability=tuple(c / norm for _, c in chosen),
            memory=tuple(key[4] for key, _ in chosen) if with_memory else (),
        )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The workload prepared for one set of model names.

    GPU types are grouped by ``(q, k)``; per node, a group's weight is the
    probability of its types whose CPU, memory and model conditions hold.
    """

    q_values: IntArray  # distinct q of GPU types (Q,)
    group_q: IntArray  # per group, index into q_values (G,)
    group_k: IntArray  # per group, device count (G,)
    type_group: NDArray[np.float64]  # one-hot (M, G)
    cpu: IntArray  # per GPU type (M,)
    memory: IntArray  # (M,)
    prob: FloatArray  # (M,)
    allowed: NDArray[np.bool_]  # (models + 1, M): last row = node without GPU model
    total_prob: float
    cpu_thresholds: IntArray  # distinct c_m, ascending (T,)
    weight_table: FloatArray  # (models + 1, T + 1, G): W for cpu in [thr_i-1, thr_i)


@lru_cache(maxsize=64)
def _compile(workload: TargetWorkload, model_names: tuple[str, ...]) -> _Compiled:
    gpu = [i for i, q in enumerate(workload.gpu_milli) if q > 0 and workload.gpu_count[i] > 0]
    q = np.array([workload.gpu_milli[i] for i in gpu], dtype=np.int64)
    k = np.array([workload.gpu_count[i] for i in gpu], dtype=np.int64)
    q_values = np.unique(q)
    groups = sorted({(int(a), int(b)) for a, b in zip(q, k, strict=True)})
    group_of = {key: g for g, key in enumerate(groups)}
    one_hot = np.zeros((len(gpu), len(groups)), dtype=np.float64)
    for col in range(len(gpu)):
        one_hot[col, group_of[(int(q[col]), int(k[col]))]] = 1.0
    allowed = np.zeros((len(model_names) + 1, len(gpu)), dtype=np.bool_)
    for col, i in enumerate(gpu):
        spec = workload.models[i]
        for code, model in enumerate(model_names):
            allowed[code, col] = not spec or model in spec
    memory = [workload.memory[i] if workload.memory else 0 for i in gpu]
    cpu = np.array([workload.cpu_milli[i] for i in gpu], dtype=np.int64)
    prob = np.array([workload.probability[i] for i in gpu], dtype=np.float64)
    # W as a step function of free CPU, per model: row i holds the weight of the
    # types with c_m <= thresholds[i - 1] (row 0: no type fits).
    thresholds = np.unique(cpu)
    table = np.zeros((len(model_names) + 1, len(thresholds) + 1, len(groups)))
    for i, threshold in enumerate(thresholds):
        fits = (cpu <= threshold)[None, :] & allowed
        table[:, i + 1, :] = (fits * prob) @ one_hot
    return _Compiled(
        q_values=q_values.astype(np.int64),
        group_q=np.searchsorted(q_values, [g[0] for g in groups]).astype(np.int64),
        group_k=np.array([g[1] for g in groups], dtype=np.int64),
        type_group=one_hot,
        cpu=cpu,
        memory=np.array(memory, dtype=np.int64),
        prob=prob,
        allowed=allowed,
        total_prob=float(sum(workload.probability)),
        cpu_thresholds=thresholds.astype(np.int64),
        weight_table=table,
    )


def _group_weights(
    compiled: _Compiled,
    cpu_free: IntArray,
    model_code: IntArray,
    memory_free: IntArray | None,
) -> FloatArray:
    """(nodes, G): probability of each group's types that CPU/memory/model allow."""
    if memory_free is None:
        step = np.searchsorted(compiled.cpu_thresholds, cpu_free, side="right")
        table: FloatArray = compiled.weight_table[model_code, step]
        return table
    ok = cpu_free[:, None] >= compiled.cpu
    if memory_free is not None:
        ok &= memory_free[:, None] >= compiled.memory
    ok &= compiled.allowed[model_code]
    weights: FloatArray = (ok * compiled.prob) @ compiled.type_group
    return weights


def _device_stats(gpu_free: IntArray, q_values: IntArray) -> tuple[IntArray, IntArray]:
    """Per state and distinct q: devices with >= q free, and free milli on the others."""
    ge = gpu_free[..., None] >= q_values
    count = ge.sum(axis=-2)
    small = np.where(ge, 0, gpu_free[..., None]).sum(axis=-2)
    return count, small


def _combine(
    compiled: _Compiled,
    total: IntArray,
    count: IntArray,
    small: IntArray,
    weights: FloatArray,
) -> FloatArray:
    """``P * G - sum_g [count >= k_g] (G - small) W_g`` (see the module docstring)."""
    count_g = count[..., compiled.group_q]
    small_g = small[..., compiled.group_q]
    usable = np.where(count_g >= compiled.group_k, total[..., None] - small_g, 0)
    frag: FloatArray = compiled.total_prob * total - (usable * weights).sum(axis=-1)
    return frag


def fragmentation(
    cpu_free: IntArray,
    gpu_free: IntArray,
    model_code: IntArray,
    workload: TargetWorkload,
    model_names: tuple[str, ...],
    *,
    memory_free: IntArray | None = None,
) -> FloatArray:
    """``F`` for node states: ``cpu_free``/``model_code`` shape (N,), ``gpu_free`` (N, D).

    ``model_code`` indexes ``model_names`` (-1 = no GPU). Memory is only
    checked when ``memory_free`` is given and the workload has memory.
    """
    compiled = _compile(workload, model_names)
    total = gpu_free.sum(axis=-1)
    if compiled.prob.size == 0:
        result: FloatArray = compiled.total_prob * total.astype(np.float64)
        return result
    mem = memory_free if workload.memory else None
    weights = _group_weights(compiled, cpu_free, model_code, mem)
    count, small = _device_stats(gpu_free, compiled.q_values)
    return _combine(compiled, total, count, small, weights)


def fragmentation_after_sharing(
    cpu_after: IntArray,
    gpu_free: IntArray,
    model_code: IntArray,
    q: int,
    workload: TargetWorkload,
    model_names: tuple[str, ...],
    *,
    memory_after: IntArray | None = None,
) -> FloatArray:
    """``F`` after a GPU-sharing pod takes ``q`` milli from device ``j``: shape (N, D).

    Only device ``j`` changes, so the per-q device statistics are updated by
    that device's delta instead of being recomputed (N x D x Q work, not
    N x D x D x Q). Entries for devices with less than ``q`` free are
    meaningless; callers mask them.
    """
    compiled = _compile(workload, model_names)
    total_after = (gpu_free.sum(axis=-1) - q)[:, None] + np.zeros_like(gpu_free)
    if compiled.prob.size == 0:
        result: FloatArray = compiled.total_prob * total_after.astype(np.float64)
        return result
    mem = memory_after if workload.memory else None
    weights = _group_weights(compiled, cpu_after, model_code, mem)[:, None, :]
    qv = compiled.q_values
    count, small = _device_stats(gpu_free, qv)  # (N, Q)
    before = gpu_free[..., None]  # (N, D, 1)
    after = before - q
    count_j = count[:, None, :] - (before >= qv) + (after >= qv)
    small_j = small[:, None, :] - np.where(before < qv, before, 0) + np.where(after < qv, after, 0)
    return _combine(compiled, total_after, count_j, small_j, weights)
