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
    allowed: NDArray[np.bool_]  # (models + 1, M): last row = node without a model
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
        allowed[len(model_names), col] = not spec
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
    """Per state and distinct q: devices with >= q free, and free milli on the others.

    For a (nodes, devices) array the devices are sorted per node and every
    ``(node, q)`` is one binary search in the flattened, node-offset array,
    with prefix sums giving the free milli below ``q`` (3x faster than
    broadcasting nodes x devices x q).
    """
    if gpu_free.ndim != 2 or gpu_free.size == 0 or q_values.size == 0:
        ge = gpu_free[..., None] >= q_values
        return ge.sum(axis=-2), np.where(ge, 0, gpu_free[..., None]).sum(axis=-2)
    n, d = gpu_free.shape
    ordered = np.sort(gpu_free, axis=1)
    prefix = np.zeros((n, d + 1), dtype=np.int64)
    np.cumsum(ordered, axis=1, out=prefix[:, 1:])
    # Every value and key of node i lies in [i * stride, (i + 1) * stride).
    shift = max(0, -int(ordered[:, 0].min()))
    stride = int(max(ordered[:, -1].max(), q_values.max())) + shift + 2
    rows = np.arange(n, dtype=np.int64)[:, None]
    flat = (ordered + shift + rows * stride).ravel()
    keys = (q_values.clip(min=0) + shift + rows * stride).ravel()
    below = np.searchsorted(flat, keys, side="left").reshape(n, -1) - rows * d
    small: IntArray = np.take_along_axis(prefix, below, axis=1)
    count: IntArray = d - below
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
    that device's delta instead of being recomputed, and only for devices
    with room (``g_j >= q``): P x Q work for P such devices, not
    N x D x D x Q. Entries for devices without room are 0; callers mask them.
    """
    compiled = _compile(workload, model_names)
    rows, cols = np.nonzero(gpu_free >= q)
    total_after = gpu_free.sum(axis=-1)[rows] - q
    out = np.zeros(gpu_free.shape, dtype=np.float64)
    if compiled.prob.size == 0:
        out[rows, cols] = compiled.total_prob * total_after
        return out
    mem = memory_after if workload.memory else None
    weights = _group_weights(compiled, cpu_after, model_code, mem)[rows]  # (P, G)
    qv = compiled.q_values
    count, small = _device_stats(gpu_free, qv)  # (N, Q)
    before = gpu_free[rows, cols][:, None]  # (P, 1)
    after = before - q
    ge_before = before >= qv
    ge_after = after >= qv
    count_j = count[rows] - ge_before + ge_after
    small_j = small[rows] - np.where(ge_before, 0, before) + np.where(ge_after, 0, after)
    out[rows, cols] = _combine(compiled, total_after, count_j, small_j, weights)
    return out


def fragmentation_change(
    cpu_free: IntArray,
    gpu_free: IntArray,
    model_code: IntArray,
    workload: TargetWorkload,
    model_names: tuple[str, ...],
    *,
    cpu_request: int,
    whole_gpus: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """``(F before, F after)`` per node for a CPU-only or whole-GPU pod.

    The pod takes ``cpu_request`` and the ``whole_gpus`` lowest-index fully
    free devices. Those devices counted for every ``q`` and never for
    ``small_q``, so the device statistics after placement follow from the
    ones before (``count_q - k``, ``small_q`` unchanged): one device scan,
    not two. Nodes without ``whole_gpus`` free devices get meaningless values.
    """
    compiled = _compile(workload, model_names)
    total = gpu_free.sum(axis=-1)
    taken = 0
    if whole_gpus:
        taken = np.minimum((gpu_free >= 1000).sum(axis=-1), whole_gpus) * 1000
    total_after = total - taken
    if compiled.prob.size == 0:
        return compiled.total_prob * total.astype(np.float64), compiled.total_prob * (
            total_after.astype(np.float64)
        )
    count, small = _device_stats(gpu_free, compiled.q_values)
    before = _combine(
        compiled, total, count, small, _group_weights(compiled, cpu_free, model_code, None)
    )
    count_after = count - (np.asarray(taken) // 1000)[..., None] if whole_gpus else count
    weights_after = _group_weights(compiled, cpu_free - cpu_request, model_code, None)
    after = _combine(compiled, total_after, count_after, small, weights_after)
    return before, after


def fragmentation_change_sharing(
    cpu_free: IntArray,
    gpu_free: IntArray,
    model_code: IntArray,
    workload: TargetWorkload,
    model_names: tuple[str, ...],
    *,
    cpu_request: int,
    gpu_milli: int,
) -> tuple[FloatArray, FloatArray]:
    """``(F before (N,), F after taking gpu_milli from device j (N, D))``.

    Same as :func:`fragmentation` and :func:`fragmentation_after_sharing`
    with one shared device scan. After-values of devices without room are 0.
    """
    compiled = _compile(workload, model_names)
    total = gpu_free.sum(axis=-1)
    rows, cols = np.nonzero(gpu_free >= gpu_milli)
    out = np.zeros(gpu_free.shape, dtype=np.float64)
    if compiled.prob.size == 0:
        out[rows, cols] = compiled.total_prob * (total[rows] - gpu_milli)
        return compiled.total_prob * total.astype(np.float64), out
    qv = compiled.q_values
    count, small = _device_stats(gpu_free, qv)
    before = _combine(
        compiled, total, count, small, _group_weights(compiled, cpu_free, model_code, None)
    )
    weights = _group_weights(compiled, cpu_free - cpu_request, model_code, None)[rows]
    g_before = gpu_free[rows, cols][:, None]
    g_after = g_before - gpu_milli
    ge_before = g_before >= qv
    ge_after = g_after >= qv
    count_j = count[rows] - ge_before + ge_after
    small_j = small[rows] - np.where(ge_before, 0, g_before) + np.where(ge_after, 0, g_after)
    out[rows, cols] = _combine(compiled, total[rows] - gpu_milli, count_j, small_j, weights)
    return before, out
