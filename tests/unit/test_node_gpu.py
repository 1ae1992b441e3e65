"""node.gpu: the devices Fulcrum chose reach the container; conflicts are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.conformance import FakeContext, check_node_plugin
from node.gpu import GpuDevices
from node.plugin import ContainerView, PodView, Refuse, Severity


def plugin(**options: str) -> tuple[GpuDevices, FakeContext]:
    context = FakeContext(options={f"gpu.{k}": v for k, v in options.items()})
    gpu = GpuDevices()
    gpu.configure(context)
    return gpu, context


def pod(name: str = "p", **annotations: str) -> PodView:
    return PodView("default", name, f"uid-{name}", annotations=annotations)


APP = ContainerView("app", "c1")


def test_fake_gpus_are_advertised_with_their_model() -> None:
    gpu, _ = plugin(fake="4", model="A100")
    devices = gpu.devices()
    assert devices is not None and devices.ids == ("0", "1", "2", "3")
    assert devices.resource == "nvidia.com/gpu"
    assert gpu.node_labels() == {"nvidia.com/gpu.product": "A100"}
    assert plugin()[0].devices() is None  # no /dev/nvidiaN, no fake


def test_whole_gpus_get_exactly_fulcrums_devices() -> None:
    gpu, _ = plugin(fake="4")
    kubelet = ContainerView("app", "c1", env={"FULCRUM_GPU_ALLOCATED": "0,1"})
    got = gpu.create_container(pod(**{"fulcrum.io/gpu-devices": "2,3"}), kubelet)
    assert got is not None
    assert got.env["NVIDIA_VISIBLE_DEVICES"] == "2,3" == got.env["FULCRUM_GPU_DEVICES"]
    assert "CUDA_DEVICE_SM_LIMIT" not in got.env
    assert got.devices == [] and got.cdi_devices == []  # fake: no device nodes


def test_a_share_gets_its_device_and_its_limits() -> None:
    gpu, _ = plugin(fake="2", **{"memory-mib": "16000"})
    share = pod(**{"fulcrum.io/gpu-devices": "1", "fulcrum.io/gpu-milli": "250"})
    got = gpu.create_container(share, APP)
    assert got is not None
    assert got.env["NVIDIA_VISIBLE_DEVICES"] == "1"
    assert got.env["CUDA_DEVICE_MEMORY_LIMIT"] == "4000m"
    assert got.env["CUDA_DEVICE_SM_LIMIT"] == "25"
    assert got.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert got.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=4000M"


def test_a_container_asking_for_another_device_is_refused() -> None:
    gpu, _ = plugin(fake="4")
    asks = ContainerView("app", "c1", env={"NVIDIA_VISIBLE_DEVICES": "2"})
    with pytest.raises(Refuse, match=r"asks for GPU 2 .* Fulcrum chose 0"):
        gpu.create_container(pod(**{"fulcrum.io/gpu-devices": "0"}), asks)
    same = ContainerView("app", "c1", env={"NVIDIA_VISIBLE_DEVICES": "0"})
    assert gpu.create_container(pod(**{"fulcrum.io/gpu-devices": "0"}), same) is not None


@pytest.mark.parametrize("bad", ["x", "1,1", "7", ""])
def test_a_bad_annotation_is_an_event_never_a_blocked_container(bad: str) -> None:
    gpu, context = plugin(fake="4")
    got = gpu.create_container(pod(**{"fulcrum.io/gpu-devices": bad}), APP)
    assert got is None
    [(_, reason, message)] = context.events
    assert reason == "FulcrumBadAnnotation" and "fulcrum.io/gpu-devices" in message
    kubelet = ContainerView("app", "c2", env={"FULCRUM_GPU_ALLOCATED": "3"})
    got = gpu.create_container(pod(**{"fulcrum.io/gpu-devices": bad}), kubelet)
    assert got is not None and got.env == {"NVIDIA_VISIBLE_DEVICES": "3"}


def test_pods_without_gpus_are_left_alone() -> None:
    gpu, _ = plugin(fake="4")
    assert gpu.create_container(pod(), APP) is None


def test_the_check_finds_an_over_shared_device() -> None:
    gpu, context = plugin(fake="2")
    for name, milli in (("a", "600"), ("b", "600")):
        annotations = {"fulcrum.io/gpu-devices": "1", "fulcrum.io/gpu-milli": milli}
        gpu.create_container(pod(name, **annotations), ContainerView("app", f"c-{name}"))
    [result] = gpu.check(context)
    assert result.severity is Severity.ERROR
    assert "GPU 1: 1200 milli to default/a, default/b" in result.message
    gpu.container_stopped(pod("b"), ContainerView("app", "c-b"))
    [result] = gpu.check(context)
    assert result.severity is Severity.INFO and result.value == 1


def test_the_gpu_plugin_conforms() -> None:
    check_node_plugin(GpuDevices, options={"gpu.fake": "4", "gpu.model": "T4"})
    check_node_plugin(GpuDevices)


def test_the_ipam_check_names_addresses_no_pod_claims(tmp_path: Path) -> None:
    from node.ipam_check import IpamAgreement

    context = FakeContext(options={"ipam.data-dir": str(tmp_path)})
    ipam = IpamAgreement()
    ipam.configure(context)
    for name in ("10.244.128.5", "10.244.128.6", "lock"):
        (tmp_path / name).write_text("c1\neth0\n/netns\n")
    ipam.pod_changed(pod("a", **{"fulcrum.io/assigned-ip": "10.244.128.5"}), context)
    [result] = ipam.check(context)
    assert result.severity is Severity.WARN and "10.244.128.6" in result.message
    ipam.pod_changed(pod("b", **{"fulcrum.io/assigned-ip": "10.244.128.6"}), context)
    [result] = ipam.check(context)
    assert result.severity is Severity.INFO and result.value == 2
    check_node_plugin(IpamAgreement, options={"ipam.data-dir": str(tmp_path)})
