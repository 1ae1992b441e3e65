"""fulcrum-ipam, the CNI IPAM plugin in node/ipam, run as the runtime runs it: built by the
harness, executed with CNI environment variables and a network config on stdin, over Debian's
real host-local as its delegate. IPAM touches no network namespace, so CNI_NETNS is /dev/null
and every piece of state lives in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fulcrum.harness import cni
from fulcrum.harness.binaries import BinaryError

HOST_LOCAL = Path("/usr/lib/cni/host-local")
POOL_IP = "10.244.128.7"
GATEWAY = "10.244.0.1"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run these tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def plugin() -> Path:
    if not HOST_LOCAL.is_file():
        _unavailable(f"{HOST_LOCAL} missing: apt-get install containernetworking-plugins")
    try:
        return cni.ensure_ipam_plugin(lambda msg: None)
    except BinaryError as exc:
        _unavailable(f"cannot build fulcrum-ipam: {exc}")
        raise


def node_conflist(tmp_path: Path, handover: float = 30) -> dict[str, Any]:
    """The harness's conflist for node 1, its state in ``tmp_path``."""
    return cni.node_conflist(
        bridge="fulcrum0",
        subnet="10.244.0.0/16",
        gateway=GATEWAY,
        range_start="10.244.1.2",
        range_end="10.244.1.254",
        pool_cidr="10.244.128.0/17",
        data_dir=str(tmp_path),
        handover_seconds=handover,
    )


def conf(
    tmp_path: Path, ip: str | None = None, version: str = "1.0.0", handover: float = 0
) -> dict[str, Any]:
    """What bridge hands its IPAM plugin: the node's conflist entry, with the runtimeConfig
    libcni adds for the pod-annotations capability (a held address waited for ``handover``
    seconds)."""
    conflist = node_conflist(tmp_path, handover)
    plugin = dict(conflist["plugins"][0], cniVersion=version, name=conflist["name"])
    annotations = {"fulcrum.io/ip-pool": "db"} | ({"fulcrum.io/assigned-ip": ip} if ip else {})
    plugin["runtimeConfig"] = {cni.ANNOTATIONS_CAPABILITY: annotations}
    return plugin


def call(
    plugin: Path, command: str, stdin: dict[str, Any] | str, container: str = "c1"
) -> tuple[int, dict[str, Any]]:
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=container,
        CNI_NETNS="/dev/null",
        CNI_IFNAME="eth0",
        CNI_PATH=f"{plugin.parent}:{HOST_LOCAL.parent}",
    )
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    done = subprocess.run(
        [str(plugin)], input=text, env=env, capture_output=True, text=True, timeout=30
    )
    assert "panic" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def test_pool_address_gets_the_pod_subnets_prefix_and_gateway(plugin: Path, tmp_path: Path) -> None:
    rc, result = call(plugin, "ADD", conf(tmp_path, POOL_IP))
    assert rc == 0, result
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"] == [{"address": f"{POOL_IP}/16", "gateway": GATEWAY}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    assert (tmp_path / "fulcrum-ipam" / POOL_IP).read_text() == "c1\neth0\n/dev/null\n"
    assert call(plugin, "CHECK", conf(tmp_path, POOL_IP))[0] == 0


def test_older_cni_version_result_names_the_family(plugin: Path, tmp_path: Path) -> None:
    rc, result = call(plugin, "ADD", conf(tmp_path, POOL_IP, version="0.4.0"))
    assert rc == 0, result
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"] == [{"version": "4", "address": f"{POOL_IP}/16", "gateway": GATEWAY}]


def test_without_annotation_host_local_assigns_from_the_nodes_range(
    plugin: Path, tmp_path: Path
) -> None:
    rc, result = call(plugin, "ADD", conf(tmp_path))
    assert rc == 0, result
    assert result["ips"][0]["address"] == "10.244.1.2/16"
    assert result["ips"][0]["gateway"] == GATEWAY
    assert (tmp_path / "host-local" / "fulcrum" / "10.244.1.2").exists()
    assert not [p for p in (tmp_path / "fulcrum-ipam").iterdir() if p.name != "lock"]


