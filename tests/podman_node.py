"""A node whose pods really run: a small kubelet stand-in for tests, on podman.

kwok fakes its nodes' pods (no container runs), so a test that needs Fulcrum's own pods to run
(the chart's fulcrum-scheduler, rebuild controller and webhook) registers one ``PodmanNode``
beside the kwok nodes. The agent

- registers the Node (``podman-node``: label and NoSchedule taint ``fulcrum.io/podman-node``, so
  only pods that tolerate it come here) and keeps its Ready condition and its Lease fresh;
- runs each pod bound to it as a ``podman pod`` (one network namespace, as in Kubernetes: the
  extender on 127.0.0.1 next to kube-scheduler) on podman's bridge network, whose pod IPs the
  host (so the API server: webhooks, the Service proxy) reaches directly;
- runs every container with the pod's image (``--pull=never``), command/args, env (``value``,
  ``fieldRef``, ``configMapKeyRef``, ``secretKeyRef``), volumes (configMap, secret, emptyDir,
  downwardAPI, projected with a ServiceAccount token from the TokenRequest API), user/group,
  read-only root, dropped capabilities and no-new-privileges;
- reports the pod's status (phase, podIP, containerStatuses, conditions) so Endpoints see it,
  with readiness from the pod's own readiness and startup probes (httpGet and tcpSocket from the
  host to the pod IP, exec with ``podman exec``); liveness probes are not run;
- removes the containers when the pod is deleted, and deletes the pod object as a kubelet does.

Containers reach the API server as ``kubernetes.default.svc:443`` (the name is in the serving
certificate kwokctl makes): every pod's /etc/hosts maps it to the bridge's gateway, where the
agent forwards port 443 to the API server's port (the Service's ClusterIP is not routable here:
no kube-proxy). ``KUBERNETES_SERVICE_HOST``/``PORT`` say the same to in-cluster clients.

Podman runs with a containers.conf of its own (``CONTAINERS_CONF``): the OCI runtime
``FULCRUM_PODMAN_RUNTIME`` (default runc when installed: crun refuses cgroup v1 "hybrid" hosts)
and rlimits below the host's (a sandbox without CAP_SYS_RESOURCE cannot set the defaults).
Resource limits are not applied.

Run by hand against a cluster: ``python -m tests.podman_node CLUSTER`` (Ctrl-C stops it and
removes its pods).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

NODE = "podman-node"
NODE_KEY = "fulcrum.io/podman-node"  # the node's label and taint; the podman pods' label
API_HOST = "kubernetes.default.svc"
API_PORT = 443
LOOP_SECONDS = 1.0
HEARTBEAT_SECONDS = 10.0
RETRY_SECONDS = 5.0
ULIMITS = ("nofile=8192:8192", "nproc=4096:4096")

Obj = dict[str, Any]
Log = Callable[[str], None]


class PodmanNodeError(RuntimeError):
    """The node agent cannot do something; the message names what and why."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339(podman_time: str) -> str:
    """Podman's ``2026-12-02T11:39:02.51617036Z`` (or ``+00:00``) as Kubernetes' seconds."""
    match = re.match(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?", podman_time
    )
    if not match:
        return now()
    offset = match.group(2) or "Z"
    moment = dt.datetime.fromisoformat(match.group(1) + ("+00:00" if offset == "Z" else offset))
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# podman


