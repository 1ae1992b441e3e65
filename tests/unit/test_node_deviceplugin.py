"""node.deviceplugin: the plugin's two gRPC services, called as the kubelet calls them.

The test plays the kubelet: it dials the socket the plugin made in a fake root dir's
``plugins_registry/``, asks ``GetInfo`` as the plugin watcher does, then the device manager's
calls (options, ListAndWatch, Allocate...), all with node.proto's messages.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from node import deviceplugin as dp
from node.plugin import Adjustment, DeviceSet

RESOURCE = "example.com/gpu"


@pytest.fixture
def root() -> Iterator[Path]:
    """A kubelet root dir short enough for unix socket paths (pytest's tmp_path may not be)."""
    directory = Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    (directory / dp.REGISTRY_DIR).mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class Kubelet:
    """The kubelet's side of the plugin's socket."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")

    def call(self, service: str, method: str, req: Any, resp: Any, value: Any = None) -> Any:
        stub = self.channel.unary_unary(
            f"/{service}/{method}", request_serializer=req.encode, response_deserializer=resp.decode
        )
        return stub(value or {}, timeout=5)

    def device(self, method: str, req: Any, resp: Any, value: Any = None) -> Any:
        return self.call(dp.DEVICE_SERVICE, method, req, resp, value)

    def watch(self) -> tuple[Any, queue.Queue[list[tuple[str, str]]]]:
        stub = self.channel.unary_stream(
            f"/{dp.DEVICE_SERVICE}/ListAndWatch",
            request_serializer=dp.EMPTY.encode,
            response_deserializer=dp.LIST_AND_WATCH.decode,
        )
        call = stub({})
        seen: queue.Queue[list[tuple[str, str]]] = queue.Queue()

        def read() -> None:
            try:
                for answer in call:
                    seen.put([(d["ID"], d["health"]) for d in answer.get("devices", [])])
            except grpc.RpcError:
                pass

        threading.Thread(target=read, daemon=True).start()
        return call, seen


class Devices:
    """A device list the test changes under the plugin."""

    def __init__(self, count: int) -> None:
        self.health = {str(i): True for i in range(count)}

    def __call__(self) -> list[tuple[str, bool]]:
        return list(self.health.items())


def _allocate(requests: list[list[str]]) -> list[Adjustment]:
    return [
        Adjustment(
            env={"FAKE_VISIBLE_DEVICES": ",".join(ids)},
            annotations={"example.com/ids": ",".join(ids)},
            devices=["/dev/null"],
            cdi_devices=[f"example.com/gpu={i}" for i in ids],
        )
        for ids in requests
    ]


def _plugin(root: Path, devices: Callable[[], Any], **kwargs: Any) -> dp.DevicePlugin:
    return dp.DevicePlugin(
        RESOURCE, root, devices=devices, allocate=kwargs.pop("allocate", _allocate), **kwargs
    )


def test_the_socket_is_in_the_kubelets_plugin_registry_and_answers_get_info(root: Path) -> None:
    with _plugin(root, Devices(2)) as plugin:
        assert plugin.socket == root / "plugins_registry" / "example.com_gpu.sock"
        assert plugin.socket.is_socket()
        kubelet = Kubelet(plugin.socket)
        info = kubelet.call(dp.REGISTRATION_SERVICE, "GetInfo", dp.INFO_REQUEST, dp.PLUGIN_INFO)
        assert info == {
            "type": "DevicePlugin",
            "name": RESOURCE,
            "endpoint": str(plugin.socket),
            "supported_versions": ["v1beta1"],
        }
        assert plugin.registration is None
        kubelet.call(
            dp.REGISTRATION_SERVICE,
            "NotifyRegistrationStatus",
            dp.REGISTRATION_STATUS,
            dp.REGISTRATION_STATUS_RESPONSE,
            {"plugin_registered": True},
        )
        assert plugin.wait_registered(1) == dp.Registration(True)
        assert plugin.registrations == 1
    assert not plugin.socket.exists()  # stopped: the watcher deregisters it


def test_a_refused_registration_raises_with_the_kubelets_reason(root: Path) -> None:
    with _plugin(root, Devices(1)) as plugin:
        Kubelet(plugin.socket).call(
            dp.REGISTRATION_SERVICE,
            "NotifyRegistrationStatus",
            dp.REGISTRATION_STATUS,
            dp.REGISTRATION_STATUS_RESPONSE,
            {"plugin_registered": False, "error": "bad version"},
        )
        with pytest.raises(dp.DevicePluginError, match=r"refused example\.com/gpu: bad version"):
            plugin.wait_registered(1)


def test_no_registration_in_time_names_the_root_dir(root: Path) -> None:
    with (
        _plugin(root, Devices(1)) as plugin,
        pytest.raises(dp.DevicePluginError, match=f"--root-dir {root}"),
    ):
        plugin.wait_registered(0.05)


def test_options_say_which_optional_calls_the_plugin_serves(root: Path) -> None:
    with _plugin(root, Devices(1)) as plugin:
        options = Kubelet(plugin.socket).device("GetDevicePluginOptions", dp.EMPTY, dp.OPTIONS)
        assert not options.get("pre_start_required", False)
        assert not options.get("get_preferred_allocation_available", False)
    prefer = _plugin(root, Devices(1), preferred=lambda a, m, n: a, pre_start=lambda ids: None)
    with prefer as plugin:
        options = Kubelet(plugin.socket).device("GetDevicePluginOptions", dp.EMPTY, dp.OPTIONS)
        assert options == {"pre_start_required": True, "get_preferred_allocation_available": True}


def _next(seen: queue.Queue[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return seen.get(timeout=5)


def test_list_and_watch_sends_the_list_then_each_change(root: Path) -> None:
    devices = Devices(4)
    with _plugin(root, devices, poll_interval=0.05) as plugin:
        call, seen = Kubelet(plugin.socket).watch()
        assert _next(seen) == [(str(i), "Healthy") for i in range(4)]
        devices.health["2"] = False
        assert _next(seen) == [
            ("0", "Healthy"),
            ("1", "Healthy"),
            ("2", "Unhealthy"),
            ("3", "Healthy"),
        ]
        time.sleep(0.3)
        assert seen.empty()  # nothing changed: nothing sent
        devices.health["2"] = True
        del devices.health["3"]
        plugin.refresh()
        assert _next(seen) == [("0", "Healthy"), ("1", "Healthy"), ("2", "Healthy")]
        assert plugin.streams == 1
        call.cancel()
        deadline = time.monotonic() + 3
        while plugin.streams and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plugin.streams == 0  # a kubelet that hangs up frees its stream


def test_a_second_kubelet_connection_gets_the_current_list(root: Path) -> None:
    """A restarted kubelet opens a new stream: it is sent the list at once."""
    devices = Devices(2)
    with _plugin(root, devices, poll_interval=0.05) as plugin:
        first, seen = Kubelet(plugin.socket).watch()
        _next(seen)
        first.cancel()
        devices.health["0"] = False
        plugin.refresh()
        _, again = Kubelet(plugin.socket).watch()
        assert _next(again) == [("0", "Unhealthy"), ("1", "Healthy")]


def test_stop_ends_the_stream(root: Path) -> None:
    plugin = _plugin(root, Devices(1)).start()
    call, seen = Kubelet(plugin.socket).watch()
    _next(seen)
    plugin.stop(grace=0.2)
    assert call.code() is not None  # blocks until the stream has ended: the kubelet sees EOF
    assert not plugin.socket.exists()


def test_a_device_list_that_fails_keeps_the_last_and_repeats_are_sent_once(root: Path) -> None:
    calls = {"n": 0}

    def devices() -> list[tuple[str, bool]]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("driver gone")
        return [("a", True), ("b", True), ("a", False)]

    with _plugin(root, devices, poll_interval=0.05) as plugin:
        time.sleep(0.2)
        assert plugin.devices() == [("a", True), ("b", True)]


def test_allocate_answers_each_container_with_its_adjustment(root: Path) -> None:
    with _plugin(root, Devices(4)) as plugin:
        answer = Kubelet(plugin.socket).device(
            "Allocate",
            dp.ALLOCATE_REQUEST,
            dp.ALLOCATE_RESPONSE,
            {"container_requests": [{"devices_ids": ["0", "1"]}, {"devices_ids": ["3"]}]},
        )
    first, second = answer["container_responses"]
    assert first == {
        "envs": {"FAKE_VISIBLE_DEVICES": "0,1"},
        "annotations": {"example.com/ids": "0,1"},
        "devices": [{"container_path": "/dev/null", "host_path": "/dev/null", "permissions": "rw"}],
        "cdi_devices": [{"name": "example.com/gpu=0"}, {"name": "example.com/gpu=1"}],
    }
    assert second["envs"] == {"FAKE_VISIBLE_DEVICES": "3"}


def _allocate_error(root: Path, ids: list[str], **kwargs: Any) -> grpc.RpcError:
    with _plugin(root, Devices(2), **kwargs) as plugin, pytest.raises(grpc.RpcError) as caught:
        Kubelet(plugin.socket).device(
            "Allocate",
            dp.ALLOCATE_REQUEST,
            dp.ALLOCATE_RESPONSE,
            {"container_requests": [{"devices_ids": ids}]},
        )
    return caught.value


def test_allocate_refuses_unknown_devices_and_reports_callback_failures(root: Path) -> None:
    unknown = _allocate_error(root, ["0", "7"])
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no device 7" in (unknown.details() or "")

    def broken(requests: list[list[str]]) -> list[Adjustment]:
        raise RuntimeError("no driver")

    failed = _allocate_error(root, ["0"], allocate=broken)
    assert failed.code() == grpc.StatusCode.INTERNAL
    assert "allocate failed: no driver" in (failed.details() or "")
    short = _allocate_error(root, ["0"], allocate=lambda requests: [])
    assert "0 answers for 1 containers" in (short.details() or "")


def test_preferred_allocation_is_made_valid(root: Path) -> None:
    def prefer(available: list[str], must: list[str], size: int) -> list[str]:
        return ["9", "3", "3", "2", "1", "0"]  # 9 is not offered, 3 repeats

    with _plugin(root, Devices(4), preferred=prefer) as plugin:
        answer = Kubelet(plugin.socket).device(
            "GetPreferredAllocation",
            dp.PREFERRED_REQUEST,
            dp.PREFERRED_RESPONSE,
            {
                "container_requests": [
                    {
                        "available_deviceIDs": ["0", "1", "2", "3"],
                        "must_include_deviceIDs": ["1"],
                        "allocation_size": 3,
                    }
                ]
            },
        )
    assert answer == {"container_responses": [{"deviceIDs": ["1", "3", "2"]}]}


def test_pre_start_calls_back_with_the_devices(root: Path) -> None:
    started: list[list[str]] = []
    with _plugin(root, Devices(2), pre_start=started.append) as plugin:
        Kubelet(plugin.socket).device(
            "PreStartContainer",
            dp.PRE_START_REQUEST,
            dp.PRE_START_RESPONSE,
            {"devices_ids": ["0", "1"]},
        )
    assert started == [["0", "1"]]


def test_a_vanished_socket_is_bound_again(root: Path) -> None:
    """A wiped plugins_registry: the plugin binds anew, so the watcher registers it again."""
    with _plugin(root, Devices(1), poll_interval=0.05) as plugin:
        plugin.socket.unlink()
        deadline = time.monotonic() + 5
        while not plugin.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = Kubelet(plugin.socket).call(
            dp.REGISTRATION_SERVICE, "GetInfo", dp.INFO_REQUEST, dp.PLUGIN_INFO
        )
        assert info["name"] == RESOURCE


@pytest.mark.parametrize(
    "resource", ["gpu", "kubernetes.io/gpu", "a.kubernetes.io/x", "x/y", "a.b/"]
)
def test_resource_names_the_kubelet_would_refuse_are_refused_at_once(
    root: Path, resource: str
) -> None:
    with pytest.raises(dp.DevicePluginError, match="extended resource name"):
        dp.DevicePlugin(resource, root, devices=Devices(1), allocate=_allocate)


def test_a_missing_registry_dir_and_a_long_path_name_the_fix(root: Path) -> None:
    with pytest.raises(dp.DevicePluginError, match="nowhere does not exist: is it the kubelet"):
        _plugin(root / "nowhere", Devices(1)).start()
    (root / dp.REGISTRY_DIR).rmdir()  # a kubelet not started yet: the plugin makes the dir
    with _plugin(root, Devices(1)) as plugin:
        assert plugin.socket.is_socket()
    deep = root / ("d" * 100)
    (deep / dp.REGISTRY_DIR).mkdir(parents=True)
    with pytest.raises(dp.DevicePluginError, match="longer than a unix socket"):
        _plugin(deep, Devices(1)).start()


def test_device_set_and_wire_encoding() -> None:
    assert dp.device_list(DeviceSet("a.b/c", ("0", "1"), frozenset({"1"}))) == [
        ("0", False),
        ("1", True),
    ]
    assert dp.device_list(DeviceSet("a.b/c", ("0",))) == [("0", True)]
    # Device{ID: "0", health: "Healthy"}: field 1 and 2, length-delimited
    assert dp.DEVICE.encode({"ID": "0", "health": "Healthy"}) == b"\x0a\x010\x12\x07Healthy"
