"""The node plugin ``prepull`` against a fake agent: validation, the worker pool, one pull of
an image at a time per node, the answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kube import api
from node.plugin import PodView, hooks_of
from node.prepull import PrePull

IMAGE = "127.0.0.1:5000/app:r1"
OTHER = "127.0.0.1:5000/side:r1"


class FakeAgent:
    node = "real-0"
    kubelet_root = Path("/var/lib/kubelet")
    kubelet_healthz = "http://127.0.0.1:10248/healthz"
    runtime_socket = Path("/run/containerd/containerd.sock")

    def __init__(self, *, pull_seconds: float = 0.0, fail: str = "") -> None:
        self.options: Mapping[str, str] = {}
        self.present: set[str] = set()
        self.pull_seconds = pull_seconds
        self.fail = fail
        self.pulls: list[str] = []
        self.in_flight = 0
        self.most_in_flight: dict[str, int] = {}
        self.annotated: list[tuple[str, dict[str, str | None]]] = []
        self.events: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.answered = threading.Event()

    def pull_image(self, image: str, timeout: float) -> float:
        with self.lock:
            self.pulls.append(image)
            self.in_flight += 1
            self.most_in_flight[image] = max(self.most_in_flight.get(image, 0), self.in_flight)
        time.sleep(self.pull_seconds)
        with self.lock:
            self.in_flight -= 1
        if image == self.fail:
            raise RuntimeError("rpc error: code = NotFound desc = manifest unknown")
        self.present.add(image)
        return self.pull_seconds

    def image_present(self, image: str) -> bool:
        return image in self.present

    def annotate_pod(self, pod: PodView, annotations: Mapping[str, str | None]) -> None:
        with self.lock:
            self.annotated.append((pod.name, dict(annotations)))
        self.answered.set()

    def event(self, pod: PodView | None, reason: str, message: str, *, warning: bool) -> None:
        self.events.append((reason, message, warning))


def view(name: str = "web-0", uid: str = "u0", **annotations: str) -> PodView:
    return PodView("ns", name, uid, annotations={api.REBUILD: "local", **annotations})


def asking(value: str, name: str = "web-0", uid: str = "u0") -> PodView:
    return view(name, uid, **{api.PREPULL: value})


def settle(plugin: PrePull, agent: FakeAgent, answers: int) -> None:
    deadline = time.monotonic() + 5
    while len(agent.annotated) < answers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(agent.annotated) >= answers, agent.annotated
    plugin.close()


def test_it_takes_pod_changed_and_labels_its_node() -> None:
    assert hooks_of(PrePull()) == ["pod_changed", "node_labels"]
    assert PrePull().node_labels() == {api.PREPULL_NODE_LABEL: "enabled"}


def test_the_images_are_pulled_then_the_pod_says_so() -> None:
    plugin, agent = PrePull(), FakeAgent()
    plugin.configure(agent)
    value = f"{IMAGE},{OTHER}"
    plugin.pod_changed(asking(value), agent)
    settle(plugin, agent, 1)
    assert agent.pulls == [IMAGE, OTHER]
    assert agent.annotated == [("web-0", {api.PREPULLED: value, api.PREPULL_ERROR: None})]


def test_pod_changed_returns_at_once_the_pull_runs_on_a_worker() -> None:
    plugin, agent = PrePull(), FakeAgent(pull_seconds=0.5)
    plugin.configure(agent)
    started = time.monotonic()
    plugin.pod_changed(asking(IMAGE), agent)
    assert time.monotonic() - started < 0.1
    settle(plugin, agent, 1)


def test_a_present_image_is_not_pulled_again() -> None:
    plugin, agent = PrePull(), FakeAgent()
    agent.present.add(IMAGE)
    plugin.configure(agent)
    plugin.pod_changed(asking(IMAGE), agent)
    settle(plugin, agent, 1)
    assert agent.pulls == []
    assert agent.annotated[0][1][api.PREPULLED] == IMAGE


def test_one_pull_of_an_image_at_a_time_on_a_node() -> None:
    """Two pods of one node asking for the same image: one pull, the other finds it there."""
    plugin, agent = PrePull(), FakeAgent(pull_seconds=0.2)
    plugin.configure(agent)
    plugin.pod_changed(asking(IMAGE, "web-0", "u0"), agent)
    plugin.pod_changed(asking(IMAGE, "web-1", "u1"), agent)
    settle(plugin, agent, 2)
    assert agent.pulls == [IMAGE]
    assert {name for name, _ in agent.annotated} == {"web-0", "web-1"}


def test_an_answered_or_repeated_request_is_not_taken_again() -> None:
    plugin, agent = PrePull(), FakeAgent()
    plugin.configure(agent)
    plugin.pod_changed(view(**{api.PREPULL: IMAGE, api.PREPULLED: IMAGE}), agent)
    plugin.pod_changed(view(**{api.PREPULL: IMAGE, api.PREPULL_ERROR: "earlier"}), agent)
    plugin.pod_changed(view(), agent)
    plugin.pod_changed(asking(IMAGE), agent)
    plugin.pod_changed(asking(IMAGE), agent)  # the informer's next event, before the answer
    settle(plugin, agent, 1)
    time.sleep(0.05)
    assert len(agent.annotated) == 1


@pytest.mark.parametrize(
    "value",
    ["", "app:1,,app:2", "UPPER/case", "app:1 --insecure", "x" * 600, ",".join(["a"] * 17)],
)
def test_a_bad_value_gets_an_event_and_an_error_never_a_pull(value: str) -> None:
    plugin, agent = PrePull(), FakeAgent()
    plugin.configure(agent)
    plugin.pod_changed(asking(value), agent)
    plugin.close()
    assert agent.pulls == []
    assert [(r, w) for r, _, w in agent.events] == [("PrePullRefused", True)]
    ((_, answer),) = agent.annotated
    assert api.PREPULL in answer[api.PREPULL_ERROR] and len(answer[api.PREPULL_ERROR] or "") <= 512


def test_a_failed_pull_is_answered_with_its_error() -> None:
    plugin, agent = PrePull(), FakeAgent(fail=IMAGE)
    plugin.configure(agent)
    plugin.pod_changed(asking(IMAGE), agent)
    settle(plugin, agent, 1)
    error = agent.annotated[0][1][api.PREPULL_ERROR] or ""
    assert "manifest unknown" in error and "real-0" in error
    assert agent.events[0][0] == "PrePullFailed"


def test_options_are_checked() -> None:
    agent = FakeAgent()
    agent.options = {"prepull.timeout": "30", "prepull.workers": "1"}
    plugin = PrePull()
    plugin.configure(agent)
    assert (plugin.pull_timeout, plugin.workers) == (30.0, 1)
    agent.options = {"prepull.timeout": "soon"}
    with pytest.raises(ValueError, match=r"prepull\.timeout"):
        PrePull().configure(agent)
