"""node.ttrpc and node.nri: framing against hand-built bytes, and a plugin against a fake runtime.

The fake runtime plays containerd's side of NRI over a real unix socket: it serves the Runtime
service on mux connection 2 and calls the Plugin service on connection 1, in the order
containerd does (RegisterPlugin, Configure, Synchronize, then events). Its messages are sent in
small mux frames that cut ttrpc messages apart, as a Go peer may.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from node import nri, ttrpc
from node.plugin import Adjustment, Refuse

P = nri.PLUGIN_SERVICE


# --- framing ------------------------------------------------------------------------------


def test_ttrpc_header_and_request_bytes() -> None:
    assert (
        ttrpc.encode_message(1, ttrpc.REQUEST, b"ab")
        == bytes.fromhex("00000002000000010100") + b"ab"
    )
    request = ttrpc.REQUEST_MSG.encode({"service": "s", "method": "m", "payload": b"\x08\x01"})
    assert request == bytes.fromhex("0a017312016d1a020801")
    status = ttrpc.RESPONSE_MSG.encode({"status": {"code": 12, "message": "no"}})
    assert status == bytes.fromhex("0a06080c12026e6f")


def test_message_reader_reassembles_any_split() -> None:
    one = ttrpc.encode_message(3, ttrpc.RESPONSE, b"hello")
    two = ttrpc.encode_message(5, ttrpc.RESPONSE, b"")
    reader = ttrpc.MessageReader()
    got: list[ttrpc.Frame] = []
    for byte in one + two:  # one byte at a time
        got += reader.feed(bytes([byte]))
    assert got == [ttrpc.Frame(3, 2, 0, b"hello"), ttrpc.Frame(5, 2, 0, b"")]
    assert ttrpc.MessageReader().feed(one + two + one[:4]) == got  # and several at once


def test_message_reader_refuses_oversized_messages() -> None:
    header = ttrpc.HEADER.pack(ttrpc.MAX_MESSAGE + 1, 1, ttrpc.REQUEST, 0)
    with pytest.raises(ttrpc.ProtocolError, match="exceeds"):
        ttrpc.MessageReader().feed(header)


def _frames(framed: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(framed):
        conn, size = ttrpc.MUX_HEADER.unpack_from(framed, pos)
        out.append((conn, framed[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    return out


def test_a_message_goes_in_its_first_4096_bytes_then_the_rest() -> None:
    """As Go's bufio.Writer sends it, so that Go's 4096-byte bufio.Reader takes each frame."""
    message = bytes(range(256)) * 40  # 10240 bytes
    frames = _frames(ttrpc.mux_frames(2, message))
    assert [(conn, len(chunk)) for conn, chunk in frames] == [(2, 4096), (2, 6144)]
    assert b"".join(chunk for _, chunk in frames) == message
    assert ttrpc.mux_frames(1, b"xyz") == bytes.fromhex("0000000100000003") + b"xyz"
    assert [len(c) for _, c in _frames(ttrpc.mux_frames(1, bytes(4097)))] == [4096, 1]


# --- messages and views -------------------------------------------------------------------


def test_event_mask_bits_follow_the_event_enum() -> None:
    assert nri.event_mask({"CreateContainer"}) == 1 << 3
    assert nri.event_mask({"RunPodSandbox", "RemovePodSandbox"}) == 0b101
    with pytest.raises(ValueError, match="empty mask means all"):
        nri.event_mask(set())
    with pytest.raises(ValueError, match="Nope"):
        nri.event_mask({"Nope"})


def test_configure_response_and_register_request_bytes() -> None:
    assert nri.CONFIGURE_RESPONSE.encode({"events": 8}) == bytes.fromhex("1008")
    register = nri.REGISTER.encode({"plugin_name": "f", "plugin_idx": "50"})
    assert register == bytes.fromhex("0a016612023530")


POD = {
    "id": "sandbox1",
    "name": "web-0",
    "uid": "u-1",
    "namespace": "ns",
    "labels": {
        "app": "web",
        "io.kubernetes.pod.name": "web-0",
        "io.cri-containerd.kind": "sandbox",
    },
    "annotations": {
        "fulcrum.io/gpu-devices": "0,1",
        "io.kubernetes.cri.sandbox-id": "x",
        "kubernetes.io/config.seen": "2026-12-07T09:00:02.621601106Z",
    },
}
CONTAINER = {
    "id": "c1",
    "pod_sandbox_id": "sandbox1",
    "name": "main",
    "env": ["PATH=/bin", "A=1=2", "A=3", "EMPTY="],
    "annotations": {"io.kubernetes.cri.image-name": "reg/busybox:1"},
}


def test_views_drop_what_kubelet_and_containerd_add() -> None:
    pod = nri.pod_view(nri.POD.decode(nri.POD.encode(POD)))
    assert (pod.namespace, pod.name, pod.uid) == ("ns", "web-0", "u-1")
    assert pod.labels == {"app": "web"}
    assert pod.annotations == {"fulcrum.io/gpu-devices": "0,1"}
    assert pod.gpu_devices == (0, 1)
    container = nri.container_view(nri.CONTAINER.decode(nri.CONTAINER.encode(CONTAINER)))
    assert container.env == {"PATH": "/bin", "A": "3", "EMPTY": ""}
    assert (container.name, container.id, container.image) == ("main", "c1", "reg/busybox:1")
    with_image = {**CONTAINER, "image": {"name": "reg/other:2"}}
    assert nri.container_view(with_image).image == "reg/other:2"


def test_adjustment_message() -> None:
    assert nri.adjustment_message(None) == {}
    assert nri.adjustment_message(Adjustment()) == {}
    message = nri.adjustment_message(
        Adjustment(
            env={"X": "1"}, annotations={"a": "b"}, devices=["/dev/null"], cdi_devices=["v.com/c=0"]
        )
    )
    adjust = message["adjust"]
    assert adjust["env"] == [{"key": "X", "value": "1"}]
    assert adjust["annotations"] == {"a": "b"}
    assert adjust["cdi_devices"] == [{"name": "v.com/c=0"}]
    (null,) = adjust["linux"]["devices"]
    assert (null["path"], null["type"], null["major"], null["minor"]) == ("/dev/null", "c", 1, 3)
    assert null["file_mode"] == {"value": 0o666}
    wire = nri.CREATE_RESPONSE.encode(message)
    assert nri.CREATE_RESPONSE.decode(wire)["adjust"]["linux"]["devices"][0]["minor"] == 3
    with pytest.raises(ValueError, match="/dev/nonexistent"):
        nri.adjustment_message(Adjustment(devices=["/dev/nonexistent"]))
    with pytest.raises(ValueError, match="not a character or block"):
        nri.adjustment_message(Adjustment(devices=["/etc/hostname"]))


def test_bad_names_are_refused() -> None:
    handler = Handler()
    with pytest.raises(ValueError, match="two digits"):
        nri.NRIConnection(Path("/x"), "fulcrum", "5", handler, {"CreateContainer"})
    with pytest.raises(ValueError, match="a-zA-Z"):
        nri.NRIConnection(Path("/x"), "ful crum", "50", handler, {"CreateContainer"})


# --- against a fake runtime ---------------------------------------------------------------


class Handler:
    def __init__(self, delay: float = 0) -> None:
        self.delay = delay
        self.events: list[tuple[str, str, str | None]] = []

    async def create_container(
        self, pod: Mapping[str, Any], container: Mapping[str, Any]
    ) -> Adjustment | None:
        await asyncio.sleep(self.delay)
        view = nri.pod_view(pod)
        if view.annotations.get("refuse") == "yes":
            raise Refuse(f"pod {view.key} is refused")
        return Adjustment(env={"WHO": view.name}, annotations={"seen": "1"})

    def event(
        self, event: str, pod: Mapping[str, Any], container: Mapping[str, Any] | None
    ) -> None:
        self.events.append((event, pod["name"], container["name"] if container else None))


class SmallFrames(ttrpc.Mux):
    """The runtime's side, cutting what it sends into 7-byte frames."""

    async def send(self, conn: int, data: bytes) -> None:
        for start in range(0, len(data), 7):
            chunk = data[start : start + 7]
            self._writer.write(ttrpc.MUX_HEADER.pack(conn, len(chunk)) + chunk)
        await self._writer.drain()


