"""Images for the real nodes: deterministic blobs, valid manifests, a real push, OCI archives.

The push tests run Debian's docker-registry on a free loopback port; without it they skip,
except under CI, where a missing registry is a failure.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulcrum.harness import images
from fulcrum.harness.images import Directory, File, Image, Layer, RandomFile, Symlink


def small_image(text: bytes = b"hello\n") -> Image:
    layer = Layer(
        (
            File("/etc/motd", text),
            Symlink("/etc/greeting", "motd"),
            Directory("/tmp", 0o1777),
            File("/usr/local/bin/tool", b"#!/bin/sh\n", 0o755),
        )
    )
    return Image(layers=(layer,), cmd=("sh",), labels={"a": "b"}, workdir="/tmp")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def layer_members(blob: images.Blob) -> list[tarfile.TarInfo]:
    with tarfile.open(blob.path, "r:gz") as tar:
        return tar.getmembers()


# --- building --------------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_digests(tmp_path: Path) -> None:
    with (
        images.build(small_image(), directory=tmp_path) as a,
        images.build(small_image(), directory=tmp_path) as b,
    ):
        assert a.manifest.path.read_bytes() == b.manifest.path.read_bytes()
        assert a.manifest_digest == b.manifest_digest
    with images.build(small_image(b"other\n"), directory=tmp_path) as c:
        assert c.manifest_digest != a.manifest_digest
    assert list(tmp_path.iterdir()) == []  # close() removed every build's blobs


def test_manifest_and_config_describe_the_blobs(tmp_path: Path) -> None:
    with images.build(small_image(), directory=tmp_path) as built:
        data = built.manifest.path.read_bytes()
        manifest = json.loads(data)
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert sha256(data) == built.manifest_digest and built.manifest.size == len(data)
        descriptors = [manifest["config"], *manifest["layers"]]
        for descriptor, blob in zip(descriptors, built.blobs(), strict=True):
            data = blob.path.read_bytes()
            assert descriptor == {
                "mediaType": blob.media_type,
                "digest": sha256(data),
                "size": len(data),
            }
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        config = json.loads(built.config.path.read_bytes())
        diff_ids = [sha256(gzip.decompress(b.path.read_bytes())) for b in built.layers]
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
        assert config["os"] == "linux" and config["architecture"]
        assert config["config"] == {
            "Cmd": ["sh"],
            "Env": list(Image(layers=()).env),
            "Labels": {"a": "b"},
            "WorkingDir": "/tmp",
        }


def test_layer_tars_are_sorted_owned_by_root_at_time_zero_with_parents(tmp_path: Path) -> None:
    with images.build(small_image(), directory=tmp_path) as built:
        members = layer_members(built.layers[0])
        gz_header = built.layers[0].path.read_bytes()[:10]
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names == ["etc", "etc/greeting", "etc/motd", "tmp", "usr", "usr/local", "usr/local/bin",
                     "usr/local/bin/tool"]  # fmt: skip
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    assert by_name["usr/local"].isdir() and by_name["usr/local"].mode == 0o755
    assert by_name["etc/greeting"].issym() and by_name["etc/greeting"].linkname == "motd"
    assert by_name["usr/local/bin/tool"].mode == 0o755
    assert gz_header[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_host_files_are_streamed_into_the_layer(tmp_path: Path) -> None:
    host = tmp_path / "data.bin"
    host.write_bytes(b"x" * 100_000)
    work = tmp_path / "work"
    work.mkdir()
    image = Image(layers=(Layer((File("/data", host),)),))
    with images.build(image, directory=work) as built, tarfile.open(built.layers[0].path) as tar:
        member = tar.extractfile("data")
        assert member is not None and member.read() == host.read_bytes()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((File("relative", b""),), "absolute"),
        ((File("/../etc/x", b""),), "absolute"),
        ((File("/a", b""), Directory("/a")), "twice"),
        ((File("/a", Path("/nonexistent/fulcrum-file")),), "/nonexistent/fulcrum-file"),
    ],
)
def test_bad_layer_entries_are_named(
    tmp_path: Path, entries: tuple[images.Entry, ...], message: str
) -> None:
    with pytest.raises(images.ImageError, match=message):
        images.build(Image(layers=(Layer(entries),)), directory=tmp_path)
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind


def test_padded_images_differ_by_seed_and_do_not_compress(tmp_path: Path) -> None:
    base = small_image()
    with images.build(base, directory=tmp_path) as plain:
        base_layer = plain.layers[0].digest
    digests = set()
    for seed in ("one", "two", "one"):
        with images.build(images.padded_image(base, 2, seed), directory=tmp_path) as built:
            assert len(built.layers) == 2
            assert built.layers[1].size > 2 * 2**20  # incompressible: stored, not shrunk
            assert built.layers[0].digest == base_layer
            digests.add(built.manifest_digest)
    assert len(digests) == 2


def test_random_files_are_exactly_their_size() -> None:
    image = Image(layers=(Layer((RandomFile("/r", 2**20 + 7, "s"),)),))
    with images.build(image) as built:
        (member,) = layer_members(built.layers[0])
    assert member.size == 2**20 + 7


# --- ready-made images -----------------------------------------------------------------------


def test_busybox_image_is_static_busybox_with_its_applets(tmp_path: Path) -> None:
    if not images.BUSYBOX.is_file():
        if os.environ.get("CI"):
            pytest.fail("/bin/busybox missing on CI: apt-get install busybox-static")
        pytest.skip("/bin/busybox missing: apt-get install busybox-static")
    image = images.busybox_image()
    assert image.cmd == ("sh",)
    with images.build(image, directory=tmp_path) as built:
        by_name = {m.name: m for m in layer_members(built.layers[0])}
    assert by_name["bin/busybox"].mode == 0o755
    assert by_name["bin/busybox"].size == images.BUSYBOX.stat().st_size
    for applet in ("sh", "httpd", "cat", "sleep", "wget"):
        assert by_name[f"bin/{applet}"].linkname == "busybox"
    assert by_name["tmp"].mode == 0o1777
    assert {"etc/passwd", "etc/group"} <= by_name.keys()


def test_missing_busybox_says_which_package() -> None:
    with pytest.raises(images.ImageError, match="apt-get install busybox-static"):
        images.busybox_image(Path("/nonexistent/busybox"))


def test_a_dynamically_linked_binary_is_refused() -> None:
    assert not images.is_static(Path(sys.executable))
    with pytest.raises(images.ImageError, match="dynamically linked"):
        images.pause_image(Path(sys.executable))


def test_pause_image_runs_pause_as_65535(tmp_path: Path) -> None:
    if not images.BUSYBOX.is_file():
        pytest.skip("needs a static binary to stand in for pause: apt-get install busybox-static")
    with images.build(images.pause_image(images.BUSYBOX), directory=tmp_path) as built:
        config = json.loads(built.config.path.read_bytes())["config"]
        names = [m.name for m in layer_members(built.layers[0])]
    assert config == {"Entrypoint": ["/pause"], "User": "65535:65535"}
    assert names == ["pause"]


# --- the registry ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[images.Registry]:
    if not images.DOCKER_REGISTRY.is_file():
        if os.environ.get("CI"):
            pytest.fail("docker-registry missing on CI: apt-get install docker-registry")
        pytest.skip("docker-registry missing: apt-get install docker-registry")
    running = images.start_registry(tmp_path_factory.mktemp("registry"), free_port())
    yield running
    running.stop()


def fetch(registry: images.Registry, path: str, accept: str = "") -> bytes:
    request = urllib.request.Request(f"http://{registry.address}{path}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as reply:
        data: bytes = reply.read()
        return data


def test_push_then_read_back(registry: images.Registry, tmp_path: Path) -> None:
    assert images.registry_ready(registry.address)
    with images.build(images.padded_image(small_image(), 2, "push"), directory=tmp_path) as built:
        first = images.push(built, registry.address, "harness/small", "v1")
        assert set(first.uploaded) == {b.digest for b in built.blobs()} and not first.skipped
        manifest = fetch(registry, "/v2/harness/small/manifests/v1", images.MANIFEST_TYPE)
        assert manifest == built.manifest.path.read_bytes()
        for blob in built.blobs():
            data = fetch(registry, f"/v2/harness/small/blobs/{blob.digest}")
            assert sha256(data) == blob.digest and len(data) == blob.size
        again = images.push(built, registry.address, "harness/small", "v2")
        assert not again.uploaded and set(again.skipped) == set(first.uploaded)
        assert again.manifest_digest == first.manifest_digest == built.manifest_digest
    assert fetch(registry, "/v2/harness/small/manifests/v2", images.MANIFEST_TYPE) == manifest


def test_a_second_registry_on_a_used_port_is_refused(
    registry: images.Registry, tmp_path: Path
) -> None:
    port = int(registry.address.rsplit(":", 1)[1])
    with pytest.raises(images.RegistryError, match="already in use"):
        images.start_registry(tmp_path, port)


def test_push_to_a_registry_that_is_down_says_so(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert not images.registry_ready(address)
    with (
        images.build(small_image(), directory=tmp_path) as built,
        pytest.raises(images.RegistryError) as error,
    ):
        images.push(built, address, "harness/small", "v1")
    message = str(error.value)
    assert address in message and "HEAD blob" in message and "refused" in message
    assert "fulcrum cluster status" in message


def test_push_refuses_bad_names(tmp_path: Path) -> None:
    with images.build(small_image(), directory=tmp_path) as built:
        with pytest.raises(images.RegistryError, match="repository 'Bad/Name'"):
            images.push(built, "127.0.0.1:1", "Bad/Name", "v1")
        with pytest.raises(images.RegistryError, match="tag '-x'"):
            images.push(built, "127.0.0.1:1", "ok", "-x")


def test_missing_docker_registry_says_which_package(tmp_path: Path) -> None:
    with pytest.raises(images.RegistryError, match="apt-get install docker-registry"):
        images.start_registry(tmp_path, free_port(), binary=Path("/nonexistent/docker-registry"))


def test_a_registry_that_exits_shows_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "docker-registry"
    fake.write_text("#!/bin/sh\necho 'configuration error: bad things' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(images.RegistryError, match=r"(?s)registry\.log.*bad things"):
        images.start_registry(tmp_path, free_port(), binary=fake)


# --- OCI archives ----------------------------------------------------------------------------


def test_oci_archive_is_an_image_layout_naming_the_ref(tmp_path: Path) -> None:
    ref = "registry.local:5000/harness/pause:3.10"
    with images.build(small_image(), directory=tmp_path) as built:
        path = images.oci_archive(built, ref, tmp_path / "pause.tar")
        expected = {b.digest: b.path.read_bytes() for b in (built.manifest, *built.blobs())}
    with tarfile.open(path) as tar:
        files = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": "3.10",
    }
    assert entry["digest"] in expected and entry["mediaType"] == images.MANIFEST_TYPE
    assert entry["size"] == len(expected[entry["digest"]])
    blobs = {"sha256:" + n.rsplit("/", 1)[1]: d for n, d in files.items() if n.startswith("blobs/")}
    assert blobs == expected
    assert all(sha256(data) == digest for digest, data in blobs.items())
    assert not (tmp_path / "pause.tar.partial").exists()
