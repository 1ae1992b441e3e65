"""A small CRI client (``runtime.v1``) over grpcio: the image service and the runtime's version.

The node agent pulls images ahead of a pod (pre-pull), asks whether one is present, and checks
which runtime the node runs; the kubelet's own CRI connection is not reachable from a plugin,
so the agent dials the runtime's socket itself (containerd serves CRI on its main gRPC socket,
in its ``k8s.io`` namespace, which is what the kubelet sees).

Messages follow ``k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`` (fields by number, decoded
by :mod:`node.proto`). Errors are :class:`CRIError` subclasses naming the socket or the image:
:class:`RuntimeUnavailable` (no socket, nothing listening, the call timed out) and
:class:`ImageNotFound` (the registry has no such image). containerd answers ``ImageStatus``
for an absent image with an empty status, which :meth:`CRIClient.image_status` returns as None.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from node.proto import Field, Message

IMAGE_SERVICE = "runtime.v1.ImageService"
RUNTIME_SERVICE = "runtime.v1.RuntimeService"
CRI_VERSION = "v1"  # VersionRequest.version: the kubelet's CRI API version

VERSION_REQUEST = Message("VersionRequest", Field(1, "version"))
VERSION_RESPONSE = Message(
    "VersionResponse",
    Field(1, "version"),
    Field(2, "runtime_name"),
    Field(3, "runtime_version"),
    Field(4, "runtime_api_version"),
)
IMAGE_SPEC = Message(
    "ImageSpec",
    Field(1, "image"),
    Field(2, "annotations", map=("string", "string")),
    Field(18, "user_specified_image"),
    Field(19, "runtime_handler"),
)
AUTH_CONFIG = Message(
    "AuthConfig",
    Field(1, "username"),
    Field(2, "password"),
    Field(3, "auth"),
    Field(4, "server_address"),
    Field(5, "identity_token"),
    Field(6, "registry_token"),
)
INT64_VALUE = Message("Int64Value", Field(1, "value", "int"))
IMAGE = Message(
    "Image",
    Field(1, "id"),
    Field(2, "repo_tags", repeated=True),
    Field(3, "repo_digests", repeated=True),
    Field(4, "size", "uint"),
    Field(5, "uid", INT64_VALUE),
    Field(6, "username"),
    Field(7, "spec", IMAGE_SPEC),
    Field(8, "pinned", "bool"),
)
# sandbox_config (3) is left out: a pull outside any pod sends none
PULL_REQUEST = Message(
    "PullImageRequest", Field(1, "image", IMAGE_SPEC), Field(2, "auth", AUTH_CONFIG)
)
PULL_RESPONSE = Message("PullImageResponse", Field(1, "image_ref"))
STATUS_REQUEST = Message(
    "ImageStatusRequest", Field(1, "image", IMAGE_SPEC), Field(2, "verbose", "bool")
)
STATUS_RESPONSE = Message(
    "ImageStatusResponse", Field(1, "image", IMAGE), Field(2, "info", map=("string", "string"))
)
IMAGE_FILTER = Message("ImageFilter", Field(1, "image", IMAGE_SPEC))
LIST_REQUEST = Message("ListImagesRequest", Field(1, "filter", IMAGE_FILTER))
LIST_RESPONSE = Message("ListImagesResponse", Field(1, "images", IMAGE, repeated=True))
REMOVE_REQUEST = Message("RemoveImageRequest", Field(1, "image", IMAGE_SPEC))
REMOVE_RESPONSE = Message("RemoveImageResponse")


class CRIError(RuntimeError):
    """A CRI call failed; the message names the socket or image and the fix."""


class RuntimeUnavailable(CRIError):
    """No runtime answers on the socket (missing, refused, or too slow)."""


class ImageNotFound(CRIError):
    """The image is not in its registry (pull) or not on the node (status, remove)."""


@dataclass(frozen=True)
class ImageInfo:
    id: str  # the image's config digest, "sha256:..."
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int  # bytes, as the runtime counts them (containerd: the compressed layers)
    pinned: bool = False

    @classmethod
    def of(cls, image: Mapping[str, Any]) -> ImageInfo:
        return cls(
            id=image.get("id", ""),
            repo_tags=tuple(image.get("repo_tags", ())),
            repo_digests=tuple(image.get("repo_digests", ())),
            size=int(image.get("size", 0)),
            pinned=bool(image.get("pinned", False)),
        )


@dataclass(frozen=True)
class Pulled:
    image_ref: str  # what the runtime resolved the image to (containerd: its ID)
    seconds: float


@dataclass(frozen=True)
class RuntimeVersion:
    runtime_name: str  # "containerd"
    runtime_version: str  # "v2.4.2"
    runtime_api_version: str  # "v1"
    version: str = ""  # the kubelet API version the runtime answered to


@dataclass(frozen=True)
class Auth:
    """Registry credentials for one pull (``AuthConfig``); none for an open registry."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""


