"""Pre-pull for local rebuild: the new images reach a pod's node before the pod goes.

A successor that comes back on its predecessor's node pulls the new template's images there;
asked before the predecessor goes, the node has them when the successor starts. The
controller asks by annotating each predecessor ``fulcrum.io/prepull: <image>[,<image>...]``
(the new template's images the pod does not run); ``fulcrum node``'s built-in plugin
``prepull`` (``node.prepull``) pulls them and answers ``fulcrum.io/prepulled`` (the same value)
or ``fulcrum.io/prepull-error``.

- **Deployments.** Their controller deletes old pods the moment it sees the new template.
  The admission webhook (``admission.prepull``) makes an opted-in Deployment's image change
  arrive paused, marked ``fulcrum.io/prepull-hold: <time>``; here the predecessors are asked,
  and the rollout is resumed once every one has answered, or ``wait_seconds`` after the hold
  began, whichever is first. Without the webhook (or for a change it did not hold) the
  predecessors are asked all the same as soon as the template is seen, and later batches of
  the rollout find the images there.
- **OnDelete StatefulSets**, which this controller evicts itself (``rebuild.inplace``): each
  pod is asked before its eviction, which waits for the answer within ``wait_seconds``.

Each predecessor's ``fulcrum.io/rebuild-status`` says how it went: ``pre-pulled <image> on
<node> in 1.2 s``, or (action ``pre-pull-failed``) ``pre-pull timed out after 60 s on <node>;
rolling on``, or the node's error. Nothing here ever blocks a rollout beyond ``wait_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kube import api, objects
from kube.objects import Raw
from rebuild.errors import TemporaryError
from rebuild.store import Store
from rebuild.writes import Writes

log = logging.getLogger(__name__)

NODE_SECONDS = 30.0  # how long a node's prepull label is taken as read
POLL_SECONDS = 5.0  # a held rollout is looked at again at least this often (answers wake it)
REMEMBERED = 10_000  # requests whose timing is kept, the oldest forgotten first


def missing_images(pod: Raw, images: list[str]) -> list[str]:
    """``images`` the pod does not run (in order, each once): what its successor would pull."""
    spec: Mapping[str, Any] = pod.get("spec") or {}
    have = {
        str(c.get("image")) for key in ("initContainers", "containers") for c in spec.get(key) or []
    }
    return list(dict.fromkeys(image for image in images if image not in have))


class PrePuller:
    """Asks predecessors' nodes to pull, and resumes what the webhook held (module docstring)."""

    def __init__(self, store: Store, writes: Writes, wait_seconds: float) -> None:
        self.store = store
        self.writes = writes
        self.wait_seconds = wait_seconds
        # (pod uid, value) -> when asked / when its answer was first seen (monotonic)
        self.asked: dict[tuple[str, str], float] = {}
        self.answered: dict[tuple[str, str], float] = {}
        self.reported: dict[tuple[str, str], float] = {}  # once per request: status and Event
        self.nodes: tuple[set[str], float] | None = None  # nodes running prepull, read when

    # --- Deployments -----------------------------------------------------------------------
    def deployment(self, deployment: Raw) -> None:
        """Ask the predecessors of an opted-in Deployment; resume it if held and done.

        Raises ``TemporaryError`` while a hold waits for answers."""
        if not api.template_opted_in(deployment):
            return
        namespace, name = objects.namespace(deployment), objects.name(deployment)
        images = api.template_images(deployment)
        key = f"Deployment/{namespace}/{name}"
        asks = []
        for pod in self.store.all("pods"):
            if objects.namespace(pod) != namespace or api.successor_key(pod) != key:
                continue
            if not self.pulls_on(objects.node_name(pod)):
                continue  # a terminating one too: its node pulls while it stops (no hold)
            wanted = missing_images(pod, images)
            if wanted:
                asks.append((pod, ",".join(wanted)))
                self.ask(pod, ",".join(wanted))
        hold = objects.annotations(deployment).get(api.PREPULL_HOLD)
        if hold is None:
            for pod, value in asks:  # no hold: report what was pulled, as it comes
                if self.answer(pod, value) is not None:
                    self.report(pod, value, since=self.asked.get((objects.uid(pod), value)))
            return
        since = _hold_start(hold)
        paused = bool((deployment.get("spec") or {}).get("paused"))
        if not paused:  # its user resumed it: the hold is over, the pause was theirs to end
            self.writes.resume_deployment(objects.meta(deployment), hold, unpause=False)
            return
        elapsed = (datetime.now(UTC) - since).total_seconds() if since else self.wait_seconds
        waiting = [  # a pod deleted meanwhile may be gone before its node answers
            pod
            for pod, value in asks
            if self.answer(pod, value) is None and not objects.deleting(pod)
        ]
        if waiting and elapsed < self.wait_seconds:
            raise TemporaryError(
                min(POLL_SECONDS, self.wait_seconds - elapsed + 0.05),
                f"{len(waiting)} node(s) still pulling for {key}",
            )
        if self.writes.resume_deployment(objects.meta(deployment), hold, unpause=True):
            log.info("%s: resumed after a pre-pull of %.2f s", key, elapsed)
        start = None if since is None else time.monotonic() - elapsed
        for pod, value in asks:
            self.report(pod, value, since=start)

    # --- OnDelete StatefulSets --------------------------------------------------------------
    def before_eviction(self, pod: Raw, images: list[str]) -> str:
        """Ask the pod's node for ``images`` it does not run; once it has them (or failed, or
        ``wait_seconds`` passed) return how it went ("" when nothing was missing), else raise
        ``TemporaryError``."""
        wanted = missing_images(pod, images)
        if not wanted or not self.pulls_on(objects.node_name(pod)):
            return ""
        value = ",".join(wanted)
        self.ask(pod, value)
        asked = self.asked.get((objects.uid(pod), value), time.monotonic())
        elapsed = time.monotonic() - asked
        if self.answer(pod, value) is None and elapsed < self.wait_seconds:
            reason = f"pre-pulling {api.quoted(value)} on {objects.node_name(pod)}"
            self.writes.report(pod, "waiting", reason, event=False)
            raise TemporaryError(min(POLL_SECONDS, self.wait_seconds - elapsed + 0.05), reason)
        return self.outcome(pod, value, since=asked)[1]

    def pulls_on(self, node: str) -> bool:
        """Whether ``node`` runs the prepull plugin (its label; the labelled nodes listed at
        most every NODE_SECONDS): a node without one is never asked, so nothing waits for it."""
        now = time.monotonic()
        if self.nodes is None or now - self.nodes[1] > NODE_SECONDS:
            self.nodes = (self.writes.labelled_nodes(api.PREPULL_NODE_LABEL, "enabled"), now)
        return bool(node) and node in self.nodes[0]

    # --- asking and answering ---------------------------------------------------------------
    def ask(self, pod: Raw, value: str) -> None:
        """Annotate the pod with the request (its earlier answer removed), once."""
        ref = (objects.uid(pod), value)
        if objects.annotations(pod).get(api.PREPULL) != value:
            patch = {api.PREPULL: value, api.PREPULLED: None, api.PREPULL_ERROR: None}
            self.writes.patch_pod(objects.meta(pod), {"metadata": {"annotations": patch}})
        if ref not in self.asked:
            self.asked[ref] = time.monotonic()
            _bound(self.asked)

    def answer(self, pod: Raw, value: str) -> str | None:
        """``prepulled`` or the node's error once the pod carries an answer to ``value``; None
        while it does not."""
        annotations = objects.annotations(pod)
        if annotations.get(api.PREPULL) != value:
            return None
        if annotations.get(api.PREPULLED) == value:
            found = "prepulled"
        elif api.PREPULL_ERROR in annotations:
            found = annotations[api.PREPULL_ERROR]
        else:
            return None
        ref = (objects.uid(pod), value)
        if ref not in self.answered:
            self.answered[ref] = time.monotonic()
            _bound(self.answered)
        return found

    def report(self, pod: Raw, value: str, *, since: float | None) -> None:
        """The pod's rebuild-status: pulled (in how long, from ``since``), failed, or timed out;
        once per request (a resumed rollout's next look does not report it again)."""
        ref = (objects.uid(pod), value)
        if ref in self.reported:
            return
        action, reason = self.outcome(pod, value, since=since)
        self.writes.report(pod, action, reason, warning=action != "pre-pulled")
        self.reported[ref] = time.monotonic()
        _bound(self.reported)

    def outcome(self, pod: Raw, value: str, *, since: float | None) -> tuple[str, str]:
        """The status action and reason of the pod's pre-pull of ``value``."""
        node = objects.node_name(pod)
        found = self.answer(pod, value)
        ref = (objects.uid(pod), value)
        if found == "prepulled":
            took = ""
            if since is not None and ref in self.answered:
                took = f" in {max(0.0, self.answered[ref] - since):.1f} s"
            return "pre-pulled", f"pre-pulled {api.quoted(value)} on {node}{took}"
        if found is not None:
            return "pre-pull-failed", f"pre-pull failed on {node}: {found}; rolling on"
        return (
            "pre-pull-failed",
            f"pre-pull timed out after {self.wait_seconds:g} s on {node}; rolling on",
        )


def _hold_start(value: str) -> datetime | None:
    """When the webhook paused the Deployment; None for a value it does not write (the hold
    then ends at once: a bad value never keeps a rollout paused)."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.utcoffset() is not None else None


def _bound(seen: Mapping[Any, float]) -> None:
    assert isinstance(seen, dict)
    while len(seen) > REMEMBERED:
        del seen[next(iter(seen))]