def test_del_frees_both_kinds_of_address_and_twice_is_fine(plugin: Path, tmp_path: Path) -> None:
    assert call(plugin, "ADD", conf(tmp_path, POOL_IP), "pooled")[0] == 0
    assert call(plugin, "ADD", conf(tmp_path), "plain")[0] == 0
    for container in ("pooled", "plain"):
        for _ in range(2):
            assert call(plugin, "DEL", conf(tmp_path), container) == (0, {})
    assert not (tmp_path / "fulcrum-ipam" / POOL_IP).exists()
    assert not (tmp_path / "host-local" / "fulcrum" / "10.244.1.2").exists()
    assert call(plugin, "ADD", conf(tmp_path, POOL_IP), "next")[0] == 0  # free again


def test_del_releases_the_address_when_the_runtime_passes_the_cached_result(
    plugin: Path, tmp_path: Path
) -> None:
    """On DEL libcni gives every plugin of the chain the cached result as prevResult, bridge
    too, and bridge passes its stdin on to its IPAM plugin: that is still IPAM, not the
    chained announcement, and must release the address."""
    code, result = call(plugin, "ADD", conf(tmp_path, POOL_IP))
    assert code == 0
    assert call(plugin, "DEL", conf(tmp_path, POOL_IP) | {"prevResult": result})[0] == 0
    assert not (tmp_path / "fulcrum-ipam" / POOL_IP).exists()


def test_held_pool_address_is_try_again_later_naming_the_holder(
    plugin: Path, tmp_path: Path
) -> None:
    assert call(plugin, "ADD", conf(tmp_path, POOL_IP), "first")[0] == 0
    rc, error = call(plugin, "ADD", conf(tmp_path, POOL_IP), "second")
    assert rc == 1
    assert error["code"] == 11
    assert "first" in error["msg"] and POOL_IP in error["msg"]
    assert call(plugin, "ADD", conf(tmp_path, POOL_IP), "first")[0] == 0  # a retried ADD


