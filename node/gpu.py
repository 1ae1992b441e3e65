"""Built-in node plugin ``gpu``: the devices Fulcrum chose at bind are the ones the container sees.

Fulcrum's extender picks a pod's GPUs at bind (``fulcrum.io/gpu-devices: "3"``, shares of one
device by ``fulcrum.io/gpu-milli``). This plugin carries that out on the node:

- **advertises** the node's GPUs to the kubelet through the device-plugin API (``nvidia.com/gpu``
  capacity; ``fake=N`` for machines without GPUs) and their model as the Node label
  ``nvidia.com/gpu.product`` (``model=A100``), which Fulcrum's ``fulcrum.io/gpu-model`` matches;
- **sets** ``NVIDIA_VISIBLE_DEVICES`` (and ``FULCRUM_GPU_DEVICES``) of every container of a pod
  with ``fulcrum.io/gpu-devices`` to exactly those devices at container creation (NRI), adds
  ``/dev/nvidiaN`` device nodes or CDI names ``nvidia.com/gpu=N`` where the node has them, and
  for a share passes the limit the way HAMi-core (``CUDA_DEVICE_MEMORY_LIMIT``,
  ``CUDA_DEVICE_SM_LIMIT``) and MPS (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``,
  ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``) read it;
- **refuses** a container whose own ``NVIDIA_VISIBLE_DEVICES`` names devices Fulcrum did not
  choose (the pod gets an Event naming both);
- **checks** that what it gave out agrees: no device over 1000 milli, no whole device shared.

The kubelet still allocates ``nvidia.com/gpu`` for whole-GPU pods, so its counts stay right; the
IDs it picks are tokens (``Allocate`` only records them in ``FULCRUM_GPU_ALLOCATED``), since the
device-plugin API does not say which pod an allocation is for. A pod with GPUs but no Fulcrum
decision (another scheduler's) gets the kubelet's pick.

A malformed ``fulcrum.io/gpu-devices`` (or one naming a device the node lacks) never blocks the
container: the pod gets an Event naming the annotation, and the container the kubelet's pick, or
no GPU (``void``) for a share.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from kube import api
from kube.resources import GPU, GPU_MODEL_LABEL, QuantityError
from node.plugin import (
    Adjustment,
    AgentContext,
    CheckResult,
    ContainerView,
    DeviceSet,
    NodePlugin,
    PodView,
    Refuse,
    Severity,
)

VISIBLE = "NVIDIA_VISIBLE_DEVICES"
ALLOCATED = "FULCRUM_GPU_ALLOCATED"  # the kubelet's pick, from Allocate
FAKE_MEMORY_MIB = 16384
_DEVICE_NODE = re.compile(r"nvidia(\d+)")


def _positive(options: Mapping[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"--plugin-option gpu.{key}={raw!r}: expected a whole number")
    return int(raw)


class GpuDevices(NodePlugin):
    name = "gpu"
    description = "fulcrum.io/gpu-devices reach the container; GPUs advertised to the kubelet"
    order = 10

    def __init__(self) -> None:
        self.count = 0
        self.model = ""
        self.memory_mib = FAKE_MEMORY_MIB
        self.dev = Path("/dev")
        self.fake = False
        self.cdi = False
        self.agent: AgentContext | None = None
        self._given: dict[str, tuple[str, tuple[int, ...], int]] = {}  # container id -> use
        self._lock = threading.Lock()

    def configure(self, agent: AgentContext) -> None:
        from node.agent import options_for

        options = options_for(agent, self.name)
        self.agent = agent
        self.dev = Path(options.get("dev", "/dev"))
        self.fake = "fake" in options
        self.count = _positive(options, "fake", 0) if self.fake else self._discover()
        self.model = options.get("model", "")
        self.memory_mib = _positive(options, "memory-mib", FAKE_MEMORY_MIB)
        cdi_dirs = [Path(p) for p in options.get("cdi-dirs", "/etc/cdi:/var/run/cdi").split(":")]
        self.cdi = not self.fake and any(
            d.is_dir() and any(d.glob("nvidia*")) for d in cdi_dirs if str(d)
        )

    def _discover(self) -> int:
        if not self.dev.is_dir():
            return 0
        return sum(1 for p in self.dev.iterdir() if _DEVICE_NODE.fullmatch(p.name))

    # --- the kubelet --------------------------------------------------------------------------

    def devices(self) -> DeviceSet | None:
        if self.count == 0:
            return None
        return DeviceSet(GPU, tuple(str(i) for i in range(self.count)))

    def allocate(self, ids: Iterable[str]) -> Adjustment:
        return Adjustment(env={ALLOCATED: ",".join(ids)})

    def node_labels(self) -> Mapping[str, str]:
        return {GPU_MODEL_LABEL: self.model} if self.model and self.count else {}

    # --- the container ------------------------------------------------------------------------

    def _bad(self, pod: PodView, why: str) -> None:
        if self.agent is not None:
            self.agent.event(pod, "FulcrumBadAnnotation", why, warning=True)

    def _chosen(self, pod: PodView) -> tuple[int, ...] | None:
        try:
            devices = pod.gpu_devices
        except QuantityError as exc:
            self._bad(pod, f"{exc}; the containers get the kubelet's devices, or none")
            return None
        if devices == ():
            self._bad(pod, f"annotation {api.GPU_DEVICES} is empty; only Fulcrum writes it")
            return None
        if devices is not None and any(d >= self.count for d in devices):
            have = f"devices 0..{self.count - 1}" if self.count else "no GPUs"
            self._bad(
                pod,
                f"annotation {api.GPU_DEVICES}={','.join(map(str, devices))} names a device this "
                f"node lacks (it has {have}); the containers get the kubelet's devices, or none",
            )
            return None
        return devices

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        chosen = self._chosen(pod) if api.GPU_DEVICES in pod.annotations else None
        kubelet = container.env.get(ALLOCATED)
        if chosen is None:
            if kubelet is not None:  # another scheduler's GPU pod, or a bad annotation
                return Adjustment(env={VISIBLE: kubelet})
            if pod.gpu_milli is not None and api.GPU_DEVICES in pod.annotations:
                return Adjustment(env={VISIBLE: "void"})
            return None
        names = [str(d) for d in chosen]
        asked = container.env.get(VISIBLE)
        if asked is not None and asked != kubelet and _ids(asked) != set(names):
            raise Refuse(
                f"container {container.name!r} asks for GPU {asked} in {VISIBLE}; Fulcrum chose "
                f"{','.join(names)} ({api.GPU_DEVICES}); remove {VISIBLE} from the pod spec"
            )
        adjustment = Adjustment(
            env={VISIBLE: ",".join(names), "FULCRUM_GPU_DEVICES": ",".join(names)}
        )
        milli = pod.gpu_milli
        if milli is not None and milli < 1000:
            percent = math.ceil(milli / 10)
            memory = self.memory_mib * milli // 1000
            adjustment.env |= {
                "CUDA_DEVICE_MEMORY_LIMIT": f"{memory}m",
                "CUDA_DEVICE_SM_LIMIT": str(percent),
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent),
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory}M",
            }
        if self.cdi:
            adjustment.cdi_devices = [f"nvidia.com/gpu={n}" for n in names]
        elif not self.fake:
            adjustment.devices = [
                str(self.dev / f"nvidia{n}") for n in names if (self.dev / f"nvidia{n}").exists()
            ]
        if container.id:
            with self._lock:
                self._given[container.id] = (pod.key, chosen, milli or 1000)
        return adjustment

    def container_stopped(self, pod: PodView, container: ContainerView) -> None:
        with self._lock:
            self._given.pop(container.id, None)

    def check(self, agent: AgentContext) -> Iterable[CheckResult]:
        with self._lock:
            given = list(self._given.values())
        use: dict[int, dict[str, int]] = {}
        for pod, devices, milli in given:
            for d in devices:
                use.setdefault(d, {})[pod] = max(use.get(d, {}).get(pod, 0), milli)
        wrong = [
            f"GPU {d}: {sum(pods.values())} milli to {', '.join(sorted(pods))}"
            for d, pods in sorted(use.items())
            if sum(pods.values()) > 1000
        ]
        if wrong:
            return [CheckResult("gpu.allocation", Severity.ERROR, "; ".join(wrong))]
        kind = " (fake)" if self.fake else ""
        message = f"{self.count} GPU(s){kind}, {len(use)} in use, as Fulcrum chose"
        return [CheckResult("gpu.allocation", Severity.INFO, message, value=len(use))]


def _ids(value: str) -> set[str]:
    return {part.strip() for part in value.split(",") if part.strip()}