class Podman:
    """podman with the agent's own containers.conf."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("podman") is None:
            raise PodmanNodeError("podman is not installed (apt-get install podman)")
        runtime = os.environ.get("FULCRUM_PODMAN_RUNTIME") or (
            "runc" if shutil.which("runc") else ""
        )
        conf = workdir / "containers.conf"
        lines = ["[containers]", f"default_ulimits = {json.dumps(list(ULIMITS))}"]
        if runtime:
            lines += ["[engine]", f"runtime = {json.dumps(runtime)}"]
        conf.write_text("\n".join(lines) + "\n")
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        cmd = ["podman", *args]
        try:
            result = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanNodeError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise PodmanNodeError(
                f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def gateway(self) -> str:
        """The bridge network's gateway: the host, as the pods see it."""
        networks = json.loads(self.run("network", "inspect", "podman"))
        for subnet in networks[0].get("subnets") or []:
            if subnet.get("gateway"):
                return str(subnet["gateway"])
        raise PodmanNodeError("podman's network `podman` has no gateway: is it a bridge?")

    def logs(self, container: str, lines: int) -> str:
        """The container's last ``lines`` of output, stdout and stderr interleaved."""
        result = subprocess.run(
            ["podman", "logs", "--tail", str(lines), container],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout

    def pods_labelled(self, node: str) -> list[str]:
        out = self.run("pod", "ps", "-q", "--filter", f"label={NODE_KEY}={node}")
        return out.split()

    def inspect(self, names: list[str]) -> dict[str, Obj]:
        """Containers by name (missing ones left out)."""
        if not names:
            return {}
        out = self.run("container", "inspect", *names, check=False)
        found: list[Obj] = json.loads(out) if out.strip() else []
        return {c["Name"]: c for c in found}


# ---------------------------------------------------------------------------------------------
# images


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0


def _image_label(ref: str, label: str) -> str:
    out = subprocess.run(
        [
            "podman",
            "image",
            "inspect",
            ref,
            "--format",
            f"{{{{index .Labels {json.dumps(label)}}}}}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def _shared_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader needs for ``binary`` (none for a static one), by ``ldd``."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:  # "not a dynamic executable"
        return []
    libraries = []
    for line in result.stdout.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
    return libraries


def _buildah(*args: str) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PodmanNodeError(f"`buildah {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def ensure_binary_image(ref: str, binary: Path, *, log: Log = print) -> None:
    """An image ``ref`` holding only ``binary`` (on PATH, run as 65532) and the shared libraries
    it loads, built with ``buildah from scratch`` unless one of this very binary exists."""
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    label = "io.fulcrum.binary-sha256"
    if image_exists(ref) and _image_label(ref, label) == digest:
        return
    if shutil.which("buildah") is None:
        raise PodmanNodeError(f"building {ref} needs buildah (apt-get install buildah)")
    log(f"building {ref} from {binary} (buildah from scratch)")
    ctr = _buildah("from", "scratch")
    try:
        _buildah("copy", ctr, str(binary), f"/usr/local/bin/{binary.name}")
        for library in _shared_libraries(binary):
            _buildah("copy", ctr, str(library.resolve()), str(library))
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o1777)
            _buildah("copy", "--chmod", "1777", ctr, tmp, "/tmp")
        _buildah(
            "config",
            "--env",
            "PATH=/usr/local/bin",
            "--user",
            "65532:65532",
            "--entrypoint",
            json.dumps([f"/usr/local/bin/{binary.name}"]),
            "--label",
            f"{label}={digest}",
            ctr,
        )
        _buildah("commit", "--quiet", "--rm", ctr, ref)
    except BaseException:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
        raise


FULCRUM_PACKAGES = ("fulcrum", "scheduler", "policies", "extender", "rebuild", "kube", "admission")
FULCRUM_IMAGE_FILES = ("pyproject.toml", "deploy/image/build.sh", "deploy/image/constraints.txt")


def source_digest(root: Path) -> str:
    """A digest of what goes into the Fulcrum image: the packages, pyproject and build.sh."""
    files = [root / name for name in FULCRUM_IMAGE_FILES]
    for package in FULCRUM_PACKAGES:
        found = (root / package).rglob("*")
        files += sorted(f for f in found if f.is_file() and "__pycache__" not in f.parts)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ensure_fulcrum_image(root: Path, *, log: Log = print) -> str:
    """The Fulcrum image of the checkout at ``root``: ``localhost/fulcrum:src-<digest>``, built
    by deploy/image/build.sh (minutes) unless already there; older ``src-`` images are removed.
    ``FULCRUM_TEST_IMAGE`` names one to use instead, as is."""
    given = os.environ.get("FULCRUM_TEST_IMAGE")
    if given:
        if not image_exists(given):
            raise PodmanNodeError(f"FULCRUM_TEST_IMAGE={given}: podman has no such image")
        return given
    tag = f"src-{source_digest(root)}"
    ref = f"localhost/fulcrum:{tag}"
    if image_exists(ref):
        return ref
    log(f"building {ref} with deploy/image/build.sh (a few minutes, once per source change)")
    env = dict(os.environ, IMAGE=f"fulcrum:{tag}", PYTHON=sys.executable)
    build = [str(root / "deploy" / "image" / "build.sh")]
    result = subprocess.run(
        build, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise PodmanNodeError("build.sh failed:\n  " + "\n  ".join(output[-20:]))
    listed = subprocess.run(
        ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/fulcrum"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    stale = [image for image in listed if ":src-" in image and image != ref]
    if stale:
        subprocess.run(["podman", "rmi", *stale], capture_output=True, check=False)
    return ref


# ---------------------------------------------------------------------------------------------
# the API


class Api:
    """JSON in, JSON out, over the official client's connection (its kubeconfig's credentials)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self.server = str(self.client.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        params = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*params, _request_timeout=30)
        data = response.read()
        if not 200 <= response.status < 300:
            error = ApiException(status=response.status, reason=response.reason)
            error.body = data
            raise error
        return json.loads(data) if data else None

    def merge_patch(self, path: str, body: Obj) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def get_or_none(self, path: str) -> Obj | None:
        try:
            found: Obj = self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found


# ---------------------------------------------------------------------------------------------
# kubernetes.default.svc:443 for the pods


class Forwarder:
    """TCP from ``listen`` to ``target``, a thread per direction (a handful of connections)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.server.bind(listen)
        except OSError as exc:
            raise PodmanNodeError(
                f"cannot listen on {listen[0]}:{listen[1]} to forward the pods' "
                f"{API_HOST}:{API_PORT} to the API server: {exc.strerror}"
            ) from exc
        self.server.listen(64)
        self._thread = threading.Thread(target=self._accept, name="api-forwarder", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        with suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


# ---------------------------------------------------------------------------------------------
# a pod's volumes and containers


def field_value(pod: Obj, path: str, ip: str) -> str:
    """A ``fieldRef.fieldPath`` of ``pod`` (whose IP is ``ip``)."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": ip,
        "status.podIPs": ip,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodmanNodeError(f"fieldRef {path!r} is not supported")


@dataclass
class PodVolumes:
    """Writes a pod's volumes under ``root`` (one directory each) from the API."""

    api: Api
    pod: Obj
    root: Path
    ip: str

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def materialize(self) -> dict[str, Path]:
        paths = {}
        for volume in self.pod["spec"].get("volumes") or []:
            directory = self.root / volume["name"]
            directory.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                directory.chmod(0o777)
            else:
                self._write(directory, self._files(volume))
            paths[volume["name"]] = directory
        return paths

    def _files(self, volume: Obj) -> dict[str, bytes]:
        if "configMap" in volume:
            return self._config_map(volume["configMap"])
        if "secret" in volume:
            return self._secret(volume["secret"])
        if "downwardAPI" in volume:
            return self._downward(volume["downwardAPI"])
        if "projected" in volume:
            files: dict[str, bytes] = {}
            for source in volume["projected"].get("sources") or []:
                files.update(self._projection(source))
            return files
        kind = next((k for k in volume if k != "name"), "?")
        raise PodmanNodeError(f"volume {volume['name']!r}: {kind} volumes are not supported")

    def _projection(self, source: Obj) -> dict[str, bytes]:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            return {token["path"]: self.token(token).encode()}
        if "configMap" in source:
            return self._config_map(source["configMap"])
        if "secret" in source:
            return self._secret(source["secret"])
        if "downwardAPI" in source:
            return self._downward(source["downwardAPI"])
        raise PodmanNodeError(f"projected source {sorted(source)} is not supported")

    def token(self, projection: Obj) -> str:
        """A token of the pod's ServiceAccount bound to the pod (the TokenRequest API)."""
        meta = self.pod["metadata"]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": int(projection.get("expirationSeconds") or 3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"]},
        }
        spec["boundObjectRef"]["uid"] = meta["uid"]
        if projection.get("audience"):
            spec["audiences"] = [projection["audience"]]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        return str(self.api.request("POST", path, body)["status"]["token"])

    def _keyed(self, kind: str, source: Obj, decode: bool) -> dict[str, bytes]:
        path = f"/api/v1/namespaces/{self.namespace}/{kind}/{source['name']}"
        obj = self.api.get_or_none(path)
        if obj is None:
            if source.get("optional"):
                return {}
            raise PodmanNodeError(f"{kind} {self.namespace}/{source['name']} not found")
        data: dict[str, bytes] = {
            k: base64.b64decode(v) if decode else str(v).encode()
            for k, v in (obj.get("data") or {}).items()
        }
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = source.get("items")
        if not items:
            return data
        return {item["path"]: data[item["key"]] for item in items if item["key"] in data}

    def _config_map(self, source: Obj) -> dict[str, bytes]:
        return self._keyed("configmaps", source, decode=False)

    def _secret(self, source: Obj) -> dict[str, bytes]:
        named = {**source, "name": source.get("secretName") or source.get("name")}
        return self._keyed("secrets", named, decode=True)

    def _downward(self, source: Obj) -> dict[str, bytes]:
        files = {}
        for item in source.get("items") or []:
            if "fieldRef" not in item:
                raise PodmanNodeError(f"downwardAPI item {item['path']!r}: only fieldRef")
            files[item["path"]] = field_value(self.pod, item["fieldRef"]["fieldPath"], self.ip)
        return {path: value.encode() for path, value in files.items()}

    @staticmethod
    def _write(directory: Path, files: dict[str, bytes]) -> None:
        for name, content in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644)  # readable by any runAsUser (no fsGroup here)


def _env_source(api: Api, pod: Obj, source: Obj, ip: str) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], ip)
    for key, kind, decode in (
        ("configMapKeyRef", "configmaps", False),
        ("secretKeyRef", "secrets", True),
    ):
        if key in source:
            ref = source[key]
            obj = api.get_or_none(f"/api/v1/namespaces/{namespace}/{kind}/{ref['name']}")
            raw = (obj or {}).get("data", {}).get(ref["key"])
            if raw is None:
                if ref.get("optional"):
                    return None
                raise PodmanNodeError(f"{key} {ref['name']}/{ref['key']} not found")
            return base64.b64decode(raw).decode() if decode else str(raw)
    raise PodmanNodeError(f"env valueFrom {sorted(source)} is not supported")