def test_a_held_address_is_handed_over_when_its_holder_lets_go(
    plugin: Path, tmp_path: Path
) -> None:
    """A rebuilt pod's sandbox may ask for the address while its predecessor's still holds it:
    the ADD waits for the predecessor's DEL (within handoverSeconds) instead of failing."""
    assert call(plugin, "ADD", conf(tmp_path, POOL_IP), "old")[0] == 0
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="new", CNI_NETNS="/dev/null")
    env |= {"CNI_IFNAME": "eth0", "CNI_PATH": f"{plugin.parent}:{HOST_LOCAL.parent}"}
    waiting = subprocess.Popen(
        [str(plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    assert waiting.stdin is not None
    waiting.stdin.write(json.dumps(conf(tmp_path, POOL_IP, handover=20)))
    waiting.stdin.close()
    time.sleep(0.5)
    assert waiting.poll() is None  # still waiting for "old"
    assert call(plugin, "DEL", conf(tmp_path, POOL_IP), "old")[0] == 0
    assert waiting.wait(timeout=10) == 0
    assert waiting.stdout is not None
    assert json.loads(waiting.stdout.read())["ips"][0]["address"] == f"{POOL_IP}/16"
    assert (tmp_path / "fulcrum-ipam" / POOL_IP).read_text().split()[0] == "new"


def test_racing_adds_of_one_address_give_it_to_exactly_one(plugin: Path, tmp_path: Path) -> None:
    """The flock on the state directory: eight sandboxes asking at once, one wins."""
    stdin = json.dumps(conf(tmp_path, POOL_IP))
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_NETNS="/dev/null", CNI_IFNAME="eth0")
    env["CNI_PATH"] = f"{plugin.parent}:{HOST_LOCAL.parent}"
    procs = [
        subprocess.Popen(
            [str(plugin)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env, CNI_CONTAINERID=f"c{i}"),
            text=True,
        )
        for i in range(8)
    ]
    outputs = [json.loads(p.communicate(stdin, timeout=30)[0]) for p in procs]
    assert sorted(p.returncode for p in procs) == [0] + [1] * 7
    assert sorted(o.get("code", 0) for o in outputs) == [0] + [11] * 7


def test_address_outside_the_pool_cidrs_names_the_fix(plugin: Path, tmp_path: Path) -> None:
    rc, error = call(plugin, "ADD", conf(tmp_path, "10.244.1.9"))
    assert rc == 1
    assert error["code"] == 7
    assert "10.244.1.9" in error["msg"] and "10.244.128.0/17" in error["msg"]
    assert "FULCRUM_POOL_CIDR" in error["msg"]


def test_malformed_annotation_is_invalid_config(plugin: Path, tmp_path: Path) -> None:
    rc, error = call(plugin, "ADD", conf(tmp_path, "10.244.128.300"))
    assert rc == 1
    assert error["code"] == 7
    assert "fulcrum.io/assigned-ip" in error["msg"]


@pytest.mark.parametrize("stdin", ["{not json", "[]", "null", '{"cniVersion": "1.0.0"}'])
def test_malformed_stdin_is_an_error_not_a_crash(plugin: Path, stdin: str) -> None:
    rc, error = call(plugin, "ADD", stdin)
    assert rc == 1
    assert error["code"] in (1, 6, 7) and error["msg"]


def test_version(plugin: Path) -> None:
    rc, result = call(plugin, "VERSION", '{"cniVersion": "1.0.0"}')
    assert rc == 0
    assert {"0.4.0", "1.0.0"} <= set(result["supportedVersions"])


BRIDGE_SCRIPT = """
set -e
cd "$1"
touch pool-ns plain-ns
unshare --net=pool-ns true
unshare --net=plain-ns true
CNI_COMMAND=ADD CNI_CONTAINERID=pooled CNI_NETNS=pool-ns /usr/lib/cni/bridge < pool.json > out.json
# a neighbour cache still holding the address's previous MAC, then the chained announcement
ip neigh replace 10.244.128.7 lladdr 02:00:00:00:00:01 dev fulcrum0 nud stale
python3 -c 'import json; c = json.load(open("chained.json"));
c["prevResult"] = json.load(open("out.json")); print(json.dumps(c))' > chained-in.json
CNI_COMMAND=ADD CNI_CONTAINERID=pooled CNI_NETNS=pool-ns "$PLUGIN" < chained-in.json >/dev/null
sleep 0.2
echo "neighbour $(ip neigh show 10.244.128.7 dev fulcrum0)"
echo "container $(nsenter --net=pool-ns ip -o link show eth0)"
CNI_COMMAND=ADD CNI_CONTAINERID=plain CNI_NETNS=plain-ns /usr/lib/cni/bridge < plain.json >/dev/null
nsenter --net=pool-ns ip -o -4 addr show eth0
nsenter --net=plain-ns python3 -c '
import socket; s = socket.socket(); s.bind(("0.0.0.0", 8080)); s.listen(); s.settimeout(5)
print("accepted from", s.accept()[1][0])' &
sleep 0.5
nsenter --net=pool-ns python3 -c 'import socket; socket.create_connection(("10.244.1.2", 8080), 5)'
wait
CNI_COMMAND=DEL CNI_CONTAINERID=pooled CNI_NETNS=pool-ns /usr/lib/cni/bridge < pool.json
CNI_COMMAND=DEL CNI_CONTAINERID=plain CNI_NETNS=plain-ns /usr/lib/cni/bridge < plain.json
"""


def test_bridge_puts_the_pool_address_on_the_pods_interface(plugin: Path, tmp_path: Path) -> None:
    """Debian's bridge with the node conflist, in a private network namespace of its own
    (nothing on the host changes): a pod of a pool and a host-local pod, on one bridge, talk."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter to make network namespaces")
    for name, ip in (("pool", POOL_IP), ("plain", None)):
        (tmp_path / f"{name}.json").write_text(json.dumps(conf(tmp_path, ip)))
    chained = node_conflist(tmp_path)
    (tmp_path / "chained.json").write_text(
        json.dumps(dict(chained["plugins"][1], cniVersion="1.0.0", name="fulcrum"))
    )
    env = dict(os.environ, CNI_IFNAME="eth0", CNI_PATH=f"{plugin.parent}:{HOST_LOCAL.parent}")
    env["PLUGIN"] = str(plugin)
    isolated = ["unshare", "--net", "--mount", "--propagation", "private"]
    done = subprocess.run(
        [*isolated, "bash", "-c", BRIDGE_SCRIPT, "bridge-test", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"inet {POOL_IP}/16" in done.stdout
    assert f"accepted from {POOL_IP}" in done.stdout
    mac = done.stdout.split("link/ether ")[1].split()[0]
    neighbour = done.stdout.split("neighbour ")[1].splitlines()[0]
    assert f"lladdr {mac}" in neighbour, done.stdout  # the stale MAC replaced by the announcement
    assert not (tmp_path / "fulcrum-ipam" / POOL_IP).exists()
