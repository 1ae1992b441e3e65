"""Where a local-rebuild roll's time goes: the pair of Deployments of fulcrum.demo.rebuild_pair,
with every pod's moments recorded from a watch.

    flock /tmp/fulcrum-cluster.lock .venv/bin/python \
        benchmarks/results-bench/rebuild-pace/timeline.py NAME NODES REPLICAS
"""

import functools
import sys
import threading
import time
from collections import defaultdict

from fulcrum.demo import NODE, deploy_pair

from fulcrum import cluster
from fulcrum import rebuild_run as rr
from kube.informer import Informer

name, nodes, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ns = "tl"


class Sink:
    def __init__(self):
        self.lock = threading.Lock()
        self.t = defaultdict(dict)  # uid -> {app, added, terminating, deleted, bound, ready}

    def replace(self, kind, objects):
        for o in objects:
            self.apply(kind, "ADDED", o)

    def apply(self, kind, event, obj):
        now = time.monotonic()
        meta = obj["metadata"]
        uid = meta["uid"]
        with self.lock:
            d = self.t[uid]
            d.setdefault("app", (meta.get("labels") or {}).get("app", ""))
            d.setdefault("added", now)
            d.setdefault(
                "env2",
                any(e.get("value") == "2" for e in obj["spec"]["containers"][0].get("env") or []),
            )
            if meta.get("deletionTimestamp"):
                d.setdefault("terminating", now)
            if event == "DELETED":
                d.setdefault("deleted", now)
            if obj["spec"].get("nodeName"):
                d.setdefault("bound", now)
            if rr._up(obj):
                d.setdefault("ready", now)


cluster.up(name, nodes=nodes, shape=NODE, log=lambda m: None)
try:
    kit = rr.Kit.of(name)
    apps = deploy_pair(kit, ns, replicas)
    sink = Sink()
    inf = Informer("pods", functools.partial(kit.core.list_namespaced_pod, ns), sink)
    inf.start()
    inf.synced.wait(60)
    t0 = time.monotonic()
    kit.kubectl("set", "env", "deployment/local", "deployment/plain", "REVISION=2", "-n", ns)
    while any(rr.running(kit, ns, a, rr.has_env("2")) < n for a, n in apps.items()):
        if time.monotonic() - t0 > 600:
            raise SystemExit("timeout")
        time.sleep(0.5)
    time.sleep(1)
    inf.stop()

    def q(xs):
        xs = sorted(xs)
        return (
            f"n={len(xs)} p50 {xs[len(xs) // 2]:.2f} p90 {xs[int(len(xs) * 0.9)]:.2f} "
            f"max {xs[-1]:.2f}"
            if xs
            else "n=0"
        )

    for app in apps:
        old = [d for d in sink.t.values() if d["app"] == app and not d["env2"]]
        new = [d for d in sink.t.values() if d["app"] == app and d["env2"]]
        print(f"== {app}")
        print(
            "  old terminating (from change)  ",
            q([d["terminating"] - t0 for d in old if "terminating" in d]),
        )
        print(
            "  old terminating -> deleted     ",
            q(
                [
                    d["deleted"] - d["terminating"]
                    for d in old
                    if "deleted" in d and "terminating" in d
                ]
            ),
        )
        print("  new created (from change)      ", q([d["added"] - t0 for d in new]))
        print(
            "  new created -> bound           ",
            q([d["bound"] - d["added"] for d in new if "bound" in d]),
        )
        print(
            "  new bound -> ready             ",
            q([d["ready"] - d["bound"] for d in new if "ready" in d and "bound" in d]),
        )
        print(
            "  new ready (from change)        ", q([d["ready"] - t0 for d in new if "ready" in d])
        )
        # waves: per 5 s bucket, how many old terminating / new created / new ready
        for key, group in (("terminating", old), ("added", new), ("ready", new)):
            b = defaultdict(int)
            for d in group:
                if key in d:
                    b[int((d[key] - t0) // 5)] += 1
            print(
                f"  {key:12s} per 5 s:", " ".join(f"{b[i]}" for i in range(max(b) + 1)) if b else ""
            )
finally:
    cluster.down(name, log=lambda m: None)
