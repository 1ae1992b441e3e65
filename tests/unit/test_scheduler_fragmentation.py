"""The fast fragmentation paths agree with the definition (property-based)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scheduler.fragmentation import (
    TargetWorkload,
    _device_stats,
    fragmentation,
    fragmentation_change,
    fragmentation_change_sharing,
)
from scheduler.pod import PodRequest

MODELS = ("A", "B")
WORKLOAD = TargetWorkload.from_pods(
    [
        PodRequest(cpu_milli=1000),
        PodRequest(cpu_milli=2000, gpu_count=1, gpu_milli=300),
        PodRequest(cpu_milli=2000, gpu_count=1, gpu_milli=300),
        PodRequest(cpu_milli=4000, gpu_count=1, gpu_milli=650),
        PodRequest(cpu_milli=8000, gpu_count=2, gpu_milli=1000),
        PodRequest(cpu_milli=8000, gpu_count=1, gpu_milli=1000, gpu_models=frozenset({"B"})),
    ],
    coverage=1.0,
)

devices = arrays(
    np.int64, st.tuples(st.integers(1, 12), st.integers(1, 8)), elements=st.integers(0, 1000)
)


def reference(cpu: np.ndarray, g: np.ndarray, model: np.ndarray) -> np.ndarray:
    """F straight from the definition, one node and one type at a time."""
    out = np.zeros(len(cpu))
    for n in range(len(cpu)):
        total = g[n].sum()
        for m, p in enumerate(WORKLOAD.probability):
            q, k, spec = WORKLOAD.gpu_milli[m], WORKLOAD.gpu_count[m], WORKLOAD.models[m]
            ok_model = not spec or (model[n] >= 0 and MODELS[model[n]] in spec)
            fits = (g[n] >= q).sum() >= k and cpu[n] >= WORKLOAD.cpu_milli[m] and ok_model
            out[n] += p * (g[n][g[n] < q].sum() if q > 0 and fits else total)
    return out


@settings(max_examples=60, deadline=None)
@given(devices, st.lists(st.integers(1, 1000), min_size=1, max_size=10, unique=True))
def test_device_stats_match_broadcasting(g: np.ndarray, qs: list[int]) -> None:
    qv = np.array(sorted(qs), dtype=np.int64)
    ge = g[..., None] >= qv
    count, small = _device_stats(g, qv)
    np.testing.assert_array_equal(count, ge.sum(axis=-2))
    np.testing.assert_array_equal(small, np.where(ge, 0, g[..., None]).sum(axis=-2))


@settings(max_examples=40, deadline=None)
@given(devices, st.data())
def test_fast_paths_match_the_definition(g: np.ndarray, data: st.DataObject) -> None:
    n = g.shape[0]
    cpu = np.array(data.draw(st.lists(st.integers(0, 20000), min_size=n, max_size=n)))
    model = np.array(data.draw(st.lists(st.integers(-1, 1), min_size=n, max_size=n)))
    np.testing.assert_allclose(
        fragmentation(cpu, g, model, WORKLOAD, MODELS), reference(cpu, g, model)
    )
    k = data.draw(st.integers(0, 2))
    before, after = fragmentation_change(
        cpu, g, model, WORKLOAD, MODELS, cpu_request=1500, whole_gpus=k
    )
    full = g >= 1000
    taken = full & (np.cumsum(full, axis=1) <= k)
    np.testing.assert_allclose(before, reference(cpu, g, model))
    np.testing.assert_allclose(after, reference(cpu - 1500, np.where(taken, 0, g), model))
    q = data.draw(st.integers(1, 999))
    before, per_device = fragmentation_change_sharing(
        cpu, g, model, WORKLOAD, MODELS, cpu_request=500, gpu_milli=q
    )
    for j in range(g.shape[1]):
        h = g.copy()
        h[:, j] -= q
        room = g[:, j] >= q
        expected = reference(cpu - 500, h, model)
        np.testing.assert_allclose(per_device[room, j], expected[room])