def container_env(api: Api, pod: Obj, container: Obj, ip: str) -> dict[str, str]:
    """What the kubelet gives a container: the API's address, then the container's own env."""
    env = {"KUBERNETES_SERVICE_HOST": API_HOST, "KUBERNETES_SERVICE_PORT": str(API_PORT)}
    env["KUBERNETES_SERVICE_PORT_HTTPS"] = str(API_PORT)
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _env_source(api, pod, var["valueFrom"], ip)
            if value is not None:
                env[var["name"]] = value
        else:
            env[var["name"]] = str(var.get("value", ""))
    return env


def security_args(pod: Obj, container: Obj) -> list[str]:
    """The pod's and the container's securityContext as podman options (the container wins)."""
    context = {
        **(pod["spec"].get("securityContext") or {}),
        **(container.get("securityContext") or {}),
    }
    args = []
    if "runAsUser" in context:
        user = str(context["runAsUser"])
        if "runAsGroup" in context:
            user += f":{context['runAsGroup']}"
        args.append(f"--user={user}")
    if context.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if context.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if context.get("privileged"):
        args.append("--privileged")
    capabilities = context.get("capabilities") or {}
    args += [f"--cap-drop={c.lower()}" for c in capabilities.get("drop") or []]
    args += [f"--cap-add={c.lower()}" for c in capabilities.get("add") or []]
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    return args