class FakeRuntime:
    def __init__(self) -> None:
        self.registered: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sessions: asyncio.Queue[tuple[ttrpc.Client, ttrpc.Mux]] = asyncio.Queue()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mux = SmallFrames(reader, writer)

        async def register(payload: bytes) -> bytes:
            await self.registered.put(nri.REGISTER.decode(payload))
            return b""

        ttrpc.Server(
            mux, ttrpc.RUNTIME_SERVICE_CONN, {(nri.RUNTIME_SERVICE, "RegisterPlugin"): register}
        )
        client = ttrpc.Client(mux, ttrpc.PLUGIN_SERVICE_CONN)
        await self.sessions.put((client, mux))
        await mux.run()


@asynccontextmanager
async def runtime_and_plugin(
    tmp_path: Path, handler: Handler, events: set[str]
) -> AsyncIterator[tuple[FakeRuntime, nri.NRIConnection]]:
    runtime = FakeRuntime()
    socket = tmp_path / "nri.sock"
    server = await asyncio.start_unix_server(runtime.accept, path=str(socket))
    plugin = nri.NRIConnection(socket, "fulcrum", "50", handler, events)
    task = asyncio.get_running_loop().create_task(plugin.run())
    try:
        yield runtime, plugin
    finally:
        task.cancel()
        server.close()
        await asyncio.gather(task, return_exceptions=True)
        await server.wait_closed()


