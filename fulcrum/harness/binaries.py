"""Control-plane binaries (and helm), built from the Go module proxy and cached outside the
work tree.

Each component is a small Go wrapper module under ``controlplane/`` that pins one release.
Binaries land in ``<cache>/bin/<component>-<version>-<hash>/``; the hash covers the wrapper's
go.mod, go.sum and build flags, so a binary is rebuilt only when those change. A user who has
prebuilt binaries points ``FULCRUM_BIN_DIR`` at them; whatever that directory lacks is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class BinaryError(RuntimeError):
    """A binary is missing, broken or could not be built; the message says how to fix it."""


@dataclass(frozen=True)
class Component:
    """One Go wrapper module and the commands it builds."""

    name: str
    module_dir: str  # relative to controlplane/
    pinned_module: str  # the module whose version the go.mod pins
    commands: dict[str, str]  # binary name -> Go package path
    tags: str = ""  # Go build tags

    def go_mod(self) -> Path:
        return controlplane_dir() / self.module_dir / "go.mod"

    def version(self) -> str:
        text = self.go_mod().read_text()
        match = re.search(rf"^require {re.escape(self.pinned_module)} (v\S+)$", text, re.M)
        if match is None:
            raise BinaryError(
                f"{self.go_mod()}: no 'require {self.pinned_module} vX.Y.Z' line; "
                "restore the file from git"
            )
        return match.group(1)

    def ldflags(self) -> str:
        version = self.version()
        if self.name in ("kubernetes", "node"):
            major, minor = version.lstrip("v").split(".")[:2]
            pkg = "k8s.io/component-base/version"
            return (
                f"-s -w -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major}"
                f" -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
                f" -X {pkg}.buildDate=1970-01-01T00:00:00Z"
            )
        if self.name == "kwok":
            kube = KUBERNETES.version().lstrip("v")
            pkg = "sigs.k8s.io/kwok/pkg/consts"
            return f"-s -w -X {pkg}.Version={version.lstrip('v')} -X {pkg}.KubeVersion={kube}"
        if self.name == "helm":
            return _helm_ldflags(self, version)
        if self.name == "containerd":
            pkg = "github.com/containerd/containerd/v2/version"
            return f"-s -w -X {pkg}.Version={version} -X {pkg}.Revision=fulcrum"
        return "-s -w"

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            digest.update((controlplane_dir() / self.module_dir / name).read_bytes())
        digest.update(self.ldflags().encode() + self.tags.encode())
        return f"{self.name}-{self.version()}-{digest.hexdigest()[:10]}"


def _helm_ldflags(component: Component, version: str) -> str:
    """What helm's own Makefile sets: its version, and the Kubernetes version its client-go
    stands for (``helm template``'s default ``.Capabilities.KubeVersion``, ``helm lint``'s
    deprecation checks)."""
    text = component.go_mod().read_text()
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", text, re.M)
    if match is None:
        raise BinaryError(f"{component.go_mod()}: no k8s.io/client-go v0.N line; run `go mod tidy`")
    flags = [f"helm.sh/helm/v3/internal/version.version={version}"]
    flags.append("helm.sh/helm/v3/internal/version.gitTreeState=clean")
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"{pkg}.k8sVersionMajor=1", f"{pkg}.k8sVersionMinor={match.group(1)}"]
    return "-s -w" + "".join(f" -X {flag}" for flag in flags)


KUBERNETES = Component(
    "kubernetes",
    "kubernetes",
    "k8s.io/kubernetes",
    {
        name: f"k8s.io/kubernetes/cmd/{name}"
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    },
)
ETCD = Component("etcd", "etcd", "go.etcd.io/etcd/server/v3", {"etcd": "go.etcd.io/etcd/server/v3"})
KWOK = Component(
    "kwok",
    "kwok",
    "sigs.k8s.io/kwok",
    {"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
)
HELM = Component("helm", "helm", "helm.sh/helm/v3", {"helm": "helm.sh/helm/v3/cmd/helm"})
COMPONENTS = (KUBERNETES, ETCD, KWOK, HELM)
# a real node's (``fulcrum cluster up --real-nodes N``): the kubelet, kube-proxy and the
# sandbox's pause; containerd 2 (NRI on), its runc shim and ctr. runc and the CNI plugins are
# Debian's (``fulcrum.harness.realnodes.PACKAGES``).
NODE = Component(
    "node",
    "node",
    "k8s.io/kubernetes",
    {
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        "pause": "fulcrum.dev/controlplane/node/pause",
    },
)
CONTAINERD = Component(
    "containerd",
    "containerd",
    "github.com/containerd/containerd/v2",
    {
        name: f"github.com/containerd/containerd/v2/cmd/{name}"
        for name in ("containerd", "containerd-shim-runc-v2", "ctr")
    },
    tags="no_btrfs no_devmapper no_zfs no_aufs",
)
NODE_COMPONENTS = (NODE, CONTAINERD)


def controlplane_dir() -> Path:
    return Path(os.environ.get("FULCRUM_CONTROLPLANE_SRC", REPO_ROOT / "controlplane"))


def cache_dir() -> Path:
    if "FULCRUM_CACHE_DIR" in os.environ:
        return Path(os.environ["FULCRUM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fulcrum"


def expected_version(binary: str) -> str | None:
    """The version ``binary`` must report, or None for the one that reports none (pause)."""
    if binary == "pause":
        return None
    for component in (*COMPONENTS, *NODE_COMPONENTS):
        if binary in component.commands:
            return component.version().lstrip("v")
    raise KeyError(binary)


def check_binary(path: Path, *, want_version: str | None = None) -> str:
    """Run ``path --version`` and return its output, or raise naming the cause and the fix."""
    if not path.is_file():
        raise BinaryError(
            f"{path}: no such file; build it with `fulcrum build` or unset FULCRUM_BIN_DIR"
        )
    if not os.access(path, os.X_OK):
        raise BinaryError(f"{path}: not executable; run `chmod +x {path}`")
    args = {
        "kubectl": ["version", "--client"],
        "helm": ["version", "--short"],
        "containerd-shim-runc-v2": ["-v"],
    }.get(path.name, ["--version"])
    try:
        result = subprocess.run(
            [str(path), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise BinaryError(
            f"{path}: cannot run ({exc.strerror}); it may be built for another platform. "
            "Remove it, or run `fulcrum build` to build one for this machine"
        ) from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise BinaryError(
            f"{path} {' '.join(args)} failed (exit {result.returncode}): {output[:200]}"
        )
    if want_version and want_version not in output:
        raise BinaryError(
            f"{path} reports {output.splitlines()[0] if output else 'no version'!r}, "
            f"expected {want_version}; kwokctl picks component flags by version. "
            "Supply matching binaries or run `fulcrum build`"
        )
    return output


def _heartbeat(label: str, started: float, done: threading.Event, counter: list[int]) -> None:
    while not done.wait(30):
        elapsed = time.monotonic() - started
        print(
            f"    … {label}: {counter[0]} packages compiled, {elapsed / 60:.1f} min",
            file=sys.stderr,
            flush=True,
        )


def _go_build(component: Component, binary: str, out_dir: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(
            "`go` is not on PATH: install Go >= 1.24 to build the control plane, "
            "or set FULCRUM_BIN_DIR to a directory with prebuilt binaries"
        )
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false")
    env.setdefault("GOTOOLCHAIN", "local")
    cmd = [go, "build", "-v", "-trimpath", "-ldflags", component.ldflags()]
    if component.tags:
        cmd += ["-tags", component.tags]
    cmd += ["-o", str(out_dir / binary), component.commands[binary]]
    started = time.monotonic()
    done = threading.Event()
    counter = [0]
    tail: list[str] = []
    beat = threading.Thread(target=_heartbeat, args=(binary, started, done, counter), daemon=True)
    beat.start()
    with subprocess.Popen(
        cmd,
        cwd=controlplane_dir() / component.module_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            counter[0] += 1
            tail = [*tail[-30:], line.rstrip()]
        proc.wait()
    done.set()
    if proc.returncode != 0:
        details = "\n".join(
            line for line in tail if not line.startswith(("k8s.io/", "github.com/"))
        )
        raise BinaryError(
            f"building {binary} failed (exit {proc.returncode}):\n{details or chr(10).join(tail)}\n"
            "Fix: check that the Go module proxy is reachable (GOPROXY="
            f"{os.environ.get('GOPROXY', 'default')}) and that `go version` is >= 1.24; "
            "or set FULCRUM_BIN_DIR to prebuilt binaries"
        )
    print(
        f"    built {binary} in {(time.monotonic() - started) / 60:.1f} min",
        file=sys.stderr,
        flush=True,
    )


def cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built once: ``build(staging)`` fills a directory beside it that is renamed
    into place when done, so a half-finished build never counts."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        (staging / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _component_dir(component: Component, log: Callable[[str], None]) -> Path:
    def build(staging: Path) -> None:
        for i, binary in enumerate(component.commands, 1):
            log(
                f"[{component.name} {component.version()}] building {binary} "
                f"({i}/{len(component.commands)}) from the Go module proxy"
            )
            _go_build(component, binary, staging)
            check_binary(staging / binary, want_version=expected_version(binary))

    return cached_build(cache_dir() / "bin" / component.cache_key(), build)


def ensure_binaries(
    log: Callable[[str], None] | None = None, *, components: tuple[Component, ...] = COMPONENTS
) -> dict[str, Path]:
    """A path for every binary of ``components`` (the control plane's by default), building
    what is neither cached nor supplied."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    supplied = os.environ.get("FULCRUM_BIN_DIR")
    found: dict[str, Path] = {}
    if supplied:
        bin_dir = Path(supplied)
        if not bin_dir.is_dir():
            raise BinaryError(f"FULCRUM_BIN_DIR={supplied} is not a directory; fix or unset it")
        for component in components:
            for name in component.commands:
                path = bin_dir / name
                if path.exists():
                    check_binary(path, want_version=expected_version(name))
                    found[name] = path
    for component in components:
        missing = [name for name in component.commands if name not in found]
        if not missing:
            continue
        directory = _component_dir(component, say)
        for name in missing:
            found[name] = directory / name
    return found


def ensure_binary(name: str, log: Callable[[str], None] | None = None) -> Path:
    """One binary (e.g. ``helm``): ``FULCRUM_BIN_DIR``'s if it has it, else built and cached."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    supplied = os.environ.get("FULCRUM_BIN_DIR")
    if supplied and (Path(supplied) / name).exists():
        check_binary(Path(supplied) / name, want_version=expected_version(name))
        return Path(supplied) / name
    (component,) = [c for c in COMPONENTS if name in c.commands]
    return _component_dir(component, say) / name