class CRIClient:
    """CRI calls to the runtime listening on ``socket`` (a path, or ``unix://`` + path)."""

    def __init__(self, socket: Path | str, *, timeout: float = 10.0) -> None:
        text = str(socket)
        self.socket = Path(text.removeprefix("unix://"))
        self.timeout = timeout
        self._channel: Any = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the runtime service ----------------------------------------------------------------

    def version(self) -> RuntimeVersion:
        answer = self._call(
            RUNTIME_SERVICE, "Version", VERSION_REQUEST, VERSION_RESPONSE, {"version": CRI_VERSION}
        )
        return RuntimeVersion(
            runtime_name=answer.get("runtime_name", ""),
            runtime_version=answer.get("runtime_version", ""),
            runtime_api_version=answer.get("runtime_api_version", ""),
            version=answer.get("version", ""),
        )

    # --- the image service ------------------------------------------------------------------

    def pull_image(self, image: str, *, auth: Auth | None = None, timeout: float = 300) -> Pulled:
        """Pull ``image`` into the runtime's store; the reference it resolved to and the time
        the pull took. Raises :class:`ImageNotFound` when the registry has no such image."""
        request: dict[str, Any] = {"image": {"image": image}}
        if auth is not None:
            request["auth"] = {k: v for k, v in vars(auth).items() if v}
        start = time.monotonic()
        answer = self._call(
            IMAGE_SERVICE, "PullImage", PULL_REQUEST, PULL_RESPONSE, request, timeout, image=image
        )
        return Pulled(answer.get("image_ref", ""), time.monotonic() - start)

    def image_status(self, image: str) -> ImageInfo | None:
        """The image as the runtime has it, or None when it is not on the node."""
        answer = self._call(
            IMAGE_SERVICE,
            "ImageStatus",
            STATUS_REQUEST,
            STATUS_RESPONSE,
            {"image": {"image": image}},
            image=image,
        )
        found = answer.get("image")
        return ImageInfo.of(found) if found and found.get("id") else None

    def image_present(self, image: str) -> bool:
        return self.image_status(image) is not None

    def list_images(self, image: str | None = None) -> list[ImageInfo]:
        """Every image on the node, or those matching ``image`` (the runtime's filter)."""
        request = {"filter": {"image": {"image": image}}} if image else {}
        answer = self._call(IMAGE_SERVICE, "ListImages", LIST_REQUEST, LIST_RESPONSE, request)
        return [ImageInfo.of(i) for i in answer.get("images", [])]

    def remove_image(self, image: str, *, missing_ok: bool = True) -> None:
        """Remove ``image`` from the node. CRI's remove succeeds on an absent image; with
        ``missing_ok=False`` that raises :class:`ImageNotFound` instead."""
        if not missing_ok and self.image_status(image) is None:
            raise ImageNotFound(f"image {image} is not on the runtime at {self.socket}")
        self._call(
            IMAGE_SERVICE,
            "RemoveImage",
            REMOVE_REQUEST,
            REMOVE_RESPONSE,
            {"image": {"image": image}},
            image=image,
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _stub(self, service: str, method: str, request: Message, response: Message) -> Any:
        if not self.socket.exists():
            raise RuntimeUnavailable(
                f"no CRI socket at {self.socket}: is the container runtime (containerd) "
                "running, and is this its socket (its config's [grpc] address)?"
            )
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", 64 << 20)],
            )
        return self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=request.encode,
            response_deserializer=response.decode,
        )

    def _call(
        self,
        service: str,
        method: str,
        request: Message,
        response: Message,
        values: Mapping[str, Any],
        timeout: float | None = None,
        *,
        image: str = "",
    ) -> dict[str, Any]:
        stub = self._stub(service, method, request, response)
        try:
            answer: dict[str, Any] = stub(values, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc, method, image) from None
        return answer

    def _error(self, exc: Any, method: str, image: str) -> CRIError:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
        what = f"{method}{f' {image}' if image else ''} on {self.socket}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return RuntimeUnavailable(
                f"{what}: the runtime does not answer ({details}); is containerd running?"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RuntimeUnavailable(f"{what}: no answer in time ({details})")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return CRIError(
                f"{what}: the runtime does not serve CRI runtime.v1 ({details}); "
                "is containerd's CRI plugin enabled?"
            )
        if image and (code == grpc.StatusCode.NOT_FOUND or "not found" in details.lower()):
            return ImageNotFound(f"{what}: image {image} not found ({details})")
        return CRIError(f"{what}: {code.name if code else 'error'}: {details}")
