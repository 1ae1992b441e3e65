"""The conformance suite every policy must pass, built-in or plugin.

Run it on your own policy factory::

    from policies.conformance import check_policy
    check_policy(my_package.create)        # raises ConformanceError on a violation

It builds random clusters (CPU-only and GPU nodes of several models, partly
filled) and random pods (CPU-only, GPU-sharing, multi-GPU, model-constrained)
and checks, for every pod:

- scores: one finite float per node, within 0..100, in a new array;
- inputs untouched: the snapshot's arrays and the pod are unchanged;
- deterministic for a seed: two instances built from the same context give
  the same scores and the same choices;
- never an infeasible node: the chosen node and devices fit the pod;
- ``node_local`` is honest: scoring a subset of nodes gives the same values;
- ``reads``, if declared, is a ``scheduler.attributes.Reads``.

The clusters carry zone, instance-type and tenant labels and a few taints, and the pods
labels, a namespace, a priority and an owner, so policies that read attributes
(``scheduler.attributes``) are exercised too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from scheduler.attributes import INSTANCE_TYPE, ZONE, PodAttributes, Taint, reads_of
from scheduler.fragmentation import TargetWorkload
from scheduler.pod import GPU_MILLI, MIB, PodRequest
from scheduler.policy import Policy, PolicyContext, PolicyFactory, score_problem
from scheduler.select import choose_node
from scheduler.snapshot import Snapshot

MODELS = ("A100", "T4", "V100")
TENANT = "fulcrum.io/tenant"  # a node label the random clusters carry, beside zone and type


class ConformanceError(AssertionError):
    """A policy broke one of the rules above; the message says which and where."""


def random_attributes(rng: np.random.Generator) -> PodAttributes:
    """A pod's namespace, labels, priority and owner (one of eight ReplicaSets, or none)."""
    owner = int(rng.integers(9))
    tenant = str(rng.choice(["a", "b", "c"]))
    return PodAttributes(
        namespace=str(rng.choice(["default", "team-a"])),
        labels=(("app", f"app-{owner}"), ("tenant", tenant)) if owner else (),
        priority=int(rng.choice([0, 1000])),
        owner_kind="ReplicaSet" if owner else "",
        owner_name=f"rs-{owner}" if owner else "",
        owner_uid=f"uid-{owner}" if owner else "",
    )


def random_pod(rng: np.random.Generator) -> PodRequest:
    """A random pod; ``with_attributes`` below gives it attributes."""
    kind = rng.integers(4)
    cpu = int(rng.choice([0, 500, 1000, 4000, 16000]))
    memory = int(rng.choice([0, 512, 4096, 32768])) * MIB
    if kind == 0:
        return PodRequest(cpu_milli=cpu, memory=memory)
    if kind == 1:
        return PodRequest(
            cpu_milli=cpu,
            memory=memory,
            gpu_count=1,
            gpu_milli=int(rng.choice([100, 250, 500, 810])),
        )
    models = frozenset(rng.choice(MODELS, size=int(rng.integers(1, 3)), replace=False).tolist())
    return PodRequest(
        cpu_milli=cpu,
        memory=memory,
        gpu_count=int(rng.choice([1, 2, 4, 8])),
        gpu_milli=GPU_MILLI,
        gpu_models=models if kind == 3 else frozenset(),
    )


def with_attributes(pod: PodRequest, rng: np.random.Generator) -> PodRequest:
    return replace(pod, attributes=random_attributes(rng))


def random_snapshot(rng: np.random.Generator, nodes: int = 40) -> Snapshot:
    """Random nodes in three zones, some labelled for a tenant, a few tainted, partly filled
    by pods of eight owners."""
    snapshot = Snapshot()
    for i in range(nodes):
        gpus = int(rng.choice([0, 1, 2, 4, 8]))
        tenant = str(rng.choice(["a", "b", ""]))
        snapshot.add_node(
            f"node-{i:03d}",
            cpu_milli=int(rng.choice([8000, 32000, 96000])),
            memory=int(rng.choice([32768, 262144])) * MIB,
            ephemeral_storage=100 << 30,
            gpu_count=gpus,
            gpu_model=str(rng.choice(MODELS)) if gpus else None,
            labels={ZONE: f"zone-{i % 3}", INSTANCE_TYPE: f"type-{gpus}"}
            | ({TENANT: tenant} if tenant else {}),
            taints=[Taint("dedicated", "gpu", "NoSchedule")] if i % 7 == 0 else [],
        )
    for j in range(nodes * 2):
        pod = with_attributes(random_pod(rng), rng)
        fits = np.flatnonzero(snapshot.feasible(pod))
        if fits.size:
            row = int(rng.choice(fits))
            snapshot.assign(f"warm-{j}", pod, snapshot.names[row])
    return snapshot