def mount_args(container: Obj, volumes: dict[str, Path]) -> list[str]:
    args = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise PodmanNodeError(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = volumes[mount["name"]] / mount.get("subPath", "")
        mode = "ro" if mount.get("readOnly") else "rw"
        args.append(f"--volume={source}:{mount['mountPath']}:{mode}")
    return args


# ---------------------------------------------------------------------------------------------
# probes


@dataclass
class ProbeState:
    """One probe of a container: when it runs next and whether it passed last time."""

    spec: Obj
    passed: bool = False
    ever_passed: bool = False
    due: float = 0.0

    def interval(self) -> float:
        # Until it first passes, every second (a test waits on it); then the pod's period.
        return float(self.spec.get("periodSeconds") or 10) if self.ever_passed else 1.0


def _port(container: Obj, port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodmanNodeError(f"container {container['name']!r} has no port named {port!r}")


def run_probe(podman: Podman, spec: Obj, container: Obj, cname: str, ip: str) -> bool:
    timeout = float(spec.get("timeoutSeconds") or 1)
    try:
        if "exec" in spec:
            cmd = spec["exec"]["command"]
            podman.run("exec", cname, *cmd, timeout=timeout + 5)
            return True
        if "tcpSocket" in spec:
            port = _port(container, spec["tcpSocket"]["port"])
            socket.create_connection((ip, port), timeout=timeout).close()
            return True
        if "httpGet" in spec:
            get = spec["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{ip}:{_port(container, get['port'])}{get.get('path', '/')}"
            context = ssl.create_default_context()
            context.check_hostname = False  # as the kubelet's probes: no verification
            context.verify_mode = ssl.CERT_NONE
            with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
                return 200 <= int(response.status) < 400
    except (OSError, PodmanNodeError):
        return False
    return False


# ---------------------------------------------------------------------------------------------
# the agent


@dataclass
class RunningPod:
    """A pod of the API and its podman pod."""

    pod: Obj
    podman_name: str
    ip: str
    directory: Path
    started: str
    probes: dict[str, dict[str, ProbeState]] = field(default_factory=dict)
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    reported: Obj | None = None
    restarts: dict[str, int] = field(default_factory=dict)  # container -> times restarted
    restart_at: dict[str, float] = field(default_factory=dict)  # container -> when, backing off

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    def cname(self, container: str) -> str:
        return f"{self.podman_name}-{container}"

    def containers(self) -> list[Obj]:
        containers: list[Obj] = self.pod["spec"]["containers"]
        return containers


class PodmanNode:
    """The agent. ``start()`` registers the node and runs the loop in a thread; ``stop()`` ends
    it and removes every podman pod of the node."""

    def __init__(
        self, kubeconfig: Path, workdir: Path, *, name: str = NODE, log: Log = print
    ) -> None:
        self.name = name
        self.log = log
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.api = Api(kubeconfig)
        self.podman = Podman(workdir)
        self.pods: dict[str, RunningPod] = {}
        self.failed: dict[str, float] = {}  # uid -> when its start last failed
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._forwarder: Forwarder | None = None
        self._heartbeat_due = 0.0
        self.gateway = ""

    # -- lifecycle

    def start(self) -> None:
        self._remove_podman_pods()  # leftovers of an interrupted run
        self.gateway = self.podman.gateway()
        server = urlsplit(self.api.server)
        target = (server.hostname or "127.0.0.1", server.port or 443)
        self._forwarder = Forwarder(("0.0.0.0", API_PORT), target)
        self._register()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-agent", daemon=True)
        self._thread.start()
        self.log(f"{self.name}: running pods with podman (API at {API_HOST} -> {self.gateway})")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._remove_podman_pods()
        if self._forwarder is not None:
            self._forwarder.close()
        with suppress(Exception):
            self.api.request("DELETE", f"/api/v1/nodes/{self.name}")
        shutil.rmtree(self.workdir / "pods", ignore_errors=True)

    def _remove_podman_pods(self) -> None:
        for pod in self.podman.pods_labelled(self.name):
            self.podman.run("pod", "rm", "--force", "--time", "2", pod, check=False)

    def _run(self) -> None:
        while not self._stop.wait(LOOP_SECONDS):
            try:
                self.tick()
            except Exception as exc:  # keep serving; the test reads .errors
                message = f"{type(exc).__name__}: {exc}"
                if not self.errors or self.errors[-1] != message:
                    self.log(f"{self.name}: {message}")
                self.errors.append(message)

    def tick(self) -> None:
        if time.monotonic() >= self._heartbeat_due:
            self._heartbeat()
            self._heartbeat_due = time.monotonic() + HEARTBEAT_SECONDS
        self._sync()
        inspected = self.podman.inspect(
            [rp.cname(c["name"]) for rp in self.pods.values() for c in rp.containers()]
        )
        for running in list(self.pods.values()):
            self._restart_exited(running, inspected)
            self._report(running, inspected)

    # -- the node

    def _node(self) -> Obj:
        memory_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib}Ki", "pods": "20"}
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        labels |= {"kubernetes.io/arch": "amd64", NODE_KEY: "true"}
        taint = {"key": NODE_KEY, "value": "true", "effect": "NoSchedule"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": [taint]},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": self._conditions(),
                "addresses": [
                    {"type": "InternalIP", "address": self.gateway},
                    {"type": "Hostname", "address": self.name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "podman-node",
                    "containerRuntimeVersion": "podman",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    def _conditions(self) -> list[Obj]:
        stamp = now()
        healthy = [("MemoryPressure", "KubeletHasSufficientMemory")]
        healthy += [("DiskPressure", "KubeletHasNoDiskPressure")]
        healthy += [("PIDPressure", "KubeletHasSufficientPID")]
        conditions = [
            {"type": kind, "status": "False", "reason": reason, "message": reason}
            for kind, reason in healthy
        ]
        ready = "podman node agent is running"
        conditions.append(
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": ready}
        )
        for condition in conditions:
            condition |= {"lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        return conditions

    def _register(self) -> None:
        existing = self.api.get_or_none(f"/api/v1/nodes/{self.name}")
        if existing is not None:
            self.api.request("DELETE", f"/api/v1/nodes/{self.name}")
        self.api.request("POST", "/api/v1/nodes", self._node())
        self._heartbeat()
        deadline = time.monotonic() + 60
        while True:  # the node lifecycle controller lifts the not-ready taint
            node = self.api.request("GET", f"/api/v1/nodes/{self.name}")
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if "node.kubernetes.io/not-ready" not in taints:
                return
            if time.monotonic() > deadline:
                raise PodmanNodeError(f"node {self.name} kept its not-ready taint for 60 s")
            time.sleep(0.5)

    def _heartbeat(self) -> None:
        self.api.merge_patch(
            f"/api/v1/nodes/{self.name}/status", {"status": {"conditions": self._conditions()}}
        )
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        renew = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": renew}
        if self.api.get_or_none(f"{path}/{self.name}") is None:
            lease: Obj = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
            lease |= {"metadata": {"name": self.name}, "spec": spec}
            self.api.request("POST", path, lease)
        else:
            self.api.merge_patch(f"{path}/{self.name}", {"spec": spec})

    # -- pods

    def _sync(self) -> None:
        listed = self.api.request(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={self.name}"}
        )["items"]
        seen = set()
        for pod in listed:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            if pod["metadata"].get("deletionTimestamp"):
                self._delete(pod)
            elif uid in self.pods:
                self.pods[uid].pod = pod
            elif pod["status"].get("phase") not in ("Succeeded", "Failed"):
                self._start_when_due(pod)
        for uid in set(self.pods) - seen:  # deleted with no grace: the containers go too
            self._remove(self.pods.pop(uid))

    def _start_when_due(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if time.monotonic() < self.failed.get(uid, 0.0) + RETRY_SECONDS:
            return
        try:
            self.pods[uid] = self._start_pod(pod)
            self.failed.pop(uid, None)
        except PodmanNodeError as exc:
            self.failed[uid] = time.monotonic()
            self.errors.append(str(exc))
            self.log(f"{self.name}: cannot start {self._key(pod)}: {exc}")
            self._report_failure(pod, str(exc))

    @staticmethod
    def _key(pod: Obj) -> str:
        return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    def _start_pod(self, pod: Obj) -> RunningPod:
        meta = pod["metadata"]
        podman_name = f"{meta['namespace']}-{meta['name']}"[:50] + "-" + meta["uid"][:8]
        self.podman.run("pod", "rm", "--force", podman_name, check=False)
        self.podman.run(
            "pod",
            "create",
            f"--name={podman_name}",
            f"--hostname={meta['name'][:63]}",
            f"--label={NODE_KEY}={self.name}",
            f"--label=io.kubernetes.pod.uid={meta['uid']}",
            f"--add-host={API_HOST}:{self.gateway}",
            "--network=podman",
        )
        self.podman.run("pod", "start", podman_name)
        infra = self.podman.run("pod", "inspect", podman_name, "--format", "{{.InfraContainerID}}")
        ip = self.podman.run(
            "container", "inspect", infra.strip(), "--format", "{{.NetworkSettings.IPAddress}}"
        ).strip()
        directory = self.workdir / "pods" / meta["uid"]
        running = RunningPod(pod, podman_name, ip, directory, now())
        try:
            volumes = PodVolumes(self.api, pod, directory / "volumes", ip).materialize()
            for container in running.containers():
                self._run_container(running, container, volumes)
        except BaseException:
            self._remove(running)
            raise
        self.log(f"{self.name}: started {self._key(pod)} ({podman_name}, {ip})")
        return running

    def _run_container(self, running: RunningPod, container: Obj, volumes: dict[str, Path]) -> None:
        pod = running.pod
        args = ["run", "--detach", "--pull=never", f"--pod={running.podman_name}"]
        args += [f"--name={running.cname(container['name'])}", f"--label={NODE_KEY}={self.name}"]
        args.append("--restart=no")  # the agent restarts it, with the kubelet's back-off
        for key, value in container_env(self.api, pod, container, running.ip).items():
            args.append(f"--env={key}={value}")
        args += security_args(pod, container) + mount_args(container, volumes)
        if container.get("workingDir"):
            args.append(f"--workdir={container['workingDir']}")
        if container.get("command"):
            args.append(f"--entrypoint={json.dumps(container['command'])}")
        args += [container["image"], *(container.get("args") or [])]
        self.podman.run(*args)
        running.probes[container["name"]] = {
            kind: ProbeState(container[kind])
            for kind in ("startupProbe", "readinessProbe")
            if container.get(kind)
        }

    def _delete(self, pod: Obj) -> None:
        """A pod being deleted: stop its containers, then delete it for good, as a kubelet."""
        uid = pod["metadata"]["uid"]
        running = self.pods.pop(uid, None)
        if running is not None:
            self._remove(running, grace=int(pod["metadata"].get("deletionGracePeriodSeconds") or 0))
        meta = pod["metadata"]
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        options["preconditions"] = {"uid": uid}
        with suppress(ApiException):
            self.api.request(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", options
            )
        self.log(f"{self.name}: removed {self._key(pod)}")

    def _remove(self, running: RunningPod, grace: int = 0) -> None:
        wait = str(min(max(grace, 0), 5))
        self.podman.run("pod", "rm", "--force", "--time", wait, running.podman_name, check=False)
        shutil.rmtree(running.directory, ignore_errors=True)

    # -- status

    def _container_status(self, running: RunningPod, container: Obj, found: Obj | None) -> Obj:
        name = container["name"]
        status: Obj = {"name": name, "image": container["image"], "imageID": "", "ready": False}
        status |= {"restartCount": 0, "started": False}
        if found is None:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            return status
        state = found["State"]
        status |= {"containerID": f"podman://{found['Id']}", "imageID": found.get("Image", "")}
        status["restartCount"] = running.restarts.get(name, 0)
        if state.get("Running"):
            started = _rfc3339(str(state.get("StartedAt", "")))
            status["state"] = {"running": {"startedAt": started}}
            status["started"], status["ready"] = self._probe(running, container, found["Name"])
        else:
            terminated = {
                "exitCode": int(state.get("ExitCode") or 0),
                "reason": "Completed" if not state.get("ExitCode") else "Error",
                "startedAt": _rfc3339(str(state.get("StartedAt", ""))),
                "finishedAt": _rfc3339(str(state.get("FinishedAt", ""))),
            }
            status["state"] = {"terminated": terminated}
            if name in running.restart_at:
                status["lastState"] = status["state"]
                status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
            for probe in running.probes.get(name, {}).values():
                probe.passed = probe.ever_passed = False
        return status

    def _restart_exited(self, running: RunningPod, inspected: dict[str, Obj]) -> None:
        """Start exited containers again as the pod's restartPolicy says, after the kubelet's
        back-off (10 s, doubling, at most 5 min)."""
        policy = running.pod["spec"].get("restartPolicy", "Always")
        for container in running.containers():
            name, cname = container["name"], running.cname(container["name"])
            found = inspected.get(cname)
            if found is None or found["State"].get("Running"):
                continue
            failed = int(found["State"].get("ExitCode") or 0) != 0
            if policy == "Never" or (policy == "OnFailure" and not failed):
                continue
            due = running.restart_at.get(name)
            if due is None:
                backoff = min(10 * 2 ** running.restarts.get(name, 0), 300)
                running.restart_at[name] = time.monotonic() + backoff
            elif time.monotonic() >= due:
                self.podman.run("start", cname, check=False)
                running.restarts[name] = running.restarts.get(name, 0) + 1
                del running.restart_at[name]

    def _probe(self, running: RunningPod, container: Obj, cname: str) -> tuple[bool, bool]:
        """(started, ready) of a running container, by its startup and readiness probes."""
        probes = running.probes.get(container["name"], {})
        moment = time.monotonic()
        startup = probes.get("startupProbe")
        for kind, probe in probes.items():
            if kind == "readinessProbe" and startup is not None and not startup.ever_passed:
                continue
            if kind == "startupProbe" and probe.ever_passed:
                continue
            if moment >= probe.due:
                probe.passed = run_probe(self.podman, probe.spec, container, cname, running.ip)
                probe.ever_passed |= probe.passed
                probe.due = moment + probe.interval()
        started = startup is None or startup.ever_passed
        readiness = probes.get("readinessProbe")
        return started, started and (readiness is None or readiness.passed)

    def _condition(self, running: RunningPod, kind: str, ok: bool) -> Obj:
        value = "True" if ok else "False"
        previous = running.transitions.get(kind)
        if previous is None or previous[0] != value:
            running.transitions[kind] = (value, now())
        return {"type": kind, "status": value, "lastTransitionTime": running.transitions[kind][1]}

    def _report(self, running: RunningPod, inspected: dict[str, Obj]) -> None:
        statuses = [
            self._container_status(running, c, inspected.get(running.cname(c["name"])))
            for c in running.containers()
        ]
        ready = all(s["ready"] for s in statuses)
        states = [next(iter(s["state"])) for s in statuses]
        phase = "Running" if "running" in states else "Pending"
        policy = running.pod["spec"].get("restartPolicy", "Always")
        if policy != "Always" and all(s == "terminated" for s in states):
            codes = [s["state"]["terminated"]["exitCode"] for s in statuses]
            phase = "Succeeded" if not any(codes) else "Failed"
        conditions = [
            self._condition(running, kind, ok)
            for kind, ok in (
                ("PodReadyToStartContainers", True),
                ("Initialized", True),
                ("ContainersReady", ready),
                ("Ready", ready),
                ("PodScheduled", True),
            )
        ]
        status = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.gateway,
            "hostIPs": [{"ip": self.gateway}],
            "podIP": running.ip,
            "podIPs": [{"ip": running.ip}],
            "startTime": running.started,
            "containerStatuses": statuses,
        }
        if status != running.reported:
            self._patch_status(running.pod, status)
            running.reported = status

    def _report_failure(self, pod: Obj, message: str) -> None:
        waiting = {"waiting": {"reason": "CreateContainerError", "message": message[:1000]}}
        statuses = [
            {"name": c["name"], "image": c["image"], "imageID": "", "ready": False}
            | {"restartCount": 0, "started": False, "state": waiting}
            for c in pod["spec"]["containers"]
        ]
        with suppress(ApiException):
            self._patch_status(pod, {"phase": "Pending", "containerStatuses": statuses})

    def _patch_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:
            self.api.merge_patch(path, {"status": status})
        except ApiException as exc:
            if exc.status != 404:  # gone meanwhile: the next sync removes its containers
                raise

    # -- for tests

    def podman_states(self) -> dict[str, str]:
        """Every container of the node's podman pods: its podman state (``running``...)."""
        out = self.podman.run(
            "ps", "--all", "--filter", f"label={NODE_KEY}={self.name}", "--format", "json"
        )
        found: list[Obj] = json.loads(out) if out.strip() else []
        return {c["Names"][0]: str(c["State"]) for c in found}

    def diagnostics(self, lines: int = 25) -> str:
        """The agent's errors and the last ``lines`` of every container's log."""
        parts = [f"agent errors: {self.errors[-10:]}"]
        for name, state in sorted(self.podman_states().items()):
            logs = self.podman.logs(name, lines)
            parts.append(f"--- {name} ({state})\n{logs}")
        return "\n".join(parts)


@contextmanager
def running_node(kubeconfig: Path, workdir: Path, log: Log = print) -> Iterator[PodmanNode]:
    """A started agent, stopped (its pods removed) on leaving the context."""
    node = PodmanNode(kubeconfig, workdir, log=log)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def main(argv: list[str]) -> None:
    """``python -m tests.podman_node CLUSTER``: run the node until Ctrl-C."""
    from fulcrum.harness import cluster  # only for the command line: the agent needs a kubeconfig

    if len(argv) != 1 or argv[0].startswith("-"):
        raise SystemExit("usage: python -m tests.podman_node CLUSTER")
    with (
        tempfile.TemporaryDirectory(prefix="podman-node-") as workdir,
        running_node(cluster.kubeconfig_path(argv[0]), Path(workdir)),
        suppress(KeyboardInterrupt),
    ):
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