async def configure(client: ttrpc.Client, request_timeout_ms: int = 2000) -> int:
    payload = nri.CONFIGURE.encode(
        {"runtime_name": "fake", "runtime_version": "1", "request_timeout": request_timeout_ms}
    )
    reply = await client.call(P, "Configure", payload, 1)
    return int(nri.CONFIGURE_RESPONSE.decode(reply)["events"])


async def call(client: ttrpc.Client, method: str, message: dict[str, Any]) -> bytes:
    return await client.call(P, method, nri.CONTAINER_EVENT.encode(message), 2)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_a_plugin_registers_is_configured_synchronised_and_adjusts(tmp_path: Path) -> None:
    handler = Handler()
    events = {"CreateContainer", "PostStartContainer", "StopContainer", "RemovePodSandbox"}

    async def scenario() -> None:
        async with runtime_and_plugin(tmp_path, handler, events) as (runtime, plugin):
            registered = await runtime.registered.get()
            assert registered == {
                "plugin_name": "fulcrum",
                "plugin_idx": "50",
                "nri_version": "v0.12.3",
            }
            client, _ = await runtime.sessions.get()
            assert await configure(client, 1500) == nri.event_mask(events)
            assert plugin.request_timeout == 1.5
            assert plugin.runtime == "fake 1"
            more = {"pods": [POD], "containers": [CONTAINER], "more": True}
            reply = await client.call(P, "Synchronize", nri.SYNCHRONIZE.encode(more), 1)
            assert nri.SYNCHRONIZE_RESPONSE.decode(reply) == {"more": True}
            assert not plugin.ready.is_set()
            reply = await client.call(P, "Synchronize", nri.SYNCHRONIZE.encode({"pods": [POD]}), 1)
            assert not nri.SYNCHRONIZE_RESPONSE.decode(reply).get("more")
            assert plugin.ready.is_set()

            reply = await call(client, "CreateContainer", {"pod": POD, "container": CONTAINER})
            adjust = nri.CREATE_RESPONSE.decode(reply)["adjust"]
            assert adjust == {
                "env": [{"key": "WHO", "value": "web-0"}],
                "annotations": {"seen": "1"},
            }

            refused = {**POD, "annotations": {"refuse": "yes"}}
            with pytest.raises(ttrpc.TTRPCError) as caught:
                await call(client, "CreateContainer", {"pod": refused, "container": CONTAINER})
            assert caught.value.code == ttrpc.FAILED_PRECONDITION
            assert caught.value.message == "50-fulcrum: pod ns/web-0 is refused"

            assert (
                await call(client, "PostStartContainer", {"pod": POD, "container": CONTAINER})
                == b""
            )
            assert await call(client, "StopContainer", {"pod": POD, "container": CONTAINER}) == b""
            await client.call(P, "RemovePodSandbox", nri.POD_EVENT.encode({"pod": POD}), 1)
            state = {"event": nri.EVENTS["PostStartContainer"], "pod": POD, "container": CONTAINER}
            await client.call(P, "StateChange", nri.STATE_CHANGE.encode(state), 1)
            unsubscribed = {"event": nri.EVENTS["RunPodSandbox"], "pod": POD}
            await client.call(P, "StateChange", nri.STATE_CHANGE.encode(unsubscribed), 1)
            assert handler.events == [
                ("PostStartContainer", "web-0", "main"),
                ("StopContainer", "web-0", "main"),
                ("RemovePodSandbox", "web-0", None),
                ("PostStartContainer", "web-0", "main"),
            ]
            with pytest.raises(ttrpc.TTRPCError) as caught:
                await call(client, "StartContainer", {"pod": POD, "container": CONTAINER})
            assert (
                caught.value.code == ttrpc.UNIMPLEMENTED
            )  # not subscribed: the runtime's fallback

    run(scenario)


