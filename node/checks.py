"""Node inspection (巡检), as JD's JDOS ran it on every compute node: the ``node-checks``
plugin of ``fulcrum node``. Each check reports a :class:`~node.plugin.CheckResult` graded
Error > Alarm > Warn > Info; the agent calls :meth:`NodeChecks.check` periodically and
publishes the results (``node/check_report.py``: the node's ``fulcrum.io/node-checks``
annotation, its ``FulcrumNodeChecks`` condition, Prometheus gauges), which ``fulcrum inspect``
counts over the nodes.

=====================  =================================================  ====================
check                  reads                                              Warn / Alarm / Error
=====================  =================================================  ====================
kubelet.process        /proc/*/cmdline: a kubelet whose --root-dir is     fixed: Error when
                       the agent's kubelet_root (or --hostname-override   none and healthz is
                       this node)                                         silent
kubelet.health         GET agent.kubelet_healthz                          fixed: Error unless
                                                                          200 "ok"
kubelet.version        a callable (the kubelet's /configz or its Node)    Info
runtime.version        a callable: the CRI Version of the runtime         fixed: Error when
                                                                          missing or failing
disk.kubelet|runtime   statvfs of the kubelet root, the runtime root      80/85/90, runtime
|root                  (option runtime_root) and /: % used                75/80/85 (eviction)
inodes.*               statvfs: % of inodes used                          85/90/95
load.per_cpu           /proc/loadavg (1 min) / the CPUs in /proc/stat     1/2/4
memory.available       /proc/meminfo MemAvailable, MiB                    512/256/100 below
memory.available_pct   MemAvailable / MemTotal, %                         10/5/- below
pids.pct               /proc/loadavg's tasks / min(pid_max, threads-max)  70/85/95
filehandles.pct        /proc/sys/fs/file-nr / file-max                    70/85/95
conntrack.pct          nf_conntrack_count / nf_conntrack_max              70/85/95 (Info "not
                                                                          loaded" when absent)
clock.offset           a callable: this clock minus a reference's, s      0.1/0.5/1 (either way)
kernel.version         /proc/sys/kernel/osrelease, cgroup v1 or v2        5.8/-/- below
=====================  =================================================  ====================

The numbered levels are ``node/checks.yaml``'s defaults (``node/check_thresholds.py``; the
kubelet's eviction thresholds where it has one); ``docs/node-checks.md`` says why each. Every
check is a function of an injectable ``root`` (a test's tmp dir of fake ``/proc`` files, or a
DaemonSet's mount of the host's ``/``) and of callables for what is not a file (HTTP, CRI, the
reference clock), so a test drives each severity. A check that cannot read what it needs is a
Warn saying so: the agent's view is broken, not necessarily the node.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from node.check_thresholds import Bound, Thresholds
from node.plugin import AgentContext, CheckResult, NodePlugin, Severity

StatVfs = Callable[[str], os.statvfs_result]
HttpGet = Callable[[str, float], tuple[int, str]]  # (url, timeout) -> (status, body)
DEFAULT_RUNTIME_ROOT = "/var/lib/containerd"
DEFAULT_KUBELET_ROOT = "/var/lib/kubelet"
MIB = 1024 * 1024
GIB = 1024 * MIB


def _path(root: Path, absolute: str | Path) -> Path:
    """``absolute`` (a path on the node) under ``root`` (where the node's / is seen)."""
    return root / str(absolute).lstrip("/")


def _read(root: Path, absolute: str) -> str:
    return _path(root, absolute).read_text(encoding="utf-8", errors="replace")


def _round(value: float) -> float:
    return round(value, 3) if abs(value) < 10 else round(value, 1)


def _shown(bound: Bound | None) -> str:
    """A level as a person writes it: 90, not 90.0."""
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def judged(thresholds: Thresholds, check: str, value: float | str, what: str) -> CheckResult:
    """``value`` judged against the check's levels, with ``what`` it measured as the message
    and, past a level, which one."""
    severity, bound = thresholds.judge(check, value)
    unit = thresholds.unit(check)
    shown: float | str = _round(value) if isinstance(value, float) else value
    message = what
    if severity > Severity.INFO:
        sep = "" if unit.startswith("%") or not unit else " "
        limit = f"{_shown(bound)}{sep}{unit}".strip()
        side = "below" if thresholds.levels[check].spec.direction == "below" else "above"
        message += f" ({side} the {severity.label} level {limit})"
    threshold: Bound | None = bound
    return CheckResult(check, severity, message, shown, threshold)


# --- the kubelet and the runtime ----------------------------------------------------------------


@dataclass(frozen=True)
class Kubelet:
    pid: int
    root_dir: str
    hostname: str | None


def _flag(args: list[str], name: str) -> str | None:
    """``--name=value`` or ``--name value`` in a command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def find_kubelets(root: Path) -> list[Kubelet]:
    """Every kubelet in ``root``/proc: a command line whose program is ``kubelet`` (or
    ``hyperkube kubelet``), with its --root-dir (default /var/lib/kubelet)."""
    found = []
    for entry in _path(root, "/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone since the listing, or not ours to read
            continue
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if not args:
            continue
        program = os.path.basename(args[0])
        if program == "hyperkube" and args[1:2] == ["kubelet"]:
            args = args[1:]
        elif program != "kubelet":
            continue
        root_dir = _flag(args, "--root-dir") or DEFAULT_KUBELET_ROOT
        found.append(Kubelet(int(entry.name), root_dir, _flag(args, "--hostname-override")))
    return sorted(found, key=lambda k: k.pid)


def kubelet_process(
    root: Path, kubelet_root: str | Path, node: str, healthy: bool | None
) -> CheckResult:
    """This node's kubelet among the processes: the one with the agent's --root-dir, or with
    --hostname-override this node (one machine may run several kubelets, as the real-node test
    harness does). ``healthy``: whether its healthz answered, which tells a kubelet the agent
    cannot see (no hostPID) from one that is not there."""
    check = "kubelet.process"
    kubelets = find_kubelets(root)
    want = os.path.normpath(str(kubelet_root))
    mine = [k for k in kubelets if os.path.normpath(k.root_dir) == want or k.hostname == node]
    if mine:
        k = mine[0]
        return CheckResult(
            check, Severity.INFO, f"kubelet pid {k.pid}, --root-dir {k.root_dir}", k.pid
        )
    if kubelets:
        others = ", ".join(f"{k.pid} ({k.root_dir})" for k in kubelets[:5])
        what = f"no kubelet with --root-dir {want} or --hostname-override {node}; others: {others}"
    else:
        what = f"no kubelet process in {_path(root, '/proc')}"
    if healthy:
        return CheckResult(
            check,
            Severity.WARN,
            f"{what}, but its healthz answers: give the agent the host's PID namespace "
            "(hostPID) or set the plugin option node-checks.kubelet_root to its --root-dir",
        )
    return CheckResult(check, Severity.ERROR, f"{what}, and its healthz does not answer")


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """GET ``url``: (status, the first 4 KiB of the body); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as exc:  # an answer, with a status that says what is wrong
        return exc.code, exc.read(4096).decode(errors="replace")


def kubelet_health(url: str, get: HttpGet = http_get, timeout: float = 2.0) -> CheckResult:
    """The kubelet's healthz: Info for 200 "ok", Error otherwise (value: the HTTP status)."""
    check = "kubelet.health"
    try:
        status, body = get(url, timeout)
    except Exception as exc:  # refused, timed out, or not HTTP (http.client's BadStatusLine)
        return CheckResult(check, Severity.ERROR, f"kubelet healthz {url} does not answer: {exc}")
    text = " ".join(body.split())[:200]
    if status == 200 and text == "ok":
        return CheckResult(check, Severity.INFO, f"kubelet healthz {url}: ok", status)
    return CheckResult(
        check, Severity.ERROR, f"kubelet healthz {url} answered {status}: {text}", status
    )


def kubelet_version(source: Callable[[], str | None] | None) -> CheckResult:
    """The kubelet's version as the caller reads it (its /configz, its Node's nodeInfo)."""
    check = "kubelet.version"
    try:
        version = source() if source is not None else None
    except Exception as exc:
        return CheckResult(check, Severity.WARN, f"cannot read the kubelet's version: {exc}")
    if not version:
        return CheckResult(check, Severity.INFO, "kubelet version not known to the agent")
    return CheckResult(check, Severity.INFO, f"kubelet {version}", str(version))


def _runtime_text(answer: str | Mapping[str, Any]) -> str:
    """A CRI VersionResponse (as a dict, snake or camel case) or a string, as one line."""
    if isinstance(answer, str):
        return answer

    def field(snake: str, camel: str) -> str:
        return str(answer.get(snake) or answer.get(camel) or "?")

    name, version = field("runtime_name", "runtimeName"), field("runtime_version", "runtimeVersion")
    return f"{name} {version} (CRI {field('runtime_api_version', 'runtimeApiVersion')})"


def runtime_version(source: Callable[[], str | Mapping[str, Any]] | None) -> CheckResult:
    """The container runtime answering its CRI Version: Error when there is no way to ask it
    or it does not answer (no runtime, no pods)."""
    check = "runtime.version"
    if source is None:
        return CheckResult(
            check,
            Severity.ERROR,
            "no way to ask the container runtime its version: the agent gave this plugin no "
            "CRI client (NodeChecks(runtime_version=...))",
        )
    try:
        text = _runtime_text(source())
    except Exception as exc:
        return CheckResult(check, Severity.ERROR, f"the container runtime does not answer: {exc}")
    return CheckResult(check, Severity.INFO, text, text)


# --- disks --------------------------------------------------------------------------------------


def disk(
    label: str,
    path: str | Path,
    thresholds: Thresholds,
    root: Path = Path("/"),
    statvfs: StatVfs = os.statvfs,
    hint: str = "",
) -> list[CheckResult]:
    """``disk.LABEL`` (% of the space used, as the kubelet counts nodefs.available: the blocks
    available to it over the filesystem's size) and ``inodes.LABEL`` (% of inodes used)."""
    where = _path(root, path)
    try:
        st = statvfs(str(where))
    except FileNotFoundError:
        message = f"{path} does not exist{hint}"
        return [CheckResult(f"{c}.{label}", Severity.WARN, message) for c in ("disk", "inodes")]
    results = []
    if st.f_blocks:
        used = 100 - 100 * st.f_bavail / st.f_blocks
        size, free = st.f_blocks * st.f_frsize / GIB, st.f_bavail * st.f_frsize / GIB
        what = f"{path}: {used:.1f}% used, {free:.1f} GiB of {size:.1f} GiB available"
        results.append(judged(thresholds, f"disk.{label}", used, what))
    else:
        results.append(CheckResult(f"disk.{label}", Severity.INFO, f"{path}: no size reported"))
    if st.f_files:
        used = 100 - 100 * st.f_ffree / st.f_files
        what = f"{path}: {used:.1f}% of {st.f_files} inodes used"
        results.append(judged(thresholds, f"inodes.{label}", used, what))
    else:  # btrfs and others make inodes on demand
        what = f"{path}: the filesystem counts no inodes"
        results.append(CheckResult(f"inodes.{label}", Severity.INFO, what))
    return results


# --- the kernel's counters ----------------------------------------------------------------------


def cpu_count(root: Path) -> int:
    """Online CPUs: the ``cpuN`` lines of /proc/stat (the node's, whatever the agent's cgroup)."""
    count = len(re.findall(r"^cpu\d+\s", _read(root, "/proc/stat"), re.M))
    if not count:
        raise ValueError(f"{_path(root, '/proc/stat')} lists no cpuN line")
    return count


def load(root: Path, thresholds: Thresholds) -> CheckResult:
    """The 1-minute load average per online CPU."""
    load1 = float(_read(root, "/proc/loadavg").split()[0])
    cpus = cpu_count(root)
    per_cpu = load1 / cpus
    what = f"load {load1:.2f} on {cpus} CPUs: {per_cpu:.2f} per CPU"
    return judged(thresholds, "load.per_cpu", per_cpu, what)


def meminfo(root: Path) -> dict[str, int]:
    """/proc/meminfo in kB."""
    found = {}
    for line in _read(root, "/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            found[key.strip()] = int(fields[0])
    return found


def memory(root: Path, thresholds: Thresholds) -> list[CheckResult]:
    """MemAvailable in MiB (against the kubelet's memory.available<100Mi) and in % of MemTotal.
    The kubelet counts its own way (capacity less the root cgroup's working set), so its view
    may differ by the page cache it cannot reclaim; MemAvailable is the kernel's estimate."""
    info = meminfo(root)
    if "MemAvailable" not in info or not info.get("MemTotal"):
        raise ValueError(f"{_path(root, '/proc/meminfo')} has no MemAvailable or MemTotal")
    available, total = info["MemAvailable"] / 1024, info["MemTotal"] / 1024
    pct = 100 * available / total
    what = f"{available:.0f} MiB available of {total:.0f} MiB ({pct:.1f}%)"
    return [
        judged(thresholds, "memory.available", available, what),
        judged(thresholds, "memory.available_pct", pct, what),
    ]


def _pct(used: int, limit: int, what: str) -> float:
    if limit <= 0:
        raise ValueError(f"{what} is {limit}")
    return 100 * used / limit


def _int(root: Path, absolute: str) -> int:
    return int(_read(root, absolute).split()[0])


def pids(root: Path, thresholds: Thresholds) -> CheckResult:
    """Tasks (threads: each takes a PID) over the lower of kernel.pid_max and threads-max."""
    limit = _int(root, "/proc/sys/kernel/pid_max")
    threads_max = _path(root, "/proc/sys/kernel/threads-max")
    if threads_max.exists():
        limit = min(limit, _int(root, "/proc/sys/kernel/threads-max"))
    tasks = int(_read(root, "/proc/loadavg").split()[3].split("/")[1])
    pct = _pct(tasks, limit, "the PID limit")
    return judged(thresholds, "pids.pct", pct, f"{tasks} tasks of {limit} PIDs ({pct:.1f}%)")


def file_handles(root: Path, thresholds: Thresholds) -> CheckResult:
    """Allocated file handles (/proc/sys/fs/file-nr: allocated, unused, max) over fs.file-max."""
    allocated, unused, nr_max = (int(x) for x in _read(root, "/proc/sys/fs/file-nr").split()[:3])
    file_max = _path(root, "/proc/sys/fs/file-max")
    limit = _int(root, "/proc/sys/fs/file-max") if file_max.exists() else nr_max
    in_use = allocated - unused
    pct = _pct(in_use, limit, "fs.file-max")
    what = f"{in_use} file handles of {limit} ({pct:.2f}%)"
    return judged(thresholds, "filehandles.pct", pct, what)


def conntrack(root: Path, thresholds: Thresholds) -> CheckResult:
    """Connection tracking entries over nf_conntrack_max; Info "not loaded" without the module."""
    count = _path(root, "/proc/sys/net/netfilter/nf_conntrack_count")
    if not count.exists():
        return CheckResult("conntrack.pct", Severity.INFO, "conntrack not loaded")
    entries = _int(root, "/proc/sys/net/netfilter/nf_conntrack_count")
    limit = _int(root, "/proc/sys/net/netfilter/nf_conntrack_max")
    pct = _pct(entries, limit, "nf_conntrack_max")
    what = f"{entries} conntrack entries of {limit} ({pct:.1f}%)"
    return judged(thresholds, "conntrack.pct", pct, what)


def kernel(root: Path, thresholds: Thresholds) -> CheckResult:
    """The kernel's release (against a minimum) and whether cgroup v2 is mounted."""
    release = _read(root, "/proc/sys/kernel/osrelease").strip()
    v2 = _path(root, "/sys/fs/cgroup/cgroup.controllers").exists()
    what = f"Linux {release}, cgroup {'v2' if v2 else 'v1'}"
    return judged(thresholds, "kernel.version", release, what)


# --- the clock ----------------------------------------------------------------------------------


def http_date_offset(date_header: str, sent: float, received: float) -> float:
    """This clock minus a server's, from its HTTP ``Date`` header (RFC 9110: whole seconds)
    on an answer to a request sent at ``sent`` and answered at ``received`` (this clock's
    epoch seconds). The server's time was in [Date, Date + 1) somewhere in [sent, received],
    so the offset is only known to an interval; this returns the end of it nearest zero (0.0
    when zero is in it): a lower bound on the offset's size. A Date header cannot see offsets
    under about a second; pass a finer reference (chrony's, NTP's) for the 0.1 s level."""
    parsed = email.utils.parsedate_to_datetime(date_header)
    if parsed.tzinfo is None:
        raise ValueError(f"Date header {date_header!r} has no zone (expected e.g. ... GMT)")
    server = parsed.timestamp()
    low, high = sent - (server + 1), received - server
    if low <= 0 <= high:
        return 0.0
    return low if low > 0 else high


def date_reference(
    date_header: Callable[[], str], clock: Callable[[], float] = time.time
) -> Callable[[], float]:
    """A ``clock_offset`` source from a call answering a server's ``Date`` header (the agent's
    request to the API server, say): times the call and bounds the offset as
    :func:`http_date_offset` does."""

    def offset() -> float:
        sent = clock()
        header = date_header()
        return http_date_offset(header, sent, clock())

    return offset


def clock_offset(source: Callable[[], float] | None, thresholds: Thresholds) -> CheckResult:
    """This node's clock minus the reference's, in seconds (positive: ahead), judged either way."""
    check = "clock.offset"
    if source is None:
        return CheckResult(check, Severity.INFO, "no reference clock given to the agent")
    try:
        offset = float(source())
    except Exception as exc:
        return CheckResult(check, Severity.WARN, f"cannot measure the clock offset: {exc}")
    if not math.isfinite(offset):
        return CheckResult(check, Severity.WARN, f"the reference gave no offset ({offset})")
    way = "ahead of" if offset >= 0 else "behind"
    result = judged(thresholds, check, abs(offset), f"{abs(offset):.3f} s {way} the reference")
    return CheckResult(check, result.severity, result.message, round(offset, 3), result.threshold)


# --- the plugin ---------------------------------------------------------------------------------


def _guarded(names: tuple[str, ...], run: Callable[[], Iterable[CheckResult]]) -> list[CheckResult]:
    """A check's results, or a Warn per check saying what could not be read."""
    try:
        return list(run())
    except (OSError, ValueError, IndexError, ArithmeticError) as exc:  # a limit of 0 too
        return [CheckResult(name, Severity.WARN, f"cannot check: {exc!s}") for name in names]


def _option(options: Mapping[str, str], key: str) -> str | None:
    """A plugin option, given as ``node-checks.KEY`` or (the agent's per-plugin view) ``KEY``."""
    return options.get(f"{NodeChecks.name}.{key}", options.get(key))


class NodeChecks(NodePlugin):
    """Node inspection as a plugin: every check above, each call.

    Options (``--plugin-option node-checks.KEY=VALUE``): ``thresholds`` (a YAML file over the
    defaults: ``node/check_thresholds.py``), ``runtime_root`` (default /var/lib/containerd),
    ``root`` (where the node's / is mounted, default /), ``kubelet_root`` (overrides the
    agent's). What is not a file comes as a callable, wired by the agent: ``runtime_version``
    (the CRI Version), ``kubelet_version``, ``clock_offset`` (seconds;
    ``date_reference(call answering the API server's Date header)`` makes one)."""

    name: ClassVar[str] = "node-checks"
    description: ClassVar[str] = "node inspection: kubelet, runtime, disks, memory, kernel limits"
    timeout: ClassVar[float] = 10.0  # healthz and the CRI take up to a few seconds between them

    def __init__(
        self,
        *,
        root: Path | str = "/",
        thresholds: Thresholds | None = None,
        runtime_root: str = DEFAULT_RUNTIME_ROOT,
        runtime_version: Callable[[], str | Mapping[str, Any]] | None = None,
        kubelet_version: Callable[[], str | None] | None = None,
        clock_offset: Callable[[], float] | None = None,
        get: HttpGet = http_get,
        statvfs: StatVfs = os.statvfs,
    ) -> None:
        self.root = Path(root)
        self.thresholds = thresholds
        self.runtime_root = runtime_root
        self.runtime_version = runtime_version
        self.kubelet_version = kubelet_version
        self.clock_offset = clock_offset
        self.kubelet_root: str | None = None
        self.get = get
        self.statvfs = statvfs

    def configure(self, agent: AgentContext) -> None:
        """Read the options; a bad thresholds file raises ThresholdError, naming the key."""
        options = agent.options
        self.thresholds = Thresholds.load(_option(options, "thresholds"))
        self.runtime_root = _option(options, "runtime_root") or self.runtime_root
        self.root = Path(_option(options, "root") or self.root)
        self.kubelet_root = _option(options, "kubelet_root")
        # what only the agent can measure, unless given at construction
        # (a context without them, a test's, leaves those checks without a source)
        self.runtime_version = self.runtime_version or getattr(agent, "runtime_version", None)
        self.kubelet_version = self.kubelet_version or getattr(agent, "kubelet_version", None)
        api_date = getattr(agent, "api_date", None)
        if self.clock_offset is None and api_date is not None:
            self.clock_offset = date_reference(api_date)

    def check(self, agent: AgentContext) -> list[CheckResult]:
        if self.thresholds is None:
            self.thresholds = Thresholds.load()
        t, root = self.thresholds, self.root
        health = kubelet_health(agent.kubelet_healthz, self.get)
        kubelet_root = self.kubelet_root or str(agent.kubelet_root)
        hint = " (set the plugin option node-checks.runtime_root to the runtime's root)"
        results = _guarded(
            ("kubelet.process",),
            lambda: [
                kubelet_process(root, kubelet_root, agent.node, health.severity is Severity.INFO)
            ],
        )
        results += [health, kubelet_version(self.kubelet_version)]
        results.append(runtime_version(self.runtime_version))
        for label, path, why in (
            ("kubelet", kubelet_root, ""),
            ("runtime", self.runtime_root, hint),
            ("root", "/", ""),
        ):
            results += self._disk(label, path, why)
        results += _guarded(("load.per_cpu",), lambda: [load(root, t)])
        results += _guarded(("memory.available", "memory.available_pct"), lambda: memory(root, t))
        results += _guarded(("pids.pct",), lambda: [pids(root, t)])
        results += _guarded(("filehandles.pct",), lambda: [file_handles(root, t)])
        results += _guarded(("conntrack.pct",), lambda: [conntrack(root, t)])
        results.append(clock_offset(self.clock_offset, t))
        results += _guarded(("kernel.version",), lambda: [kernel(root, t)])
        return results

    def _disk(self, label: str, path: str, hint: str) -> list[CheckResult]:
        assert self.thresholds is not None
        thresholds = self.thresholds
        return _guarded(
            (f"disk.{label}", f"inodes.{label}"),
            lambda: disk(label, path, thresholds, self.root, self.statvfs, hint),
        )
