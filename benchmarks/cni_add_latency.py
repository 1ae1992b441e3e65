"""What fulcrum-ipam adds to a pod's network set-up: the latency of a CNI IPAM ADD and DEL, per
call, for host-local alone and for an IPAM plugin in front of it (a benchmark: it asserts
nothing).

Five variants, each called ``--calls`` times per command, round-robin (one ADD and one DEL of
every variant in turn, so drift on a shared machine hits them alike):

- host-local alone (Debian's /usr/lib/cni/host-local);
- fulcrum-ipam delegating to host-local (a pod of no IP pool);
- fulcrum-ipam's pool path (a pod with fulcrum.io/assigned-ip);
- benchmarks/cni_ipam_python.py delegating, run by this interpreter (the same plugin in Python);
- cni_ipam_python.py's pool path.

Each call is an exec of the plugin with the CNI environment and the network config on stdin,
timed from here, as the runtime's libcni would. State lives in a temporary directory that is
removed at the end; nothing is written into the repository.

    .venv/bin/python benchmarks/cni_add_latency.py [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))
from fulcrum.harness import cni

HOST_LOCAL = Path("/usr/lib/cni/host-local")
PYTHON_PLUGIN = Path(__file__).with_name("cni_ipam_python.py")
POOL_IP = "10.244.128.7"


def netconf(state: Path, *, wrapped: bool, pool_ip: str | None) -> dict[str, Any]:
    """The config bridge hands its IPAM plugin: the node conflist's, or host-local's alone."""
    conflist = cni.node_conflist(
        bridge="fulcrum0",
        subnet="10.244.0.0/16",
        gateway="10.244.0.1",
        range_start="10.244.1.2",
        range_end="10.244.1.254",
        pool_cidr="10.244.128.0/17",
        data_dir=str(state),
    )
    conf = dict(conflist["plugins"][0], cniVersion=conflist["cniVersion"], name="bench")
    if not wrapped:
        conf["ipam"] = conf["ipam"]["delegate"]
    annotations = {"fulcrum.io/assigned-ip": pool_ip} if pool_ip else {}
    conf["runtimeConfig"] = {cni.ANNOTATIONS_CAPABILITY: annotations}
    return conf


def timed_call(argv: list[str], command: str, container: str, stdin: str, path: str) -> float:
    """Milliseconds of one plugin exec; a failed call stops the benchmark with its output."""
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=container,
        CNI_NETNS="/dev/null",
        CNI_IFNAME="eth0",
        CNI_PATH=path,
    )
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} {command} failed: {done.stdout}{done.stderr}")
    return elapsed


def variants(plugin: Path, state: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, stdin) of each variant, each with its own state directory."""
    specs: dict[str, tuple[list[str], bool, str | None]] = {
        "host-local alone": ([str(HOST_LOCAL)], False, None),
        "fulcrum-ipam -> host-local": ([str(plugin)], True, None),
        "fulcrum-ipam pool": ([str(plugin)], True, POOL_IP),
        "python -> host-local": ([sys.executable, str(PYTHON_PLUGIN)], True, None),
        "python pool": ([sys.executable, str(PYTHON_PLUGIN)], True, POOL_IP),
    }
    out = {}
    for i, (name, (argv, wrapped, ip)) in enumerate(specs.items()):
        conf = netconf(state / str(i), wrapped=wrapped, pool_ip=ip)
        out[name] = (argv, json.dumps(conf))
    return out


def measure(
    runs: dict[str, tuple[list[str], str]],
    calls: int,
    path: str,
    progress: Callable[[str], None],
) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {n: {"ADD": [], "DEL": []} for n in runs}
    for i in range(calls):
        for name, (argv, stdin) in runs.items():
            container = f"bench-{i}"
            times[name]["ADD"].append(timed_call(argv, "ADD", container, stdin, path))
            times[name]["DEL"].append(timed_call(argv, "DEL", container, stdin, path))
        if (i + 1) % max(1, calls // 10) == 0:
            progress(f"  {i + 1}/{calls} rounds")
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def table(times: dict[str, dict[str, list[float]]]) -> str:
    base = {cmd: statistics.median(times["host-local alone"][cmd]) for cmd in ("ADD", "DEL")}
    lines = [
        f"{'variant':<28} {'ADD median':>10} {'ADD p90':>8} {'DEL median':>10} {'DEL p90':>8}"
        f" {'ADD x':>6} {'DEL x':>6}",
    ]
    for name, by_cmd in times.items():
        add, delete = by_cmd["ADD"], by_cmd["DEL"]
        lines.append(
            f"{name:<28} {statistics.median(add):>10.2f} {p90(add):>8.2f}"
            f" {statistics.median(delete):>10.2f} {p90(delete):>8.2f}"
            f" {statistics.median(add) / base['ADD']:>6.2f}"
            f" {statistics.median(delete) / base['DEL']:>6.2f}"
        )
    lines.append("(milliseconds per exec; x = median over host-local alone's median)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="ADDs (and DELs) per variant")
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2 (a p90 needs two samples)")
    if not HOST_LOCAL.is_file():
        sys.exit(f"{HOST_LOCAL} missing: apt-get install containernetworking-plugins")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    plugin = cni.ensure_ipam_plugin(say)
    with tempfile.TemporaryDirectory(prefix="cni-bench-") as tmp:
        runs = variants(plugin, Path(tmp))
        say(f"{len(runs)} variants x {args.calls} ADD+DEL, round-robin; python: {sys.executable}")
        times = measure(runs, args.calls, f"{plugin.parent}:{HOST_LOCAL.parent}", say)
    print(table(times))


if __name__ == "__main__":
    main()
