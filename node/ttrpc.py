"""ttrpc, and NRI's multiplexing of two ttrpc connections over one unix socket (asyncio).

ttrpc (github.com/containerd/ttrpc, PROTOCOL.md) is containerd's small RPC: over a byte
stream, each message is a 10-byte header (uint32 BE payload length, uint32 BE stream id, uint8
type: 1 request, 2 response, 3 data; uint8 flags) and a protobuf payload of at most 4 MiB. A
unary call is a ``Request`` (service, method, payload bytes, timeout) on a new odd stream id
from the client and one ``Response`` (a ``google.rpc.Status`` and the payload) on the same id.
NRI uses unary calls only; stream data (type 3) is not answered.

NRI (github.com/containerd/nri, pkg/net/multiplex) runs both directions of its plugin
protocol over one socket: frames of uint32 BE logical connection id, uint32 BE length, then
that many bytes. Connection 1 carries the plugin's service (the runtime calls the plugin: the
plugin is the ttrpc server), connection 2 the runtime's (the plugin calls RegisterPlugin: the
plugin is the client). A logical connection is a byte stream: one ttrpc message may span
frames and a frame may hold several messages, so the reader reassembles per connection.

What we send must suit Go's reader (multiplex.mux + ttrpc's channel): the mux hands a
logical connection one whole frame per ``Read`` and fails with ENOMEM when the frame does not
fit the caller's buffer, and ttrpc reads through a 4096-byte ``bufio.Reader``, which reads a
frame into its own empty buffer (so at most 4096 bytes) unless the caller asks for 4096 bytes
or more, in which case it reads straight into the caller's slice. So each ttrpc message goes in
two frames at most, as Go's own ``bufio.Writer`` sends it: its first 4096 bytes, then the rest
(read straight into the payload's slice, exactly its size, or into the empty buffer when under
4096 bytes). Cutting every message into 4096-byte frames would be read correctly too, but a
1 MiB message would then overflow the runtime's queue of 256 frames per connection, which
closes the whole socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from node.proto import DecodeError, Field, Message

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")  # length, stream id, type, flags
MUX_HEADER = struct.Struct(">II")  # connection id, length
MAX_MESSAGE = 4 << 20  # ttrpc's messageLengthMax
MAX_FRAME = 4096  # Go ttrpc's bufio.Reader size: see the module docstring
MAX_MUX_PAYLOAD = HEADER.size + MAX_MESSAGE  # the most a peer may put in one mux frame

REQUEST, RESPONSE, DATA = 1, 2, 3
PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN = 1, 2

# google.rpc.Code values ttrpc uses.
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 9, 12, 13, 14

KEY_VALUE = Message("ttrpc.KeyValue", Field(1, "key"), Field(2, "value"))
REQUEST_MSG = Message(
    "ttrpc.Request",
    Field(1, "service"),
    Field(2, "method"),
    Field(3, "payload", "bytes"),
    Field(4, "timeout_nano", "int"),
    Field(5, "metadata", KEY_VALUE, repeated=True),
)
STATUS = Message("google.rpc.Status", Field(1, "code", "int"), Field(2, "message"))
RESPONSE_MSG = Message("ttrpc.Response", Field(1, "status", STATUS), Field(2, "payload", "bytes"))


class ProtocolError(Exception):
    """The peer broke the framing (oversized message, bad protobuf): the connection is done."""


class TTRPCError(Exception):
    """A call's non-OK status: from the peer (a client's view) or to send (a handler's)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"ttrpc status {self.code}: {self.message}"


@dataclass(frozen=True)
class Frame:
    """One ttrpc message."""

    stream: int
    type: int
    flags: int
    payload: bytes


def encode_message(stream: int, kind: int, payload: bytes, flags: int = 0) -> bytes:
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError(f"ttrpc message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(payload), stream, kind, flags) + payload


class MessageReader:
    """Reassembles ttrpc messages from a logical connection's bytes, however they arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        out: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            length, stream, kind, flags = HEADER.unpack_from(self._buffer)
            if length > MAX_MESSAGE:
                raise ProtocolError(f"ttrpc message of {length} bytes exceeds {MAX_MESSAGE}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            out.append(Frame(stream, kind, flags, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return out


def mux_frames(conn: int, message: bytes, first: int = MAX_FRAME) -> bytes:
    """One ttrpc ``message`` for logical connection ``conn`` as mux frames: its first
    ``first`` bytes, then the rest (see the module docstring for why)."""
    out = bytearray()
    chunks = [message[:first]]
    chunks += [
        message[i : i + MAX_MUX_PAYLOAD] for i in range(first, len(message), MAX_MUX_PAYLOAD)
    ]
    for chunk in chunks:
        out += MUX_HEADER.pack(conn, len(chunk)) + chunk
    return bytes(out)


Endpoint = Callable[[Frame], None]


class Mux:
    """One NRI socket: frames in, routed to each logical connection's endpoint; frames out.

    ``run()`` reads until the peer closes (or a protocol error) and then closes every
    endpoint. Writes are synchronous ``transport.write`` calls, so one message's frames are
    never interleaved with another's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._readers: dict[int, MessageReader] = {}
        self._endpoints: dict[int, Endpoint] = {}
        self._closers: list[Callable[[BaseException], None]] = []
        self.closed = asyncio.Event()

    def attach(
        self, conn: int, endpoint: Endpoint, on_close: Callable[[BaseException], None]
    ) -> None:
        self._readers[conn] = MessageReader()
        self._endpoints[conn] = endpoint
        self._closers.append(on_close)

    async def send(self, conn: int, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("the NRI connection is closed")
        self._writer.write(mux_frames(conn, data))
        await self._writer.drain()

    async def run(self) -> None:
        reason: BaseException = ConnectionError("the runtime closed the NRI connection")
        try:
            while True:
                try:
                    header = await self._reader.readexactly(MUX_HEADER.size)
                except asyncio.IncompleteReadError:
                    return
                conn, length = MUX_HEADER.unpack(header)
                if length > MAX_MUX_PAYLOAD:
                    raise ProtocolError(f"mux frame of {length} bytes exceeds {MAX_MUX_PAYLOAD}")
                try:
                    payload = await self._reader.readexactly(length)
                except asyncio.IncompleteReadError as exc:
                    raise ConnectionError(
                        f"the NRI connection closed inside a frame: {exc}"
                    ) from exc
                self._route(conn, payload)
        except (ProtocolError, OSError) as exc:
            reason = exc
            raise
        finally:
            self.close(reason)

    def _route(self, conn: int, payload: bytes) -> None:
        reader = self._readers.get(conn)
        if reader is None:
            log.debug("nri: %d bytes for unknown mux connection %d dropped", len(payload), conn)
            return
        for frame in reader.feed(payload):
            self._endpoints[conn](frame)

    def close(self, reason: BaseException | None = None) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._writer.close()
        why = reason or ConnectionError("the NRI connection was closed")
        for closer in self._closers:
            closer(why)


Handler = Callable[[bytes], Awaitable[bytes]]


class Server:
    """The ttrpc server on one logical connection: ``(service, method)`` -> handler.

    Each request runs in its own task (the runtime may have several calls in flight). A
    handler's :class:`TTRPCError` becomes that status; any other exception becomes UNKNOWN
    with the exception's text, so the runtime reports the plugin's message."""

    def __init__(self, mux: Mux, conn: int, handlers: dict[tuple[str, str], Handler]) -> None:
        self._mux = mux
        self._conn = conn
        self._handlers = handlers
        self._tasks: set[asyncio.Task[None]] = set()
        mux.attach(conn, self._on_frame, self._on_close)

    def _on_frame(self, frame: Frame) -> None:
        if frame.type != REQUEST:
            log.debug("nri: ttrpc type %d on stream %d ignored", frame.type, frame.stream)
            return
        try:
            request = REQUEST_MSG.decode(frame.payload)
        except DecodeError as exc:
            raise ProtocolError(f"bad ttrpc request: {exc}") from exc
        task = asyncio.get_running_loop().create_task(self._serve(frame.stream, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: int, request: dict[str, object]) -> None:
        service, method = str(request.get("service", "")), str(request.get("method", ""))
        handler = self._handlers.get((service, method))
        response: dict[str, object]
        try:
            if handler is None:
                raise TTRPCError(UNIMPLEMENTED, f"{service}/{method} is not implemented")
            payload = request.get("payload", b"")
            assert isinstance(payload, bytes)
            response = {"payload": await handler(payload)}
        except TTRPCError as exc:
            response = {"status": {"code": exc.code, "message": exc.message}}
        except Exception as exc:
            log.exception("nri: %s/%s failed", service, method)
            response = {"status": {"code": UNKNOWN, "message": str(exc) or type(exc).__name__}}
        with contextlib.suppress(ConnectionError):
            await self._mux.send(
                self._conn, encode_message(stream, RESPONSE, RESPONSE_MSG.encode(response))
            )

    def _on_close(self, reason: BaseException) -> None:
        for task in list(self._tasks):
            task.cancel()


class Client:
    """The ttrpc client on one logical connection: unary calls, odd stream ids from 1."""

    def __init__(self, mux: Mux, conn: int) -> None:
        self._mux = mux
        self._conn = conn
        self._next = 1
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._closed: BaseException | None = None
        mux.attach(conn, self._on_frame, self._on_close)

    async def call(self, service: str, method: str, payload: bytes, timeout: float) -> bytes:
        """The response's payload; raises :class:`TTRPCError` for a non-OK status,
        ``TimeoutError`` after ``timeout`` seconds, ``ConnectionError`` when closed."""
        if self._closed is not None:
            raise ConnectionError(f"ttrpc connection closed: {self._closed}")
        stream, self._next = self._next, self._next + 2
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream] = future
        request = {
            "service": service,
            "method": method,
            "payload": payload,
            "timeout_nano": int(timeout * 1e9),
        }
        try:
            await self._mux.send(
                self._conn, encode_message(stream, REQUEST, REQUEST_MSG.encode(request))
            )
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(stream, None)

    def _on_frame(self, frame: Frame) -> None:
        future = self._pending.get(frame.stream)
        if frame.type != RESPONSE or future is None or future.done():
            log.debug("nri: ttrpc type %d on stream %d ignored", frame.type, frame.stream)
            return
        try:
            response = RESPONSE_MSG.decode(frame.payload)
        except DecodeError as exc:
            future.set_exception(ProtocolError(f"bad ttrpc response: {exc}"))
            return
        status = response.get("status", {})
        if status.get("code", OK) != OK:
            future.set_exception(TTRPCError(status["code"], status.get("message", "")))
        else:
            future.set_result(response.get("payload", b""))

    def _on_close(self, reason: BaseException) -> None:
        self._closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"ttrpc connection closed: {reason}"))
