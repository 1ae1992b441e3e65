"""A wrong or missing binary, a port in use, a failed build: a message naming cause and fix."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fulcrum.harness import binaries, cluster, processes


def test_a_binary_reporting_the_wrong_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho Kubernetes v1.20.0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FULCRUM_BIN_DIR", str(tmp_path))
    with pytest.raises(binaries.BinaryError, match=r"expected 1\.34\.4.*fulcrum build"):
        binaries.ensure_binaries()


def test_a_binary_that_is_not_executable_says_chmod(tmp_path: Path) -> None:
    path = tmp_path / "etcd"
    path.write_text("")
    with pytest.raises(binaries.BinaryError, match="chmod"):
        binaries.check_binary(path)


def test_a_missing_bin_dir_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULCRUM_BIN_DIR", "/nonexistent/fulcrum-bins")
    with pytest.raises(binaries.BinaryError, match="FULCRUM_BIN_DIR=/nonexistent"):
        binaries.ensure_binaries()


def test_a_failed_build_shows_go_output_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "controlplane"
    for component in binaries.COMPONENTS:
        (source / component.module_dir).mkdir(parents=True)
        real = binaries.REPO_ROOT / "controlplane" / component.module_dir
        for name in ("go.mod", "go.sum"):
            (source / component.module_dir / name).write_text((real / name).read_text())
    (source / "etcd" / "go.mod").write_text(
        "module broken\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v3.6.999\n"
    )
    monkeypatch.setenv("FULCRUM_CONTROLPLANE_SRC", str(source))
    monkeypatch.setenv("FULCRUM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GOPROXY", "off")
    monkeypatch.setenv("GOFLAGS", "")
    with pytest.raises(binaries.BinaryError, match=r"building etcd failed(.|\n)*Go module proxy"):
        binaries._component_dir(binaries.ETCD, lambda _: None)
    assert not (tmp_path / "cache" / "bin" / binaries.ETCD.cache_key()).exists()


def test_an_extender_port_in_use_stops_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FULCRUM_CACHE_DIR", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(cluster.ClusterError, match=f"port {port} is already in use"):
            cluster.up("port-test", extender_port=port)
    assert not cluster.state_dir("port-test").exists()


def test_an_extender_configuration_naming_no_installed_policy_stops_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FULCRUM_CACHE_DIR", str(tmp_path))
    config = tmp_path / "extender.yaml"
    config.write_text("prioritize: [{policy: TenantAfinity}]\n")
    with pytest.raises(cluster.ClusterError) as refused:
        cluster.up("config-test", extender_config=config)
    assert str(refused.value).startswith(
        "extender configuration: prioritize[0].policy: unknown policy 'TenantAfinity'; "
        "available: Archimedes"
    )
    with pytest.raises(cluster.ClusterError, match=r"--python .*nope: not an executable"):
        cluster.up("config-test", python=tmp_path / "nope")
    assert not cluster.state_dir("config-test").exists()


def test_an_unknown_cluster_says_how_to_create_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FULCRUM_CACHE_DIR", str(tmp_path))
    with pytest.raises(cluster.ClusterError, match="fulcrum cluster up --name ghost"):
        cluster.env_exports("ghost")


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        (b"/s/clusters/rel", True),
        (b"/s/clusters/rel/etcd", True),
        (b"--config=/s/clusters/rel/fulcrum-scheduler.yaml", True),
        (b"--kubeconfig=/s/clusters/rel2/kubeconfig", False),
        (b"/s/clusters/rel2", False),
        (b"/s/clusters/relative/x", False),
        (b"--urls=http://a,/s/clusters/rel/x", True),
    ],
)
def test_a_cluster_is_named_only_as_a_whole_path_component(arg: bytes, named: bool) -> None:
    assert processes.mentions(arg, b"/s/clusters/rel") is named


def test_processes_of_a_cluster_whose_name_extends_anothers_are_not_its_own(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    rel, rel2 = tmp_path / "rel", tmp_path / "rel2"
    script = "import time; time.sleep(60)"
    mine = subprocess.Popen([sys.executable, "-c", script, f"--config={rel}/x.yaml"])
    other = subprocess.Popen([sys.executable, "-c", script, f"--config={rel2}/x.yaml"])
    try:
        # a child shows its own command line only once it has exec'd: on a busy machine, that
        # can be after Popen returns (this failed once in CI)
        deadline = time.monotonic() + 10
        while not all(
            f"{rel}".encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in (mine, other)
        ):
            assert time.monotonic() < deadline, "the children never exec'd"
            time.sleep(0.01)
        found = set(processes.processes_under(rel))
        assert mine.pid in found
        assert other.pid not in found
    finally:
        mine.kill()
        other.kill()
        mine.wait()
        other.wait()
