"""Container images for the harness's real nodes, built here and served by a local registry.

No public registry is reachable from the machines Fulcrum's harness runs on, so every image a
real node runs (busybox for workloads, the sandbox's pause, padded images for the pull
benchmark) is built by this module from files on the host, without buildah or podman: layers
are deterministic gzip tars (mtime 0, uid/gid 0, sorted entries), so the same inputs give the
same digests and a rebuild does not make the nodes pull again.

The registry is Debian's ``docker-registry`` (distribution 2.8.2), listening on loopback over
plain HTTP: nothing leaves the machine, so TLS would only add a CA for containerd to trust.
``push`` speaks the Registry HTTP API v2; users push their own images with
``buildah push --tls-verify=false``. The pause image is also written as an OCI archive for
``ctr images import``, so a registry outage cannot stop sandboxes from starting.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import posixpath
import random
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from fulcrum.harness.processes import stop_process

DOCKER_REGISTRY = Path("/usr/bin/docker-registry")
BUSYBOX = Path("/bin/busybox")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
_APPLETS = "sh httpd cat sleep echo ls wget env mkdir date hostname ip true false"
BUSYBOX_APPLETS = tuple(_APPLETS.split())  # linked to /bin/busybox if its --list has them
_CHUNK = 1 << 20
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # Go's names; ppc64le, s390x are the same
_REGISTRY_FIX = "is the registry running? `fulcrum cluster status`"


class ImageError(RuntimeError):
    """An image cannot be built or written; the message names the input and the fix."""


class RegistryError(RuntimeError):
    """The local registry did not start, or a push to it failed; the message says the step."""


# --- the image model -------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A regular file: ``content`` is the bytes, or a host file streamed at build time."""

    path: str
    content: bytes | Path
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class RandomFile:
    """``size`` bytes of incompressible pseudo-random data, a function of ``seed`` only.

    Generated while the layer is written, 1 MiB at a time, so a big one needs no memory.
    """

    path: str
    size: int
    seed: str
    mode: int = 0o644


Entry = File | Symlink | Directory | RandomFile


@dataclass(frozen=True)
class Layer:
    """One filesystem layer. Parents missing from ``entries`` are added as 0755 directories.

    ``compression`` is the gzip level: 0 stores incompressible data (padding) at disk speed.
    """

    entries: tuple[Entry, ...]
    compression: int = 6


def _host_arch() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Image:
    layers: tuple[Layer, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str = field(default_factory=_host_arch)
    os: str = "linux"


@dataclass(frozen=True)
class Blob:
    """A content-addressed file of a built image; ``diff_id`` is a layer's uncompressed digest."""

    digest: str
    size: int
    path: Path
    media_type: str
    diff_id: str = ""

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class Built:
    """A built image: its blobs in a temporary directory (removed by ``close``)."""

    directory: Path
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest

    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Built:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- building --------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through it to ``out``."""

    def __init__(self, out: IO[bytes] | gzip.GzipFile) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.out.write(view)
        return view.nbytes

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _RandomReader(io.RawIOBase):
    def __init__(self, size: int, seed: str) -> None:
        self.left, self.rng, self.buffer = size, random.Random(seed), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        if not self.buffer and self.left:
            self.buffer = memoryview(self.rng.randbytes(min(_CHUNK, self.left)))
            self.left -= len(self.buffer)
        n = min(len(out), len(self.buffer))
        out[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        return n


def _clean(path: str) -> str:
    """The tar name of an absolute image path (``/bin/sh`` -> ``bin/sh``)."""
    norm = posixpath.normpath(path)
    if not path.startswith("/") or ".." in path.split("/") or norm == "/":
        raise ImageError(f"layer entry path {path!r}: must be an absolute path below / without ..")
    return norm.lstrip("/")


def _entries(layer: Layer) -> list[tuple[str, Entry]]:
    """The layer's entries by tar name, implicit parent directories added, sorted."""
    named: dict[str, Entry] = {}
    for entry in layer.entries:
        name = _clean(entry.path)
        if name in named:
            raise ImageError(f"layer entry path {entry.path!r}: appears twice in one layer")
        named[name] = entry
    for name in list(named):
        parent = posixpath.dirname(name)
        while parent and parent not in named:
            named[parent] = Directory("/" + parent)
            parent = posixpath.dirname(parent)
    return sorted(named.items())


def _tar_info(name: str, entry: Entry) -> tuple[tarfile.TarInfo, IO[bytes] | None]:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if isinstance(entry, Directory):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
        return info, None
    if isinstance(entry, Symlink):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.target
        return info, None
    info.mode = entry.mode
    if isinstance(entry, RandomFile):
        info.size = entry.size
        return info, io.BufferedReader(_RandomReader(entry.size, entry.seed), _CHUNK)
    if isinstance(entry.content, Path):
        try:
            info.size = entry.content.stat().st_size
            return info, entry.content.open("rb")
        except OSError as err:
            raise ImageError(
                f"layer file {entry.path}: cannot read {entry.content}: {err}"
            ) from err
    info.size = len(entry.content)
    return info, io.BytesIO(entry.content)


def _write_layer(layer: Layer, directory: Path) -> Blob:
    """Stream ``layer`` as a gzip tar into ``directory``; its digests are computed on the way."""
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=layer.compression
        ) as gz:
            plain = _Hashing(gz)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name, entry in _entries(layer):
                    info, content = _tar_info(name, entry)
                    try:
                        tar.addfile(info, content)
                    finally:
                        if content is not None:
                            content.close()
    return _store(Path(raw.name), compressed.digest(), LAYER_TYPE, diff_id=plain.digest())


