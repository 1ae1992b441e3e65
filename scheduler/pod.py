"""What a pod asks for, as plain numbers.

Kubernetes objects are parsed elsewhere (``extender/``); this module only knows
numbers. Units: CPU in millicores, memory and ephemeral storage in **bytes**,
GPUs as a device count plus a per-device share in milli (1000 = a whole GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.attributes import PodAttributes

MIB = 1 << 20
GPU_MILLI = 1000

CPU = "cpu"
MEMORY = "memory"
EPHEMERAL_STORAGE = "ephemeral-storage"
PODS = "pods"
BASE_RESOURCES: tuple[str, ...] = (CPU, MEMORY, EPHEMERAL_STORAGE, PODS)


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The effective request of one pod.

    ``gpu_milli`` is the share of each requested device: 1000 for whole GPUs,
    less than 1000 for a GPU-sharing pod, which then uses exactly one device
    (``gpu_count == 1``). ``gpu_models`` lists acceptable GPU models; empty
    means any. ``extended`` holds other scalar resources as sorted
    ``(name, quantity)`` pairs so that the request stays hashable.

    Two requests with the same fields are the same *shape*; the simulator uses
    that to reuse scores. ``attributes`` (labels, namespace, priority, owner) is not part of
    the shape: it is set only when a configured policy declared it reads it
    (``scheduler.attributes.Reads``).
    """

    cpu_milli: int = 0
    memory: int = 0
    ephemeral_storage: int = 0
    gpu_count: int = 0
    gpu_milli: int = 0
    gpu_models: frozenset[str] = field(default_factory=frozenset)
    extended: tuple[tuple[str, int], ...] = ()
    attributes: PodAttributes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("cpu_milli", "memory", "ephemeral_storage", "gpu_count", "gpu_milli"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gpu_milli > GPU_MILLI:
            raise ValueError(f"gpu_milli must be <= {GPU_MILLI}, got {self.gpu_milli}")
        if self.gpu_count > 0 and self.gpu_milli == 0:
            raise ValueError("gpu_milli must be > 0 when gpu_count > 0")
        if 0 < self.gpu_milli < GPU_MILLI and self.gpu_count != 1:
            raise ValueError("a GPU-sharing pod (gpu_milli < 1000) must ask for exactly one GPU")
        for name, quantity in self.extended:
            if quantity < 0:
                raise ValueError(f"extended resource {name!r} must be >= 0, got {quantity}")

    @property
    def is_gpu_sharing(self) -> bool:
        return self.gpu_count == 1 and 0 < self.gpu_milli < GPU_MILLI

    @property
    def gpu_total_milli(self) -> int:
        """Total GPU milli the pod takes: ``gpu_count * gpu_milli``."""
        return self.gpu_count * self.gpu_milli


def effective_request(
    containers: Sequence[Mapping[str, int]],
    init_containers: Sequence[Mapping[str, int]] = (),
    overhead: Mapping[str, int] | None = None,
    *,
    sidecars: Sequence[bool] = (),
) -> dict[str, int]:
    """A pod's effective request per resource, as kube-scheduler computes it.

    For each resource: ``max(sum over app containers, max over init
    containers) + overhead``. Init containers run one at a time before the app
    containers, so only the largest counts. ``sidecars[i]`` marks init
    container ``i`` as restartable (``restartPolicy: Always``): a sidecar keeps
    running, so it adds to the app containers and to every init container
    that starts after it.

    >>> effective_request([{"cpu": 100}, {"cpu": 200}], [{"cpu": 250}], {"cpu": 10})
    {'cpu': 310}
    """
    total: dict[str, int] = {}
    running: dict[str, int] = {}  # sidecars started so far
    for container in containers:
        for name, quantity in container.items():
            total[name] = total.get(name, 0) + quantity
    for i, container in enumerate(init_containers):
        sidecar = i < len(sidecars) and sidecars[i]
        for name, quantity in container.items():
            if sidecar:
                running[name] = running.get(name, 0) + quantity
                total[name] = total.get(name, 0) + quantity
            else:
                total[name] = max(total.get(name, 0), quantity + running.get(name, 0))
    for name, quantity in (overhead or {}).items():
        total[name] = total.get(name, 0) + quantity
    return total


def pod_request_from_resources(
    resources: Mapping[str, int],
    *,
    gpu_count: int = 0,
    gpu_milli: int = GPU_MILLI,
    gpu_models: Iterable[str] = (),
    attributes: PodAttributes | None = None,
) -> PodRequest:
    """Build a :class:`PodRequest` from an effective-request mapping.

    ``cpu`` is in millicores, ``memory`` and ``ephemeral-storage`` in bytes;
    every other key becomes an extended resource. GPUs are passed separately
    because they are devices, not scalar quantities.
    """
    extended = tuple(
        sorted((k, int(v)) for k, v in resources.items() if k not in BASE_RESOURCES and v)
    )
    return PodRequest(
        cpu_milli=int(resources.get(CPU, 0)),
        memory=int(resources.get(MEMORY, 0)),
        ephemeral_storage=int(resources.get(EPHEMERAL_STORAGE, 0)),
        gpu_count=gpu_count,
        gpu_milli=gpu_milli if gpu_count else 0,
        gpu_models=frozenset(gpu_models),
        extended=extended,
        attributes=attributes,
    )
