"""fulcrum-ipam's ADD and DEL written as a Python CNI plugin would be (stdlib only), for
benchmarks/cni_add_latency.py alone: what the Go plugin's start-up saves is measured against it.

It does what node/ipam/main.go does on its pool path (annotation, poolCIDRs and subnet checks, a
flock on the state directory, an atomic record) and its delegate path (exec the delegate from
CNI_PATH with ``ipam`` replaced). Errors are plain CNI error objects; CHECK and the 0.x result
formats are left out, since the benchmark does not call them.

    CNI_COMMAND=ADD ... python benchmarks/cni_ipam_python.py < netconf.json
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ANNOTATION = "fulcrum.io/assigned-ip"
CAPABILITY = "io.kubernetes.cri.pod-annotations"


class CNIError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def held_by(state: Path, holder: str) -> str:
    for path in state.iterdir():
        recorded = path.name != "lock" and not path.name.startswith(".")  # not .tmp-*
        if recorded and path.read_text().strip() == holder:
            return path.name
    return ""


def add(conf: dict[str, Any], state: Path, raw: str, holder: str) -> dict[str, Any]:
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise CNIError(7, f"pod annotation {ANNOTATION}={raw!r} is not an IP address") from None
    pools = [ipaddress.ip_network(c) for c in conf["ipam"].get("poolCIDRs", [])]
    if not any(addr in p for p in pools):
        raise CNIError(7, f"pool address {addr} is outside poolCIDRs; see FULCRUM_POOL_CIDR")
    delegate = conf["ipam"]["delegate"]
    for r in (r for rs in delegate.get("ranges", []) for r in rs):
        subnet = ipaddress.ip_network(r["subnet"])
        if addr in subnet:
            gateway = r.get("gateway") or str(subnet.network_address + 1)
            break
    else:
        raise CNIError(7, f"pool address {addr} lies in no subnet of ipam.delegate.ranges")
    path = state / str(addr)
    other = path.read_text().strip() if path.exists() else ""
    if other and other != holder:
        raise CNIError(11, f"pool address {addr} is held by container {other.split()[0]}")
    tmp = state / f".tmp-{addr}"
    tmp.write_text(holder + "\n")
    tmp.rename(path)
    default = "0.0.0.0/0" if addr.version == 4 else "::/0"
    return {
        "cniVersion": conf["cniVersion"],
        "ips": [{"address": f"{addr}/{subnet.prefixlen}", "gateway": gateway}],
        "routes": delegate.get("routes") or [{"dst": default, "gw": gateway}],
        "dns": {},
    }


def delegate_to(conf: dict[str, Any]) -> int:
    delegate = conf["ipam"]["delegate"]
    for directory in os.environ.get("CNI_PATH", "").split(":"):
        binary = Path(directory) / delegate["type"]
        if binary.is_file():
            stdin = json.dumps(dict(conf, ipam=delegate))
            return subprocess.run([str(binary)], input=stdin.encode(), check=False).returncode
    raise CNIError(999, f"delegate {delegate['type']} is not in CNI_PATH")


def run(command: str, conf: dict[str, Any]) -> int:
    holder = os.environ["CNI_CONTAINERID"] + "\n" + os.environ["CNI_IFNAME"]
    state = Path(conf["ipam"].get("dataDir") or f"/var/lib/cni/fulcrum-ipam/{conf['name']}")
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held = held_by(state, holder)
        raw = (conf.get("runtimeConfig", {}).get(CAPABILITY) or {}).get(ANNOTATION)
        if command == "ADD" and raw is not None:
            print(json.dumps(add(conf, state, raw, holder)))
            return 0
        if command == "DEL" and held:
            (state / held).unlink(missing_ok=True)
            return 0
    return delegate_to(conf)


def main() -> int:
    try:
        conf = json.loads(sys.stdin.read())
        return run(os.environ.get("CNI_COMMAND", ""), conf)
    except CNIError as exc:
        error = {"cniVersion": "1.0.0", "code": exc.code, "msg": exc.msg}
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        error = {"cniVersion": "1.0.0", "code": 999, "msg": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(error))
    return 1


if __name__ == "__main__":
    sys.exit(main())
