"""Where a local-rebuild roll spends its time, step by step, beside a plain one.

A fresh kwok cluster (``fulcrum cluster up``), the demo's pair of Deployments
(``demo.rebuild_pair``: 'local', opted in with an IP pool, and 'plain', the same size; the same
``kubectl set env`` on both), and two watches of our own that timestamp, for every pod of the
roll, when it began terminating, left, was created, was bound and became Ready, and when each
Reservation appeared.
Prints the rollouts and the percentiles of each step, then removes the cluster.

    .venv/bin/python benchmarks/rebuild_timeline.py --nodes 100 --replicas 500

``--py-spy PATH`` also samples the rebuild controller during the roll (py-spy's raw format, with
idle frames, so time waiting on the apiserver shows), into PATH.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fulcrum.harness import cluster
from fulcrum.lab import demo
from fulcrum.lab import rebuild_run as rr
from kube import api
from kube.informer import Informer

NAMESPACE = "bench-rebuild"


class Steps:
    """An informer sink: when each pod (by UID) reached each step, and each Reservation showed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[tuple[str, str], float] = {}  # (step, uid) -> monotonic time
        self.app: dict[str, str] = {}  # uid -> its Deployment
        self.reserved: list[float] = []

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        now, meta = time.monotonic(), obj["metadata"]
        with self.lock:
            if kind == api.RESERVATIONS:
                if event == "ADDED":
                    self.reserved.append(now)
                return
            uid = meta["uid"]
            self.app.setdefault(uid, (meta.get("labels") or {}).get(rr.APP_LABEL, ""))
            reached = {
                "created": True,
                "terminating": bool(meta.get("deletionTimestamp")) or event == "DELETED",
                "gone": event == "DELETED",
                "bound": bool((obj.get("spec") or {}).get("nodeName")),
                "up": rr._up(dict(obj)),
            }
            for step, yes in reached.items():
                if yes:
                    self.at.setdefault((step, uid), now)

    def since(self, step: str, app: str, start: float) -> list[float]:
        """Seconds from ``start`` to ``step``, for the pods of ``app`` that reached it after."""
        return [
            t - start
            for (s, u), t in self.at.items()
            if s == step and self.app[u] == app and t > start
        ]

    def between(self, first: str, then: str, app: str, start: float) -> list[float]:
        """Per pod of ``app`` created after ``start``: seconds from ``first`` to ``then``."""
        return [
            self.at[(then, u)] - self.at[(first, u)]
            for (s, u), t in self.at.items()
            if s == "created"
            and t > start
            and self.app[u] == app
            and (first, u) in self.at
            and (then, u) in self.at
        ]


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    xs = sorted(values)
    at = [xs[min(len(xs) - 1, int(q * len(xs)))] for q in (0.1, 0.5, 0.9)]
    return f"n={len(xs)} p10 {at[0]:.1f} p50 {at[1]:.1f} p90 {at[2]:.1f} max {xs[-1]:.1f}"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(steps: Steps, start: float) -> None:
    for app in ("local", "plain"):
        for step in ("terminating", "gone", "created", "bound"):
            print(f"{app:5s} {step} at {percentiles(steps.since(step, app, start))}")
        for first, then in (("created", "bound"), ("bound", "up")):
            between = percentiles(steps.between(first, then, app, start))
            print(f"{app:5s} {first} -> {then} {between}")
    print(f"Reservations at {percentiles([t - start for t in steps.reserved if t > start])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="rebuild-timeline")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=500, help="pods per Deployment")
    parser.add_argument("--py-spy", help="sample the rebuild controller into this file")
    args = parser.parse_args()
    state = cluster.up(args.name, nodes=args.nodes, log=print)
    try:
        kit = rr.Kit.of(args.name)
        steps = Steps()
        custom = functools.partial(
            kit.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, NAMESPACE
        )
        informers = [
            Informer("pods", functools.partial(kit.core.list_namespaced_pod, NAMESPACE), steps),
            Informer(api.RESERVATIONS, functools.partial(custom, api.RESERVATIONS), steps),
        ]
        for informer in informers:
            informer.start()
        start, roll = [0.0], rr.roll

        def timed_roll(*a: Any, **k: Any) -> dict[str, rr.Rollout]:
            start[0] = time.monotonic()
            assert state.rebuild_pid is not None
            spy = None
            if args.py_spy:
                exe = shutil.which("py-spy") or "py-spy"
                spy = subprocess.Popen(
                    [
                        exe,
                        "record",
                        "-p",
                        str(state.rebuild_pid),
                        "-r",
                        "50",
                        "--idle",
                        "-t",
                        "-f",
                        "raw",
                        "-o",
                        args.py_spy,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            before = cpu_seconds(state.rebuild_pid)
            try:
                return roll(*a, **k)
            finally:
                used = cpu_seconds(state.rebuild_pid) - before
                print(f"rebuild controller CPU during the roll: {used:.1f} s")
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)

        rr.roll = timed_roll
        for rollout in demo.rebuild_pair(
            args.name, args.replicas, namespace=NAMESPACE, say=print
        ).values():
            print(rollout)
        time.sleep(1)
        for informer in informers:
            informer.stop()
        with steps.lock:
            report(steps, start[0])
    finally:
        cluster.down(args.name, log=print)


if __name__ == "__main__":
    main()
