"""The built-in node plugin ``prepull``: pull a rebuild's new images before the pod goes.

The rebuild controller annotates a predecessor pod ``fulcrum.io/prepull: <image>[,<image>...]``
(the images of the new template it does not run yet) before it lets the pod go
(``rebuild.prepull``). The agent calls ``pod_changed`` on its informer thread for every change
of a pod bound to this node; this plugin only validates the value and hands the pulls to a
small worker pool, so the informer never waits for a registry. Each image is pulled once at a
time per node (a second request for it waits for the first, then finds it present), through
the agent's CRI client. The answer is an annotation on the pod: ``fulcrum.io/prepulled`` with
the same value once every image is there, or ``fulcrum.io/prepull-error`` with a message.

A value that is not a list of image references (``kube.api.parse_images``) is answered with a
``PrePullRefused`` Warning Event and ``fulcrum.io/prepull-error``; nothing is pulled.

The plugin labels its Node ``fulcrum.io/node-prepull: enabled`` (the agent sets its plugins'
labels at start-up): the controller asks only labelled nodes, and never waits for a node
without an agent.

Options (``--plugin-option prepull.KEY=VALUE``): ``timeout``, seconds per image (default 300);
``workers``, pulls at once on this node (default 2: distinct images only, the node's disk and
link are shared).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from kube import api
from node.plugin import AgentContext, NodePlugin, PodView

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_WORKERS = 2
MAX_ERROR = 512  # characters of a prepull-error message
REMEMBERED = 4096  # requests answered, remembered so that a lagging informer repeats none


class PrePull(NodePlugin):
    name: ClassVar[str] = "prepull"
    description: ClassVar[str] = (
        "pulls a local rebuild's new images (fulcrum.io/prepull) before its predecessor goes"
    )

    def __init__(self) -> None:
        self.pull_timeout = DEFAULT_TIMEOUT
        self.workers = DEFAULT_WORKERS
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}
        self._taken: dict[tuple[str, str], None] = {}  # (pod uid, value): queued or answered

    def configure(self, agent: AgentContext) -> None:
        options = agent.options
        self.pull_timeout = _positive(options.get("prepull.timeout"), DEFAULT_TIMEOUT, "timeout")
        self.workers = int(_positive(options.get("prepull.workers"), DEFAULT_WORKERS, "workers"))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="prepull")

    def node_labels(self) -> Mapping[str, str]:
        """``fulcrum.io/node-prepull: enabled``: the controller asks only nodes that answer."""
        return {api.PREPULL_NODE_LABEL: "enabled"}

    def pod_changed(self, pod: PodView, agent: AgentContext) -> None:
        """Queue the pod's pre-pull if it asks for one not answered yet; returns at once."""
        value = pod.annotations.get(api.PREPULL)
        if value is None or pod.annotations.get(api.PREPULLED) == value:
            return
        if api.PREPULL_ERROR in pod.annotations:
            return
        with self._lock:
            if (pod.uid, value) in self._taken:
                return
            self._taken[(pod.uid, value)] = None
            while len(self._taken) > REMEMBERED:
                del self._taken[next(iter(self._taken))]
        try:
            images = api.parse_images(value)
        except api.OptionError as exc:
            message = str(exc)[:MAX_ERROR]
            agent.event(pod, "PrePullRefused", message, warning=True)
            self._answer(agent, pod, {api.PREPULL_ERROR: message})
            return
        if self._pool is None:  # configure was not called: a plugin used without the agent
            self.configure(agent)
        assert self._pool is not None
        self._pool.submit(self._pull_all, pod, value, images, agent)

    def _pull_all(
        self, pod: PodView, value: str, images: tuple[str, ...], agent: AgentContext
    ) -> None:
        """On a worker: every image, one at a time; then the answer."""
        for image in images:
            try:
                seconds = self._pull(image, agent)
            except Exception as exc:  # the CRI's error, a timeout: the answer says which
                message = f"pulling {image} on {agent.node}: {exc}"[:MAX_ERROR]
                log.warning("pre-pull for %s: %s", pod.key, message)
                agent.event(pod, "PrePullFailed", message, warning=True)
                self._answer(agent, pod, {api.PREPULL_ERROR: message})
                return
            log.info("pre-pull for %s: %s on %s in %.2f s", pod.key, image, agent.node, seconds)
        self._answer(agent, pod, {api.PREPULLED: value, api.PREPULL_ERROR: None})

    def _pull(self, image: str, agent: AgentContext) -> float:
        """Pull ``image`` unless present; one pull of an image at a time on this node."""
        with self._lock:
            lock = self._image_locks.setdefault(image, threading.Lock())
        with lock:
            if agent.image_present(image):
                return 0.0
            return agent.pull_image(image, self.pull_timeout)

    def _answer(
        self, agent: AgentContext, pod: PodView, annotations: dict[str, str | None]
    ) -> None:
        try:
            agent.annotate_pod(pod, annotations)
        except Exception as exc:  # the pod is gone, or the apiserver refused it for now
            log.info("pre-pull for %s: could not annotate the pod: %s", pod.key, exc)
            with self._lock:  # the pod's next change asks again (the image is there by then)
                self._taken.pop((pod.uid, pod.annotations.get(api.PREPULL, "")), None)

    def close(self) -> None:
        """Stop taking pulls (the agent's shutdown; running pulls finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _positive(raw: str | None, default: float, key: str) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(
            f"--plugin-option prepull.{key}={raw!r}: give a positive number (default {default:g})"
        )
    return value