def _store(path: Path, digest: str, media_type: str, diff_id: str = "") -> Blob:
    final = path.with_name(digest.split(":", 1)[1])
    path.replace(final)
    return Blob(digest, final.stat().st_size, final, media_type, diff_id)


def _write_json(document: Mapping[str, Any], directory: Path, media_type: str) -> Blob:
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    path = directory / "new.json"
    path.write_bytes(data)
    return _store(path, "sha256:" + hashlib.sha256(data).hexdigest(), media_type)


def _config(image: Image, diff_ids: list[str]) -> dict[str, Any]:
    keys = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Labels")
    values = (image.entrypoint, image.cmd, image.env, image.workdir, image.user, image.labels)
    pairs = zip(keys, values, strict=True)
    settings = {k: dict(v) if isinstance(v, Mapping) else v for k, v in pairs if v}
    return {
        "architecture": image.architecture,
        "os": image.os,
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }


def build(image: Image, *, directory: Path | None = None) -> Built:
    """Build ``image`` into a temporary directory (under ``directory`` if given).

    Layers stream to files, so a 200 MB layer needs no more than a few MB of memory.
    """
    if not image.layers:
        raise ImageError("image layers: an image needs at least one layer")
    work = Path(tempfile.mkdtemp(prefix="fulcrum-image-", dir=directory))
    try:
        layers = tuple(_write_layer(layer, work) for layer in image.layers)
        config = _write_json(_config(image, [b.diff_id for b in layers]), work, CONFIG_TYPE)
        descriptors = {"config": config.descriptor(), "layers": [b.descriptor() for b in layers]}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, **descriptors}
        return Built(work, _write_json(manifest, work, MANIFEST_TYPE), config, layers)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# --- ready-made images -----------------------------------------------------------------------


def is_static(binary: Path) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP), so runs FROM scratch."""
    with binary.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            raise ImageError(f"{binary}: not an ELF executable")
        wide = header[4] == 2
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"

        def number(at: int, size: int) -> int:
            return int.from_bytes(header[at : at + size], order)

        phoff = number(0x20, 8) if wide else number(0x1C, 4)
        phentsize, phnum = number(0x36 if wide else 0x2A, 2), number(0x38 if wide else 0x2C, 2)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    p_types = (int.from_bytes(table[i : i + 4], order) for i in range(0, len(table), phentsize))
    return 3 not in p_types  # PT_INTERP


def _static_binary(binary: Path, package: str) -> None:
    if not binary.is_file():
        raise ImageError(f"{binary} is missing: apt-get install {package}")
    if not is_static(binary):
        raise ImageError(f"{binary} is dynamically linked; FROM scratch needs a static {package}")


def busybox_image(busybox: Path = BUSYBOX) -> Image:
    """FROM scratch: Debian's busybox-static with the applets the harness's workloads use."""
    _static_binary(busybox, "busybox-static")
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False)
    offered = set(listed.stdout.split())
    if "sh" not in offered:
        raise ImageError(f"{busybox} --list offers no sh: apt-get install busybox-static")
    passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    entries: list[Entry] = [
        File("/bin/busybox", busybox, 0o755),
        *(Symlink(f"/bin/{a}", "busybox") for a in BUSYBOX_APPLETS if a in offered),
        File("/etc/passwd", passwd),
        File("/etc/group", b"root:x:0:\nnobody:x:65534:\n"),
        Directory("/root", 0o700),
        Directory("/tmp", 0o1777),
    ]
    return Image(layers=(Layer(tuple(entries)),), cmd=("sh",))


def pause_image(pause_binary: Path) -> Image:
    """FROM scratch: the sandbox's ``/pause``, run as 65535 like registry.k8s.io/pause."""
    _static_binary(pause_binary, "the node binaries: `fulcrum build`")
    layer = Layer((File("/pause", pause_binary, 0o755),))
    return Image((layer,), entrypoint=("/pause",), user="65535:65535", env=())


