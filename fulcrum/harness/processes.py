"""The processes of a local cluster: started detached, found by their command line, stopped.

A cluster's processes are the ones whose command line names its state directory (kwokctl's
control plane and Fulcrum's own), so nothing needs a pid file to be found and stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path


class ProcessError(RuntimeError):
    """A process did not start; the message says what it printed."""


def mentions(arg: bytes, path: bytes) -> bool:
    """Whether one command-line argument names ``path`` or a file under it.

    ``path`` as a whole path component, alone or after ``=``, ``:`` or ``,`` (``--config=P/x``):
    the state directory of cluster ``rel`` is a prefix of ``rel2``'s, and a substring match
    would take the one cluster's processes for the other's.
    """
    return any(part == path or part.startswith(path + b"/") for part in re.split(rb"[=:,]", arg))


def processes_under(path: Path) -> Iterator[int]:
    """Live processes whose command line names ``path`` or a file under it (the cluster's own)."""
    needle = str(path).rstrip("/").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if any(mentions(a, needle) for a in args) and pid_alive(int(entry.name)):
                yield int(entry.name)
        except OSError:
            continue


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def terminate(pids: list[int], grace: float = 10) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], logfile: Path, what: str) -> None:
    context = ssl._create_unverified_context()  # kube-scheduler serves a self-signed cert
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-10:]
            raise ProcessError(f"{what} exited at start-up:\n  " + "\n  ".join(tail))
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            terminate([proc.pid])
            raise ProcessError(f"{what} was not ready within 120 s; see {logfile}")
        time.sleep(0.2)


def start_process(
    directory: Path,
    label: str,
    cmd: list[str],
    ready_url: str,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a detached process in ``directory`` (log: ``<label>.log``), with ``env`` added to
    this process's environment; wait until ready."""
    logfile = directory / f"{label}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env} if env else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
    _wait_ready(ready_url, proc, logfile, label)
    return proc.pid


def stop_process(pid: int | None) -> None:
    if pid is not None and pid_alive(pid):
        terminate([pid])


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_name(pid: int) -> str:
    """The executable's name; for Fulcrum's own processes, ``fulcrum <command>``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    if b"fulcrum.cli" in argv:
        return "fulcrum " + argv[argv.index(b"fulcrum.cli") + 1].decode()
    return name


def cpu_seconds(processes: Mapping[int, str]) -> dict[str, float]:
    """CPU time (user + system) used so far by ``processes`` (``process_labels``), by label."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid, label in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out
