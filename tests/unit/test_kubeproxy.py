"""The real nodes' Service network (kube-proxy's config, the DNS server's, the DNS client that
waits for it) and the chart test's kube-scheduler image, without starting anything."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulcrum.harness import images, kubeproxy
from tests import chart_images


def test_kube_proxy_writes_no_sysctl_and_listens_on_loopback_only() -> None:
    config = kubeproxy.kube_proxy_config(
        Path("/k"), node="real-1", cluster_cidr="10.244.0.0/16", metrics_port=1, healthz_port=2
    )
    assert (config["mode"], config["hostnameOverride"]) == ("iptables", "real-1")
    assert config["clusterCIDR"] == "10.244.0.0/16"
    assert (config["metricsBindAddress"], config["healthzBindAddress"]) == (
        "127.0.0.1:1",
        "127.0.0.1:2",
    )
    # zero: leave the host's conntrack table size and timeouts; no route_localnet
    assert config["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }
    assert config["iptables"]["localhostNodePorts"] is False


def test_dnsmasq_answers_only_its_records_on_its_address(tmp_path: Path) -> None:
    text = kubeproxy.dnsmasq_config(tmp_path, "10.244.0.1", {kubeproxy.KUBERNETES_NAME: "10.0.0.1"})
    lines = text.splitlines()
    assert "listen-address=10.244.0.1" in lines and "bind-interfaces" in lines
    assert "no-resolv" in lines  # no upstream: nothing leaves the machine
    assert "local=/cluster.local/" in lines  # NXDOMAIN for the rest, so the search list goes on
    assert "host-record=kubernetes.default.svc.cluster.local,10.0.0.1" in lines


def _answer(query: bytes, rcode: int, address: str | None) -> bytes:
    """A reply to ``query``: its question, and an A record by a pointer to it."""
    ident = struct.unpack("!H", query[:2])[0]
    answers = 1 if address else 0
    reply = struct.pack("!6H", ident, 0x8180 | rcode, 1, answers, 0, 0) + query[12:]
    if address:
        reply += struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(address)
    return reply


@pytest.fixture
def server() -> Iterator[tuple[int, dict[str, str]]]:
    """A DNS server on a loopback port answering the names of its dict, NXDOMAIN otherwise."""
    records: dict[str, str] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            labels, offset = [], 12
            while query[offset]:
                labels.append(query[offset + 1 : offset + 1 + query[offset]].decode())
                offset += 1 + query[offset]
            address = records.get(".".join(labels))
            sock.sendto(_answer(query, 0 if address else 3, address), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], records
    stop.set()
    thread.join(2)
    sock.close()


def test_resolve_reads_the_a_record_behind_a_compressed_name(
    server: tuple[int, dict[str, str]],
) -> None:
    port, records = server
    records[kubeproxy.KUBERNETES_NAME] = "10.0.0.1"
    assert kubeproxy.resolve("127.0.0.1", kubeproxy.KUBERNETES_NAME, port=port) == "10.0.0.1"
    assert kubeproxy.resolve("127.0.0.1", "other.default.svc.cluster.local", port=port) is None


def test_resolve_without_a_server_is_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never answering
        assert kubeproxy.resolve("127.0.0.1", "x.cluster.local", port=port, timeout=0.2) is None


def test_an_api_server_advertised_on_loopback_is_refused_with_the_fix() -> None:
    kubeproxy.check_reachable(["192.0.2.2"])
    with pytest.raises(kubeproxy.ServiceNetworkError, match="--advertise-address"):
        kubeproxy.check_reachable(["127.0.0.1"])
    with pytest.raises(kubeproxy.ServiceNetworkError, match="no endpoint"):
        kubeproxy.check_reachable([])


def test_a_dynamic_binarys_image_holds_its_libraries_and_loader() -> None:
    binary = Path("/bin/ls")
    if images.is_static(binary):
        pytest.skip("/bin/ls is static here")
    image = chart_images.binary_image(binary)
    entries = {e.path: e for e in image.layers[0].entries}
    assert isinstance(entries["/usr/local/bin/ls"], images.File)
    libraries = chart_images.shared_libraries(binary)
    assert any("ld-linux" in str(lib) for lib in libraries), libraries  # the loader
    for library in libraries:
        entry = entries[str(library)]
        assert isinstance(entry, images.File) and entry.content == library.resolve()
    assert entries["/tmp"] == images.Directory("/tmp", 0o1777)
    assert (image.entrypoint, image.user) == (("/usr/local/bin/ls",), "65532:65532")
