"""node.cri: the CRI client against an in-process fake runtime (a grpc server with node.cri's
messages), and its errors for a missing socket, a runtime that is down and an unknown image."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from node import cri

REF = "127.0.0.1:5000/app:v1"
IMAGE_ID = "sha256:" + "ab" * 32


class FakeRuntime:
    """containerd's CRI as far as the client uses it: images by reference, pulls recorded."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.pulls: list[dict[str, Any]] = []
        self.registry = {REF: 2_000_000}  # what a pull can find: reference -> size

    def version(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        assert request == {"version": "v1"}
        return {
            "version": "0.1.0",
            "runtime_name": "containerd",
            "runtime_version": "v2.4.2",
            "runtime_api_version": "v1",
        }

    def pull(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        self.pulls.append(request)
        ref = request["image"]["image"]
        if ref not in self.registry:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f'failed to pull and unpack image "{ref}": failed to resolve reference: not found',
            )
        self.images[ref] = {
            "id": IMAGE_ID,
            "repo_tags": [ref],
            "repo_digests": [ref.split(":")[0] + "@sha256:" + "cd" * 32],
            "size": self.registry[ref],
        }
        return {"image_ref": IMAGE_ID}

    def status(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        found = self.images.get(request["image"]["image"])
        return {"image": found} if found else {}  # containerd: absent is an empty answer

    def list(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        wanted = request.get("filter", {}).get("image", {}).get("image")
        return {"images": [i for ref, i in self.images.items() if wanted in (None, ref)]}

    def remove(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        self.images.pop(request["image"]["image"], None)
        return {}

    def handlers(self) -> tuple[Any, Any]:
        unary = grpc.unary_unary_rpc_method_handler
        images = grpc.method_handlers_generic_handler(
            cri.IMAGE_SERVICE,
            {
                "PullImage": unary(self.pull, cri.PULL_REQUEST.decode, cri.PULL_RESPONSE.encode),
                "ImageStatus": unary(
                    self.status, cri.STATUS_REQUEST.decode, cri.STATUS_RESPONSE.encode
                ),
                "ListImages": unary(self.list, cri.LIST_REQUEST.decode, cri.LIST_RESPONSE.encode),
                "RemoveImage": unary(
                    self.remove, cri.REMOVE_REQUEST.decode, cri.REMOVE_RESPONSE.encode
                ),
            },
        )
        runtime = grpc.method_handlers_generic_handler(
            cri.RUNTIME_SERVICE,
            {
                "Version": unary(
                    self.version, cri.VERSION_REQUEST.decode, cri.VERSION_RESPONSE.encode
                )
            },
        )
        return images, runtime


@pytest.fixture
def directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(directory: Path) -> Iterator[tuple[FakeRuntime, Path]]:
    fake = FakeRuntime()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(fake.handlers())
    sock = directory / "containerd.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    yield fake, sock
    server.stop(0).wait()


def test_version_names_the_runtime(runtime: tuple[FakeRuntime, Path]) -> None:
    with cri.CRIClient(f"unix://{runtime[1]}") as client:
        assert client.version() == cri.RuntimeVersion("containerd", "v2.4.2", "v1", "0.1.0")


def test_pull_then_status_list_and_remove(runtime: tuple[FakeRuntime, Path]) -> None:
    fake, sock = runtime
    with cri.CRIClient(sock) as client:
        assert client.image_status(REF) is None
        assert not client.image_present(REF)
        pulled = client.pull_image(REF)
        assert pulled.image_ref == IMAGE_ID
        assert 0 <= pulled.seconds < 5
        assert fake.pulls == [{"image": {"image": REF}}]  # no auth for an open registry
        status = client.image_status(REF)
        assert status is not None
        assert (status.id, status.size, status.repo_tags) == (IMAGE_ID, 2_000_000, (REF,))
        assert [i.id for i in client.list_images()] == [IMAGE_ID]
        assert [i.id for i in client.list_images(REF)] == [IMAGE_ID]
        assert client.list_images("other:v1") == []
        client.remove_image(REF)
        assert not client.image_present(REF)
        client.remove_image(REF)  # CRI's remove of an absent image succeeds
        with pytest.raises(cri.ImageNotFound, match=f"image {REF} is not on the runtime"):
            client.remove_image(REF, missing_ok=False)


def test_pull_sends_only_the_credentials_given(runtime: tuple[FakeRuntime, Path]) -> None:
    fake, sock = runtime
    with cri.CRIClient(sock) as client:
        client.pull_image(REF, auth=cri.Auth(username="u", password="p"))
    assert fake.pulls[-1]["auth"] == {"username": "u", "password": "p"}


def test_an_image_the_registry_lacks_raises_image_not_found(
    runtime: tuple[FakeRuntime, Path],
) -> None:
    with cri.CRIClient(runtime[1]) as client, pytest.raises(cri.ImageNotFound) as caught:
        client.pull_image("127.0.0.1:5000/nothing:v9")
    message = str(caught.value)
    assert "PullImage 127.0.0.1:5000/nothing:v9" in message
    assert str(runtime[1]) in message


def test_a_missing_socket_says_so(directory: Path) -> None:
    client = cri.CRIClient(directory / "nothing.sock")
    with pytest.raises(cri.RuntimeUnavailable, match=r"no CRI socket at .*nothing\.sock"):
        client.version()


def test_a_socket_nobody_listens_on_is_a_runtime_down(directory: Path) -> None:
    path = directory / "dead.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # the file of a runtime that died without removing it
    dead.close()
    with (
        cri.CRIClient(path, timeout=2) as client,
        pytest.raises(cri.RuntimeUnavailable, match=r"dead\.sock.*is containerd running"),
    ):
        client.image_status(REF)


def test_a_runtime_without_cri_is_named(directory: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    sock = directory / "bare.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        with (
            cri.CRIClient(sock) as client,
            pytest.raises(cri.CRIError, match=r"does not serve CRI runtime\.v1"),
        ):
            client.version()
    finally:
        server.stop(0).wait()


def test_wire_encoding_of_a_pull_request() -> None:
    # PullImageRequest{image: ImageSpec{image: "a"}}: field 1 holding field 1
    assert cri.PULL_REQUEST.encode({"image": {"image": "a"}}) == b"\x0a\x03\x0a\x01a"
    assert cri.IMAGE_SPEC.encode({"runtime_handler": "x"}) == b"\x9a\x01\x01x"  # field 19
