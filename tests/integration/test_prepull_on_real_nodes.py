"""Pre-pull for local rebuild on a real node: the new image is in the node's runtime before the
predecessor is deleted.

One real node (a kubelet, containerd and ``fulcrum node`` with its built-in ``prepull``
plugin, as ``fulcrum cluster up --real-nodes`` starts them). An opted-in Deployment's image
change is held by the admission webhook (``admission.prepull``); the controller asks the node
(``rebuild.prepull``). The proof is read from the runtime, not from Fulcrum's annotations: a
thread lists containerd's images (``ctr -n k8s.io images ls``) every 50 ms, a watch sees the
predecessors' ``deletionTimestamp``, and the image must have been there first; the successors'
kubelet then finds it present.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest

from fulcrum.harness import cluster
from fulcrum.harness.binaries import NODE_COMPONENTS, ensure_binaries
from fulcrum.lab import real_rebuild as rb
from fulcrum.lab import rebuild_run as rr
from kube import api
from kube.informer import Informer
from tests.realhost import require_real_nodes

pytestmark = pytest.mark.integration

NS = "it-prepull"
APP = "pp"
NODE = "real-1"
IMAGE_MB = 60  # a pull long enough (about a third of a second here) to tell before from after


@pytest.fixture(scope="module")
def name() -> Iterator[str]:
    require_real_nodes()
    name = f"it-prepull-{os.getpid()}"
    cluster.up(name, nodes=0, real_nodes=1, log=print)
    try:
        yield name
    finally:
        cluster.down(name, log=print)


class _Runtime:
    """When an image first appears in the node's containerd (k8s.io namespace), polled."""

    def __init__(self, name: str, image: str) -> None:
        ctr = ensure_binaries(print, components=NODE_COMPONENTS)["ctr"]
        socket = cluster.state_dir(name) / "real" / NODE / "containerd.sock"
        self.cmd = [str(ctr), "--address", str(socket), "-n", "k8s.io", "images", "ls", "-q"]
        self.image = image
        self.seen: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def present(self) -> bool:
        out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=10, check=True)
        return self.image in out.stdout.split()

    def _poll(self) -> None:
        while not self._stop.is_set() and self.seen is None:
            if self.present():
                self.seen = time.monotonic()
            time.sleep(0.05)

    def __enter__(self) -> _Runtime:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)


class _Deletions:
    """When the watch first showed each pod terminating (a ``deletionTimestamp``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, float] = {}

    def replace(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        for obj in objects:
            self.apply(kind, "ADDED", obj)

    def apply(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or event == "DELETED":
            with self.lock:
                self.at.setdefault(meta["name"], time.monotonic())


def test_the_new_image_is_on_the_node_before_the_predecessor_is_deleted(name: str) -> None:
    state = cluster.load_state(name)
    refs = rb.push_app_images(
        f"127.0.0.1:{state.registry_port}", ("v1", "v2"), pad_mb=IMAGE_MB, say=print
    )
    kit = rr.Kit.of(name)
    kit.kubectl("create", "namespace", NS)
    rr.apply(kit, [rb.deployment(NS, APP, 2, refs["v1"], opted=True, pool=None)])
    rr.wait_running(kit, NS, {APP: 2}, timeout=300)
    rr.wait_guarded(kit, NS, {APP: 2})
    old = {m.name for m in rr.members(kit, NS, APP).values()}
    deletions = _Deletions()
    watch = Informer("pods", functools.partial(kit.core.list_namespaced_pod, NS), deletions)
    watch.start()
    assert watch.synced.wait(30)
    runtime = _Runtime(name, refs["v2"])
    assert not runtime.present(), "the new image is on the node before the change"
    try:
        with runtime:
            rr.roll(
                kit,
                NS,
                {APP: 2},
                lambda: kit.kubectl(
                    "set", "image", f"deployment/{APP}", f"main={refs['v2']}", "-n", NS
                ),
                rr.has_image(refs["v2"]),
                timeout=300,
            )
    finally:
        watch.stop()
    with deletions.lock:
        deleted = {pod: at for pod, at in deletions.at.items() if pod in old}
    assert set(deleted) == old
    assert runtime.seen is not None and runtime.seen < min(deleted.values()), (
        f"image seen at {runtime.seen}, first predecessor deleted at {min(deleted.values())}"
    )
    # the rollout was held by Fulcrum, and let go: nothing of the hold is left
    dep = kit.apps.read_namespaced_deployment(APP, NS)
    assert not dep.spec.paused
    assert api.PREPULL_HOLD not in (dep.metadata.annotations or {})
    # what the predecessors and successors say
    for pod in old:
        found = kit.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}")
        pulled = [e.message for e in found.items if e.reason == "RebuildPrePulled"]
        assert pulled and pulled[0].startswith(f"pre-pulled {refs['v2']} on {NODE} in "), pulled
    for pod in {m.name for m in rr.members(kit, NS, APP).values()} - old:
        found = kit.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={pod}")
        messages = [e.message for e in found.items if e.reason == "Pulled"]
        assert any("already present on machine" in m for m in messages), messages