def padded_image(base: Image, megabytes: int, seed: str) -> Image:
    """``base`` plus a layer of ``megabytes`` MiB of random data from ``seed``: a pull that takes
    visible time, and a different seed makes an image change that must really pull."""
    if megabytes < 1:
        raise ImageError(f"padded image megabytes: {megabytes} must be at least 1")
    padding = Layer((RandomFile("/padding", megabytes * _CHUNK, seed),), compression=0)
    labels = {**base.labels, "dev.fulcrum.padding": f"{megabytes}MiB:{seed}"}
    return replace(base, layers=(*base.layers, padding), labels=labels)


# --- the local registry and pushing to it ----------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """A running ``docker-registry``: its address (``127.0.0.1:port``), data and log."""

    address: str
    directory: Path
    pid: int
    log: Path

    def stop(self) -> None:
        stop_process(self.pid)
        with suppress(ChildProcessError):  # reap it if this process started it
            os.waitpid(self.pid, os.WNOHANG)


def registry_config(directory: Path, port: int) -> dict[str, Any]:
    """distribution's configuration: blobs under ``directory``, plain HTTP on loopback."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }


def registry_ready(address: str, timeout: float = 2) -> bool:
    """Whether a Docker Registry v2 answers ``GET /v2/`` at ``address`` (``host:port``)."""
    try:
        status, headers, _ = _request(address, "GET", "/v2/", timeout=timeout)
    except OSError:
        return False
    api = headers.get("docker-distribution-api-version", "")
    return status == 200 and api.startswith("registry/2")


def start_registry(
    directory: Path, port: int, *, binary: Path = DOCKER_REGISTRY, timeout: float = 20
) -> Registry:
    """Start ``docker-registry serve`` detached (its config and log in ``directory``, so the
    cluster's process lookup finds it) and wait until ``GET /v2/`` answers."""
    if not binary.is_file():
        raise RegistryError(f"{binary} is missing: apt-get install docker-registry")
    address = f"127.0.0.1:{port}"
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RegistryError(f"registry port {port}: already in use; choose another port")
    directory.mkdir(parents=True, exist_ok=True)
    config, log = directory / "registry.yaml", directory / "registry.log"
    config.write_text(yaml.safe_dump(registry_config(directory, port), sort_keys=False))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(binary), "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
    deadline = time.monotonic() + timeout
    while not registry_ready(address, timeout=1):
        if proc.poll() is not None:
            tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-10:])
            raise RegistryError(f"docker-registry exited at start-up (log: {log}):\n  {tail}")
        if time.monotonic() > deadline:
            stop_process(proc.pid)
            proc.wait()
            raise RegistryError(f"docker-registry not ready in {timeout:.0f} s; see {log}")
        time.sleep(0.1)
    return Registry(address, directory, proc.pid, log)


@dataclass(frozen=True)
class Pushed:
    manifest_digest: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]


