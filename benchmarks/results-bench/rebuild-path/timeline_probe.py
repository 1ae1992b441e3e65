"""Where a local-rebuild rollout spends its time: per successor, phase timestamps."""
import functools, sys, threading, time, statistics, urllib.request
from fulcrum import cluster, demo
from fulcrum import rebuild_run as rr
from kube.informer import Informer
from kube import api

name, nodes, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
T = {}  # key -> time
lock = threading.Lock()
class Sink:
    def replace(self, kind, objs):
        for o in objs: self.apply(kind, "ADDED", o)
    def apply(self, kind, event, obj):
        now = time.monotonic(); m = obj["metadata"]; uid = m.get("uid")
        with lock:
            if kind == "reservations":
                T.setdefault(("res", obj["spec"].get("predecessorUID") or m["name"]), now)
                return
            app = (m.get("labels") or {}).get("app", "")
            T.setdefault(("seen", uid), (app, now))
            if m.get("deletionTimestamp") or event == "DELETED":
                T.setdefault(("term", uid), (app, now))
            if event == "DELETED": T.setdefault(("gone", uid), (app, now))
            if (obj.get("spec") or {}).get("nodeName"): T.setdefault(("bound", uid), (app, now))
            if rr._up(obj): T.setdefault(("up", uid), (app, now))
state = cluster.up(name, nodes=nodes, log=print)
try:
    kit = rr.Kit.of(name)
    ns = "bench-rebuild"
    infs = [Informer("pods", functools.partial(kit.core.list_namespaced_pod, ns), Sink()),
            Informer("reservations", functools.partial(kit.custom.list_namespaced_custom_object, "fulcrum.io", "v1alpha1", ns, "reservations"), Sink())]
    for i in infs: i.start()
    t0 = [0.0]
    orig = rr.roll
    import subprocess, os
    def cpu(pid):
        f = open(f"/proc/{pid}/stat").read().split(")")[1].split(); return (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
    def roll(*a, **k):
        t0[0] = time.monotonic()
        spy = subprocess.Popen(["/tmp/spy/bin/py-spy", "record", "-p", str(state.rebuild_pid), "-d", "70", "-r", "50", "--idle", "-f", "raw", "-o", "/tmp/probe/rebuild.raw", "-t"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c0 = cpu(state.rebuild_pid)
        try:
            return orig(*a, **k)
        finally:
            print("rebuild controller CPU s during roll", cpu(state.rebuild_pid) - c0)
            spy.wait()
    rr.roll = roll
    out = demo.rebuild_pair(name, replicas, namespace=ns, say=print)
    for r in out.values(): print(r)
    time.sleep(1)
    with lock:
        snap = dict(T)
    start = t0[0]
    def q(xs):
        xs = sorted(xs); return f"n={len(xs)} p10 {xs[len(xs)//10]:.1f} p50 {xs[len(xs)//2]:.1f} p90 {xs[9*len(xs)//10]:.1f} max {xs[-1]:.1f}" if xs else "-"
    for app in ("local", "plain"):
        term = [v[1]-start for k, v in snap.items() if k[0]=="term" and v[0]==app and v[1] > start]
        gone = [v[1]-start for k, v in snap.items() if k[0]=="gone" and v[0]==app and v[1] > start]
        new = [k[1] for k, v in snap.items() if k[0]=="seen" and v[0]==app and v[1] > start+0.01]
        created = [snap[("seen",u)][1]-start for u in new]
        bound = [snap[("bound",u)][1]-snap[("seen",u)][1] for u in new if ("bound",u) in snap]
        boundabs = [snap[("bound",u)][1]-start for u in new if ("bound",u) in snap]
        up = [snap[("up",u)][1]-snap[("bound",u)][1] for u in new if ("up",u) in snap and ("bound",u) in snap]
        print(app, "terminating at", q(term)); print(app, "gone at", q(gone))
        print(app, "successor created at", q(created)); print(app, "created->bound", q(bound)); print(app, "bound at", q(boundabs)); print(app, "bound->up", q(up))
    res = [v-start for k, v in snap.items() if k[0]=="res"]
    print("reservation at", q(res))
    term = {k[1]: v[1] for k, v in snap.items() if k[0]=="term" and v[0]=="local"}
    lag = [snap[("res",u)] - t for u, t in term.items() if ("res", u) in snap]
    print("terminating->reservation", q(lag))
    import ssl
    ctx = ssl._create_unverified_context()
    try:
        txt = urllib.request.urlopen(f"https://127.0.0.1:{state.scheduler_port}/metrics", context=ctx).read().decode()
        print("\n".join(l for l in txt.splitlines() if l.startswith("scheduler_schedule_attempts_total") or l.startswith("scheduler_pod_scheduling_attempts_sum") or l.startswith("scheduler_pod_scheduling_attempts_count")))
    except Exception as e: print("sched metrics", e)
    try:
        txt = urllib.request.urlopen(f"http://127.0.0.1:{state.extender_port}/metrics").read().decode()
        print("\n".join(l for l in txt.splitlines() if l.startswith("fulcrum_extender_requests_total") or "filter" in l and not l.startswith("#"))[:3000])
    except Exception as e: print("metrics", e)
finally:
    cluster.down(name, log=print)
