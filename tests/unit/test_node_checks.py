"""The node checks (``node/checks.py``) against fake ``/proc`` trees: each check at each
severity, what it says when it cannot read, and the plugin as the agent drives it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node import checks
from node.check_thresholds import SPECS, ThresholdError, Thresholds
from node.checks import NodeChecks
from node.plugin import CheckResult, Severity

ERROR, ALARM, WARN, INFO = Severity.ERROR, Severity.ALARM, Severity.WARN, Severity.INFO
DEFAULTS = Thresholds.load()


def write(root: Path, path: str, text: str | bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)


def fake_node(
    root: Path,
    *,
    load1: float = 0.5,
    cpus: int = 4,
    tasks: int = 300,
    mem_total_mib: int = 16384,
    mem_available_mib: int = 8192,
    pid_max: int = 4194304,
    threads_max: int | None = 126000,
    file_nr: tuple[int, int, int] = (1000, 0, 1000000),
    conntrack: tuple[int, int] | None = (100, 262144),
    osrelease: str = "6.1.0-18-amd64",
    cgroup2: bool = True,
    kubelets: Sequence[tuple[int, list[str]]] = (),
) -> Path:
    """A node's /proc and /sys as the checks read them, under ``root``."""
    write(root, "/proc/loadavg", f"{load1:.2f} 0.40 0.30 2/{tasks} 12345\n")
    write(root, "/proc/stat", "cpu  1 2 3\n" + "".join(f"cpu{i} 1 2 3\n" for i in range(cpus)))
    write(
        root,
        "/proc/meminfo",
        f"MemTotal:       {mem_total_mib * 1024} kB\nMemFree:  1 kB\n"
        f"MemAvailable:   {mem_available_mib * 1024} kB\n",
    )
    write(root, "/proc/sys/kernel/pid_max", f"{pid_max}\n")
    if threads_max is not None:
        write(root, "/proc/sys/kernel/threads-max", f"{threads_max}\n")
    write(root, "/proc/sys/fs/file-nr", "\t".join(map(str, file_nr)) + "\n")
    write(root, "/proc/sys/fs/file-max", f"{file_nr[2]}\n")
    if conntrack is not None:
        write(root, "/proc/sys/net/netfilter/nf_conntrack_count", f"{conntrack[0]}\n")
        write(root, "/proc/sys/net/netfilter/nf_conntrack_max", f"{conntrack[1]}\n")
    write(root, "/proc/sys/kernel/osrelease", osrelease + "\n")
    (root / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
    if cgroup2:
        write(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n")
    write(root, "/proc/1/cmdline", b"/sbin/init\0")
    for pid, args in kubelets:
        write(root, f"/proc/{pid}/cmdline", "\0".join(args).encode() + b"\0")
    return root


def statvfs(
    *, used_pct: float = 40.0, inodes_used_pct: float = 10.0, blocks: int = 1_000_000
) -> Any:
    """A statvfs function answering the same figures for any path."""
    files = 1_000_000
    result = os.statvfs_result(
        (
            4096,
            4096,
            blocks,
            round(blocks * (1 - used_pct / 100)),
            round(blocks * (1 - used_pct / 100)),
            files,
            round(files * (1 - inodes_used_pct / 100)),
            round(files * (1 - inodes_used_pct / 100)),
            0,
            255,
        )
    )
    return lambda path: result


def severity_of(results: Sequence[CheckResult], check: str) -> Severity:
    (found,) = [r for r in results if r.check == check]
    return found.severity


# --- thresholds crossed, one check at a time ---------------------------------------------------


@pytest.mark.parametrize(
    ("used", "expected"), [(50, INFO), (80.5, WARN), (86, ALARM), (90.5, ERROR), (90, ALARM)]
)
def test_disk_use_against_the_kubelets_nodefs_eviction(used: float, expected: Severity) -> None:
    results = checks.disk("kubelet", "/var/lib/kubelet", DEFAULTS, statvfs=statvfs(used_pct=used))
    assert severity_of(results, "disk.kubelet") is expected
    disk = results[0]
    assert disk.value == pytest.approx(used, abs=0.1)
    if expected is ERROR:
        assert disk.threshold == 90 and "above the Error level 90%" in disk.message


def test_the_runtime_disk_errs_at_imagefs_eviction_and_inodes_at_5_percent_free() -> None:
    results = checks.disk("runtime", "/var/lib/containerd", DEFAULTS, statvfs=statvfs(used_pct=86))
    assert severity_of(results, "disk.runtime") is ERROR  # imagefs.available<15%
    results = checks.disk("root", "/", DEFAULTS, statvfs=statvfs(inodes_used_pct=96))
    assert severity_of(results, "inodes.root") is ERROR
    assert severity_of(results, "disk.root") is INFO


def test_a_filesystem_without_inode_counts_or_a_missing_root_says_so(tmp_path: Path) -> None:
    no_inodes = os.statvfs_result((4096, 4096, 100, 50, 50, 0, 0, 0, 0, 255))
    results = checks.disk("root", "/", DEFAULTS, statvfs=lambda p: no_inodes)
    assert results[1] == CheckResult(
        "inodes.root", INFO, "/: the filesystem counts no inodes", None, None
    )
    missing = checks.disk("runtime", "/nowhere", DEFAULTS, root=tmp_path, hint=" (set it)")
    assert [(r.check, r.severity, r.message) for r in missing] == [
        ("disk.runtime", WARN, "/nowhere does not exist (set it)"),
        ("inodes.runtime", WARN, "/nowhere does not exist (set it)"),
    ]


@pytest.mark.parametrize(
    ("load1", "expected"), [(2.0, INFO), (4.4, WARN), (8.4, ALARM), (16.4, ERROR)]
)
def test_load_per_cpu(tmp_path: Path, load1: float, expected: Severity) -> None:
    result = checks.load(fake_node(tmp_path, load1=load1, cpus=4), DEFAULTS)
    assert result.severity is expected
    assert result.value == pytest.approx(load1 / 4)


@pytest.mark.parametrize(
    ("available", "mib", "pct"),
    [
        (8192, INFO, INFO),
        (1200, INFO, WARN),  # 7.3 % of 16 GiB
        (400, WARN, ALARM),
        (200, ALARM, ALARM),
        (99, ERROR, ALARM),  # the kubelet's memory.available<100Mi
    ],
)
def test_memory_available_in_mib_and_percent(
    tmp_path: Path, available: int, mib: Severity, pct: Severity
) -> None:
    results = checks.memory(fake_node(tmp_path, mem_available_mib=available), DEFAULTS)
    assert [r.severity for r in results] == [mib, pct]
    assert results[0].value == available


@pytest.mark.parametrize(
    ("tasks", "expected"), [(500, INFO), (800, WARN), (900, ALARM), (1000, ERROR)]
)
def test_pids_against_the_lower_of_pid_max_and_threads_max(
    tmp_path: Path, tasks: int, expected: Severity
) -> None:
    result = checks.pids(fake_node(tmp_path, tasks=tasks, pid_max=1000, threads_max=None), DEFAULTS)
    assert result.severity is expected
    root = fake_node(tmp_path / "t", tasks=60, pid_max=4194304, threads_max=80)
    assert checks.pids(root, DEFAULTS).severity is WARN  # 75 % of threads-max


@pytest.mark.parametrize(
    ("allocated", "expected"), [(100, INFO), (710, WARN), (860, ALARM), (960, ERROR)]
)
def test_file_handles(tmp_path: Path, allocated: int, expected: Severity) -> None:
    root = fake_node(tmp_path, file_nr=(allocated, 0, 1000))
    assert checks.file_handles(root, DEFAULTS).severity is expected


@pytest.mark.parametrize(
    ("entries", "expected"), [(10, INFO), (71, WARN), (86, ALARM), (96, ERROR)]
)
def test_conntrack(tmp_path: Path, entries: int, expected: Severity) -> None:
    result = checks.conntrack(fake_node(tmp_path, conntrack=(entries, 100)), DEFAULTS)
    assert (result.severity, result.value) == (expected, float(entries))


def test_conntrack_not_loaded_is_info(tmp_path: Path) -> None:
    result = checks.conntrack(fake_node(tmp_path, conntrack=None), DEFAULTS)
    assert (result.severity, result.message) == (INFO, "conntrack not loaded")


@pytest.mark.parametrize(
    ("offset", "expected"), [(0.05, INFO), (-0.2, WARN), (0.7, ALARM), (-1.5, ERROR)]
)
def test_clock_offset_either_way(offset: float, expected: Severity) -> None:
    result = checks.clock_offset(lambda: offset, DEFAULTS)
    assert (result.severity, result.value) == (expected, offset)
    assert ("behind" if offset < 0 else "ahead of") in result.message


def test_clock_offset_without_or_with_a_failing_reference() -> None:
    assert checks.clock_offset(None, DEFAULTS).severity is INFO

    def unreachable() -> float:
        raise OSError("connection refused")

    result = checks.clock_offset(unreachable, DEFAULTS)
    assert (result.severity, result.message) == (
        WARN,
        "cannot measure the clock offset: connection refused",
    )


def test_the_http_date_header_bounds_the_offset() -> None:
    date = "Mon, 07 Dec 2026 09:00:00 GMT"
    server = 1796634000.0  # that second
    assert checks.http_date_offset(date, server + 0.2, server + 0.3) == 0.0  # within its second
    assert checks.http_date_offset(date, server + 3.5, server + 3.6) == pytest.approx(2.5)
    assert checks.http_date_offset(date, server - 2.0, server - 1.9) == pytest.approx(-1.9)
    with pytest.raises(ValueError):
        checks.http_date_offset("yesterday", 0, 1)
    ticks = iter([server + 5.2, server + 5.4])  # the call, timed by the node's clock
    source = checks.date_reference(lambda: date, clock=lambda: next(ticks))
    result = checks.clock_offset(source, DEFAULTS)
    assert (result.severity, result.value) == (ERROR, 4.2)
    assert checks.clock_offset(lambda: float("nan"), DEFAULTS).severity is WARN


@pytest.mark.parametrize(
    ("release", "cgroup2", "expected"),
    [("6.1.0-18-amd64", True, INFO), ("5.8.0", True, INFO), ("5.4.0-150-generic", False, WARN)],
)
def test_kernel_version_below_the_cgroup_v2_minimum_warns(
    tmp_path: Path, release: str, cgroup2: bool, expected: Severity
) -> None:
    result = checks.kernel(fake_node(tmp_path, osrelease=release, cgroup2=cgroup2), DEFAULTS)
    assert (result.severity, result.value) == (expected, release)
    assert result.message.startswith(f"Linux {release}, cgroup {'v2' if cgroup2 else 'v1'}")


# --- the kubelet and the runtime ----------------------------------------------------------------

KUBELET = ["/usr/bin/kubelet", "--config=/etc/k.yaml", "--root-dir=/srv/real-0/kubelet"]


def test_this_nodes_kubelet_is_found_by_root_dir_or_hostname(tmp_path: Path) -> None:
    other = ["/opt/bin/kubelet", "--root-dir", "/srv/real-1/kubelet"]
    root = fake_node(tmp_path, kubelets=[(40, other), (41, KUBELET)])
    result = checks.kubelet_process(root, "/srv/real-0/kubelet/", "real-0", healthy=True)
    assert (result.severity, result.value) == (INFO, 41)
    by_name = ["hyperkube", "kubelet", "--hostname-override=real-9"]
    root = fake_node(tmp_path / "h", kubelets=[(7, by_name)])
    assert checks.kubelet_process(root, "/elsewhere", "real-9", healthy=False).value == 7


def test_no_kubelet_for_this_node(tmp_path: Path) -> None:
    root = fake_node(tmp_path, kubelets=[(40, ["/bin/kubelet", "--root-dir=/srv/other"])])
    result = checks.kubelet_process(root, "/var/lib/kubelet", "n0", healthy=False)
    assert result.severity is ERROR
    assert "no kubelet with --root-dir /var/lib/kubelet" in result.message
    assert "40 (/srv/other)" in result.message
    hidden = checks.kubelet_process(fake_node(tmp_path / "e"), "/var/lib/kubelet", "n0", True)
    assert hidden.severity is WARN and "hostPID" in hidden.message  # answers, but unseen


def test_kubelet_health() -> None:
    url = "http://127.0.0.1:10248/healthz"
    ok = checks.kubelet_health(url, lambda u, t: (200, "ok"))
    assert (ok.severity, ok.value) == (INFO, 200)
    sick = checks.kubelet_health(url, lambda u, t: (500, "[-]syncloop failed\n"))
    assert (sick.severity, sick.value) == (ERROR, 500) and "syncloop failed" in sick.message

    def refused(u: str, t: float) -> tuple[int, str]:
        raise ConnectionRefusedError(111, "Connection refused")

    down = checks.kubelet_health(url, refused)
    assert down.severity is ERROR and "does not answer" in down.message


def test_the_runtime_must_answer_its_cri_version() -> None:
    missing = checks.runtime_version(None)
    assert missing.severity is ERROR and "no CRI client" in missing.message
    answer = {"runtime_name": "containerd", "runtime_version": "v2.0.0", "runtimeApiVersion": "v1"}
    assert checks.runtime_version(lambda: answer).value == "containerd v2.0.0 (CRI v1)"

    def down() -> str:
        raise OSError("connect: no such file or directory")

    failed = checks.runtime_version(down)
    assert failed.severity is ERROR and "does not answer" in failed.message
    assert checks.kubelet_version(lambda: "v1.31.2").value == "v1.31.2"
    assert checks.kubelet_version(None).severity is INFO


# --- the plugin ---------------------------------------------------------------------------------


@dataclass
class FakeAgent:
    node: str = "real-0"
    kubelet_root: Path = Path("/srv/real-0/kubelet")
    kubelet_healthz: str = "http://127.0.0.1:10248/healthz"
    runtime_socket: Path = Path("/run/containerd/containerd.sock")
    options: Mapping[str, str] = field(default_factory=dict)


ALL = {
    "kubelet.process",
    "kubelet.health",
    "kubelet.version",
    "runtime.version",
    *(f"{kind}.{where}" for kind in ("disk", "inodes") for where in ("kubelet", "runtime", "root")),
    *SPECS,
}


def plugin(root: Path, **kwargs: Any) -> NodeChecks:
    options: dict[str, Any] = {
        "root": root,
        "runtime_version": lambda: "containerd v2.0.0 (CRI v1)",
        "clock_offset": lambda: 0.01,
        "get": lambda url, timeout: (200, "ok"),
        "statvfs": statvfs(),
    }
    return NodeChecks(**{**options, **kwargs})


def test_a_healthy_node_is_all_info(tmp_path: Path) -> None:
    root = fake_node(tmp_path, kubelets=[(41, KUBELET)])
    results = plugin(root).check(FakeAgent())
    assert {r.check for r in results} == ALL and len(results) == len(ALL)
    assert [r for r in results if r.severity is not INFO] == []


def test_options_name_the_thresholds_and_a_threshold_file_drives_a_check_to_error(
    tmp_path: Path,
) -> None:
    root = fake_node(tmp_path / "node", kubelets=[(41, KUBELET)])
    levels = tmp_path / "levels.yaml"
    levels.write_text("disk.kubelet: {error: 0}\n")  # any use at all is an Error
    checker = plugin(root)
    checker.configure(FakeAgent(options={"node-checks.thresholds": str(levels)}))
    results = checker.check(FakeAgent())
    assert severity_of(results, "disk.kubelet") is ERROR
    assert severity_of(results, "disk.root") is INFO
    levels.write_text("disk.kubelet: {eror: 0}\n")
    with pytest.raises(ThresholdError, match=r"levels\.yaml: disk\.kubelet\.eror: unknown level"):
        checker.configure(FakeAgent(options={"thresholds": str(levels)}))


def test_what_cannot_be_read_is_a_warn_naming_it(tmp_path: Path) -> None:
    results = plugin(tmp_path, statvfs=os.statvfs).check(FakeAgent())  # an empty root
    unreadable = {r.check for r in results if r.message.startswith("cannot check")}
    assert unreadable == {
        "kubelet.process",
        "load.per_cpu",
        "memory.available",
        "memory.available_pct",
        "pids.pct",
        "filehandles.pct",
        "kernel.version",
    }
    assert all(severity_of(results, c) is WARN for c in unreadable)
    assert severity_of(results, "conntrack.pct") is INFO  # not loaded
    assert severity_of(results, "disk.kubelet") is WARN  # no such directory
    zero = fake_node(tmp_path / "zero", conntrack=(5, 0))  # a limit of 0: said, not raised
    assert severity_of(plugin(zero).check(FakeAgent()), "conntrack.pct") is WARN


def test_the_plugin_hooks_only_check() -> None:
    from node.plugin import hooks_of

    assert hooks_of(NodeChecks()) == ["check"]
    assert NodeChecks.name == "node-checks"