def test_a_slow_handler_is_answered_in_time_unadjusted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_and_plugin(tmp_path, Handler(delay=5), {"CreateContainer"}) as (
            runtime,
            _,
        ):
            client, _ = await runtime.sessions.get()
            await configure(client, request_timeout_ms=800)
            started = time.monotonic()
            reply = await call(client, "CreateContainer", {"pod": POD, "container": CONTAINER})
            assert reply == b""
            assert time.monotonic() - started < 0.8

    run(scenario)


def test_the_plugin_reconnects_after_the_runtime_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with runtime_and_plugin(tmp_path, Handler(), {"CreateContainer"}) as (
            runtime,
            plugin,
        ):
            await runtime.registered.get()
            client, mux = await runtime.sessions.get()
            await configure(client)
            await client.call(P, "Synchronize", nri.SYNCHRONIZE.encode({}), 1)
            assert plugin.ready.is_set()
            mux.close()  # the runtime goes away
            await runtime.registered.get()  # and the plugin is back
            while plugin.connections < 2:
                await asyncio.sleep(0.01)
            client, _ = await runtime.sessions.get()
            assert await configure(client) == nri.event_mask({"CreateContainer"})

    run(scenario)


def test_a_missing_socket_is_retried_with_backoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        socket = tmp_path / "late.sock"
        plugin = nri.NRIConnection(socket, "fulcrum", "50", Handler(), {"CreateContainer"})
        task = asyncio.get_running_loop().create_task(plugin.run())
        await asyncio.sleep(0.5)  # a few refused attempts
        runtime = FakeRuntime()
        server = await asyncio.start_unix_server(runtime.accept, path=str(socket))
        try:
            assert (await runtime.registered.get())["plugin_name"] == "fulcrum"
        finally:
            task.cancel()
            server.close()

    run(scenario)


def test_a_truncated_stream_closes_pending_calls(tmp_path: Path) -> None:
    async def scenario() -> None:
        left, right = await _socketpair()
        mux = ttrpc.Mux(*left)
        client = ttrpc.Client(mux, 2)
        reading = asyncio.get_running_loop().create_task(mux.run())
        call = asyncio.get_running_loop().create_task(client.call("s", "m", b"", 5))
        await asyncio.sleep(0.05)
        right[1].write(bytes.fromhex("0000000200000005") + b"ab")  # a frame cut short
        right[1].close()
        with pytest.raises(ConnectionError, match="closed"):
            await call
        with pytest.raises(ConnectionError, match="inside a frame"):
            await reading

    run(scenario)


async def _socketpair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return await asyncio.open_unix_connection(sock=a), await asyncio.open_unix_connection(sock=b)


def test_the_module_limits_match_go() -> None:
    assert ttrpc.MAX_MESSAGE == 4 * 1024 * 1024
    assert ttrpc.MAX_MUX_PAYLOAD == 10 + 4 * 1024 * 1024
    assert os.path.exists("/dev/null")