def random_workload(rng: np.random.Generator) -> TargetWorkload:
    pods = [random_pod(rng) for _ in range(200)]
    return TargetWorkload.from_pods(pods)


def _state(snapshot: Snapshot) -> list[np.ndarray]:
    return [
        snapshot.allocatable.copy(),
        snapshot.free.copy(),
        snapshot.gpu_free.copy(),
        snapshot.gpu_count.copy(),
        snapshot.gpu_model.copy(),
        snapshot.gpu_pod_kinds.copy(),
        snapshot.node_version.copy(),
    ]


def _fail(name: str, seed: int, pod: PodRequest, message: str) -> ConformanceError:
    return ConformanceError(f"policy {name!r}, seed {seed}, pod {pod}: {message}")


def _score_problem(snapshot: Snapshot, scores: Any, again: Any) -> str:
    """What is wrong with one policy's ``scores`` (``again``: a second instance's), or ""."""
    problem = score_problem(scores, snapshot.num_nodes)
    if problem:
        return problem
    if not np.issubdtype(scores.dtype, np.floating):
        return f"scores must be floats, got {scores.dtype}"
    if not np.array_equal(scores, again):
        return "two instances with the same seed disagree"
    if any(
        np.shares_memory(scores, a)
        for a in (snapshot.free, snapshot.allocatable, snapshot.gpu_free)
    ):
        return "score must return a new array"
    return ""


def check_policy(
    factory: PolicyFactory,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    pods_per_seed: int = 25,
    with_workload: bool = True,
) -> None:
    """Run the suite on ``factory``; raise :class:`ConformanceError` on the first violation."""
    for seed in seeds:
        rng = np.random.default_rng(seed)
        snapshot = random_snapshot(rng)
        workload = random_workload(rng) if with_workload else None
        context = PolicyContext(seed=seed, workload=workload)
        first: Policy = factory(context)
        second: Policy = factory(context)
        name = getattr(first, "name", type(first).__name__)
        if not isinstance(first, Policy):
            raise ConformanceError(f"policy {name!r} does not implement scheduler.policy.Policy")
        try:
            reads_of(first)
        except TypeError as exc:
            raise ConformanceError(str(exc)) from None
        for _ in range(pods_per_seed):
            pod = with_attributes(random_pod(rng), rng)
            before = _state(snapshot)
            pod_before = PodRequest(**{f: getattr(pod, f) for f in PodRequest.__slots__})
            scores = first.score(snapshot, pod)
            problem = _score_problem(snapshot, scores, second.score(snapshot, pod))
            if problem:
                raise _fail(name, seed, pod, problem)
            keep = first.filter(snapshot, pod)
            if keep.shape != (snapshot.num_nodes,) or keep.dtype != np.bool_:
                raise _fail(name, seed, pod, "filter must return one bool per node")
            if first.node_local:
                rows = np.arange(0, snapshot.num_nodes, 3)
                subset = np.asarray(first.score(snapshot.take(rows), pod))
                # Non-node-local randomness would differ; node-local policies must agree.
                if not np.allclose(subset, scores[rows]):
                    raise _fail(name, seed, pod, "node_local is set but subset scores differ")
                second.score(snapshot.take(rows), pod)
            choice = choose_node(snapshot, pod, first)
            other = choose_node(snapshot, pod, second)
            if choice != other:
                raise _fail(name, seed, pod, f"choices differ for the same seed: {choice} {other}")
            for current, old in zip(_state(snapshot), before, strict=True):
                if not np.array_equal(current, old):
                    raise _fail(name, seed, pod, "the snapshot was modified")
            if pod != pod_before:
                raise _fail(name, seed, pod, "the pod was modified")
            feasible = snapshot.feasible(pod)
            if choice is None:
                if feasible.any() and keep[feasible].any():
                    raise _fail(name, seed, pod, "no node chosen although one fits")
                continue
            row, devices = choice
            if not feasible[row]:
                raise _fail(name, seed, pod, f"chose infeasible node {snapshot.names[row]}")
            try:
                snapshot.assign(f"check-{seed}-{_}", pod, snapshot.names[row], devices=devices)
            except ValueError as exc:
                raise _fail(name, seed, pod, f"chose unusable devices {devices}: {exc}") from None