def _request(
    address: str, method: str, path: str, timeout: float = 60, **body_and_headers: Any
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on its own connection; ``body`` may be an open file (streamed)."""
    conn = http.client.HTTPConnection(address, timeout=timeout, blocksize=_CHUNK)
    try:
        conn.request(method, path, **body_and_headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


class _Pusher:
    """One push: every request's failure names the registry, the step and the reply."""

    def __init__(self, address: str, repository: str, tag: str) -> None:
        self.address, self.repository, self.tag = address, repository, tag

    def call(
        self, step: str, method: str, path: str, expect: Iterable[int], **kwargs: Any
    ) -> tuple[int, dict[str, str]]:
        where = f"push {self.repository}:{self.tag} to registry {self.address}"
        try:
            status, headers, body = _request(self.address, method, path, **kwargs)
        except OSError as err:
            raise RegistryError(f"{where}: {step}: {err}; {_REGISTRY_FIX}") from err
        if status not in expect:
            text = body.decode(errors="replace").strip()[:500]
            raise RegistryError(
                f"{where}: {step}: HTTP {status} {text}; see the registry's log ({_REGISTRY_FIX})"
            )
        return status, headers

    def blob(self, blob: Blob) -> bool:
        """Upload ``blob`` unless the repository has it; whether it was uploaded."""
        base, step = f"/v2/{self.repository}/blobs", f"blob {blob.digest}"
        status, _ = self.call(f"HEAD {step}", "HEAD", f"{base}/{blob.digest}", (200, 404))
        if status == 200:
            return False
        _, headers = self.call(f"POST upload of {step}", "POST", f"{base}/uploads/", (202,))
        location = urllib.parse.urlsplit(headers.get("location", ""))
        digest = urllib.parse.urlencode({"digest": blob.digest})
        if not location.path:
            raise RegistryError(f"push to {self.address}: POST upload: no Location in the reply")
        target = f"{location.path}?{'&'.join(filter(None, (location.query, digest)))}"
        with blob.path.open("rb") as content:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
            self.call(f"PUT {step}", "PUT", target, (201,), body=content, headers=headers)
        return True


def push(built: Built, address: str, repository: str, tag: str) -> Pushed:
    """Push ``built`` as ``<address>/<repository>:<tag>`` (Registry HTTP API v2, plain HTTP);
    blobs the repository already has are skipped."""
    if not _REPOSITORY.fullmatch(repository):
        raise RegistryError(f"repository {repository!r}: lowercase path components like team/app")
    if not _TAG.fullmatch(tag):
        raise RegistryError(f"tag {tag!r}: up to 128 of [A-Za-z0-9_.-], not starting with . or -")
    pusher = _Pusher(address, repository, tag)
    uploaded: list[str] = []
    skipped: list[str] = []
    for blob in built.blobs():
        (uploaded if pusher.blob(blob) else skipped).append(blob.digest)
    body, path = built.manifest.path.read_bytes(), f"/v2/{repository}/manifests/{tag}"
    headers = {"Content-Type": MANIFEST_TYPE}
    _, reply = pusher.call("PUT manifest", "PUT", path, (201,), body=body, headers=headers)
    stored = reply.get("docker-content-digest", built.manifest_digest)
    if stored != built.manifest_digest:
        raise RegistryError(
            f"push to {address}: manifest stored as {stored}, not {built.manifest_digest}"
        )
    return Pushed(built.manifest_digest, tuple(uploaded), tuple(skipped))


# --- OCI archives ----------------------------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, content: bytes | Path | None) -> None:
    """A tar entry owned by root at time 0: a directory (no content), bytes or a host file."""
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = 0, 0o644
    if content is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif isinstance(content, Path):
        info.size = content.stat().st_size
        with content.open("rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))


def oci_archive(built: Built, ref: str, path: Path) -> Path:
    """Write ``built`` as an OCI image-layout tar named ``ref`` (``registry/repo:tag``), the
    form ``ctr -n k8s.io images import`` loads without a registry.

    ``io.containerd.image.name`` carries the whole ref and ``org.opencontainers.image.ref.name``
    the tag, as ``docker save`` writes them.
    """
    if "@" in ref or not ref or ref != ref.strip():
        raise ImageError(f"archive ref {ref!r}: give a name with a tag, like local/pause:3.10")
    tag = ref.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    names = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
    entry = {**built.manifest.descriptor(), "annotations": names}
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [entry]}
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "blobs", None)
        _add(tar, "blobs/sha256", None)
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for blob in (built.manifest, *built.blobs()):
            _add(tar, f"blobs/sha256/{blob.digest.split(':', 1)[1]}", blob.path)
    os.replace(partial, path)
    return path
