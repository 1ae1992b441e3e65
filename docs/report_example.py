"""The inspection report of a realistic cluster, and its screenshot (``docs/report.png``).

200 nodes sampled from the openb trace (GPU and CPU nodes), its pods placed in-process by
Archimedes in arrival order (``scheduler.sequence``, as ``fulcrum simulate --in-order``), the
placements written back as Kubernetes objects, plus local-rebuild state: an IP pool, pods
opted in, Reservations (one of them stale, to show a broken invariant). No cluster is started.

    .venv/bin/python docs/report_example.py --html /tmp/report.html --png docs/report.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fulcrum.inspect.inspection import inspect
from fulcrum.inspect.report import inspection_html, write_html
from fulcrum.lab import openb, traces
from kube import api
from kube.resources import GPU_DEVICES_ANNOTATION
from policies.registry import default_registry
from scheduler.policy import PolicyContext
from scheduler.sequence import replay_in_order
from scheduler.trace import load_nodes, load_pods

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
POOL = "10.20.0.0/24"


def placed_cluster(n_nodes: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Sampled nodes and the pods Archimedes placed on them, as the apiserver would send them."""
    nodes = load_nodes(traces.node_list("all_node"))
    pods = load_pods(
        traces.pod_list("default"), known_models=frozenset(m for m in nodes.models if m)
    )
    sample = openb.sample(nodes, pods, n_nodes, 10**6, seed=seed, fill=0.9)
    snapshot = openb.sampled_snapshot(nodes, sample)
    registry = default_registry()
    replay_in_order(
        snapshot,
        [pods.request(row) for row in sample.pods],
        lambda workload: registry.create("Archimedes", PolicyContext(workload=workload)),
    )
    objects = []
    for key, placement in sorted(snapshot.pods().items()):
        pod = openb.pod_manifest(
            pods, sample.pods[int(key.removeprefix("seq-"))], api.SCHEDULER_NAME
        )
        pod["metadata"].update(uid=key, namespace="openb")
        pod["spec"]["nodeName"] = placement.node
        if placement.devices:
            devices = ",".join(str(d) for d in placement.devices)
            pod["metadata"]["annotations"][GPU_DEVICES_ANNOTATION] = devices
        objects.append(pod)
    return [openb.node_manifest(nodes, row) for row in sample.nodes], objects


def rebuild_state(pods: list[Any]) -> tuple[list[Any], list[Any]]:
    """Opt every ninth CPU-only pod (up to 40) in to local rebuild, each with an address from one
    pool; Reservations for five of them being rebuilt, and one left an hour after it expired."""
    opted = [p for p in pods if not p["metadata"]["annotations"]][::9][:40]
    allocations = {}
    for i, pod in enumerate(opted):
        ip = f"10.20.0.{i + 1}"
        pod["metadata"]["namespace"] = "web"
        pod["metadata"]["annotations"].update(
            {api.REBUILD: "local", api.IP_POOL: "web", api.ASSIGNED_IP: ip}
        )
        allocations[ip] = f"pod:{pod['metadata']['uid']}"
    pool = {
        "metadata": {"name": "web", "namespace": "web"},
        "spec": {"cidr": POOL},
        "status": {"allocations": allocations},
    }
    reservations = []
    for i, (pod, age) in enumerate(zip(opted, (5, 40, 75, 130, 610), strict=False)):
        reservations.append(_reservation(f"rb-{i}", pod, age, None))
    stale = _reservation("rb-stale", opted[-1], 4000, NOW - timedelta(hours=1))
    reservations.append(stale)
    return reservations, [pool]


def _reservation(name: str, pod: Any, age_s: int, expires: datetime | None) -> Any:
    obj = api.Reservation(
        name=name,
        namespace="web",
        key=f"Pod/web/{pod['metadata']['name']}",
        node=pod["spec"]["nodeName"],
        predecessor=pod["metadata"]["name"],
        predecessor_uid=pod["metadata"]["uid"],
        template={"spec": pod["spec"]},
        devices=None,
        ip=None,
        pool=None,
        claims=(),
        fallback="reschedule" if expires else "wait",
        expires_at=expires,
        phase="Expired" if expires else "Held",
    ).to_object()
    obj["metadata"]["creationTimestamp"] = (NOW - timedelta(seconds=age_s)).isoformat()
    return obj


def screenshot(page: Path, png: Path) -> None:
    """A 1280 x 2000 screenshot by headless Chromium, in 256 colours (a third of the bytes)."""
    from PIL import Image  # matplotlib's own dependency

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not on PATH (apt-get install chromium)")
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={png.resolve()}",
            "--window-size=1280,2000",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shot = Image.open(png).convert("RGB")
    shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        png, optimize=True
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200, help="nodes sampled (default 200)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")
    parser.add_argument("--html", type=Path, default=None, help="the report (default: a temp file)")
    parser.add_argument("--png", type=Path, default=None, help="also a screenshot here")
    parser.add_argument(
        "--plan-seconds", type=float, default=5.0, help="the optimiser's budget (0: skip)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    nodes, pods = placed_cluster(args.nodes, args.seed)
    reservations, pools = rebuild_state(pods)
    report = inspect(nodes, pods, reservations, pools, NOW, plan_seconds=args.plan_seconds)
    html = args.html or Path(tempfile.mkdtemp()) / "report.html"
    write_html(html, inspection_html(report, source=f"openb sample of {args.nodes} nodes", now=NOW))
    print(
        f"{len(nodes)} nodes, {len(pods)} pods placed; wrote {html} "
        f"({html.stat().st_size} bytes) in {time.monotonic() - started:.1f} s"
    )
    if args.png:
        screenshot(html, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
