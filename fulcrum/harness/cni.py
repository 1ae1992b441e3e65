"""A real node's pod network: Fulcrum's CNI IPAM plugin, built and cached, and the conflist that
uses it.

``fulcrum-ipam`` (``node/ipam/``, a Go module with no requirements) gives a pod of an IP pool
the address Fulcrum assigned at bind and hands every other pod to host-local; see
docs/networking.md. It is built like the control plane's binaries, into
``<cache>/bin/fulcrum-ipam-<hash>/``, where the hash covers the module's go.mod and Go files, so
an edit to the plugin is a rebuild and nothing else is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fulcrum.harness.binaries import REPO_ROOT, BinaryError, cache_dir, cached_build

PLUGIN = "fulcrum-ipam"
ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
# Debian's containernetworking-plugins 1.1.1 (bridge, host-local) speaks CNI 0.1.0 to 1.0.0.
CNI_VERSION = "1.0.0"


def module_dir() -> Path:
    return REPO_ROOT / "node" / "ipam"


def source_hash() -> str:
    """10 hex digits of sha256 over go.mod and the *.go files, each named, in name order."""
    digest = hashlib.sha256()
    directory = module_dir()
    for path in sorted([directory / "go.mod", *directory.glob("*.go")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def ensure_ipam_plugin(log: Callable[[str], None]) -> Path:
    """The path of a ``fulcrum-ipam`` built from this tree's ``node/ipam``, building it once
    (static: ``CGO_ENABLED=0``) into the cache."""
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")

    def build(staging: Path) -> None:
        if go is None:
            raise BinaryError(
                f"`go` is not on PATH: install Go >= 1.24 to build {PLUGIN} from {module_dir()}"
            )
        log(f"[{PLUGIN}] building from {module_dir()}")
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false")
        env.setdefault("GOTOOLCHAIN", "local")
        cmd = [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / PLUGIN), "."]
        result = subprocess.run(
            cmd, cwd=module_dir(), env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BinaryError(
                f"building {PLUGIN} failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()[-2000:]}\n"
                f"Fix: `cd {module_dir()} && go vet .` shows the problem; Go >= 1.24 is needed"
            )

    return cached_build(cache_dir() / "bin" / f"{PLUGIN}-{source_hash()}", build) / PLUGIN


def node_conflist(
    *,
    bridge: str,
    subnet: str,
    gateway: str,
    range_start: str,
    range_end: str,
    pool_cidr: str,
    data_dir: str,
    handover_seconds: float = 30,
) -> dict[str, Any]:
    """The conflist of a real node: Debian's bridge on the shared ``bridge``, whose IPAM is
    ``fulcrum-ipam`` over host-local.

    ``subnet`` is the whole pod network (``FULCRUM_POD_CIDR``), so every node's pods share one
    L2 segment and gateway; host-local hands out only this node's ``range_start``..``range_end``,
    and ``pool_cidr`` (``FULCRUM_POOL_CIDR``, kept out of every node's range) is where IP pools'
    addresses come from. ``data_dir`` holds both plugins' state, ``<data_dir>/fulcrum-ipam`` and
    ``<data_dir>/host-local``. A pool address still held by a predecessor's sandbox is waited
    for up to ``handover_seconds``. The plugin is listed a second time, chained after bridge,
    to announce a pool address on the new interface (gratuitous ARP).
    """
    delegate = {
        "type": "host-local",
        "ranges": [
            [
                {
                    "subnet": subnet,
                    "rangeStart": range_start,
                    "rangeEnd": range_end,
                    "gateway": gateway,
                }
            ]
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dataDir": f"{data_dir}/host-local",
    }
    return {
        "cniVersion": CNI_VERSION,
        "name": "fulcrum",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "capabilities": {ANNOTATIONS_CAPABILITY: True},
                "ipam": {
                    "type": PLUGIN,
                    "poolCIDRs": [pool_cidr],
                    "dataDir": f"{data_dir}/{PLUGIN}",
                    "handoverSeconds": handover_seconds,
                    "delegate": delegate,
                },
            },
            {"type": PLUGIN, "poolCIDRs": [pool_cidr]},
        ],
    }
