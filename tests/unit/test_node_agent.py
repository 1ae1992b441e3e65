"""node.agent: hooks in order, merged; a plugin that raises, hangs or refuses never blocks."""

from __future__ import annotations

import threading
import time

import pytest

from node.agent import Agent, parse_options
from node.conformance import FakeContext
from node.plugin import (
    Adjustment,
    AgentContext,
    CheckResult,
    ContainerView,
    NodePlugin,
    PodView,
    Refuse,
    Severity,
    hooks_of,
)

POD = PodView("default", "web-1", "uid-1")
CONTAINER = ContainerView("app", "c1")


class SetEnv(NodePlugin):
    name = "set-env"
    order = 20

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        return Adjustment(env={"A": "second", "B": "b"})


class First(NodePlugin):
    name = "first"
    order = 10

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        return Adjustment(env={"A": "first"}, devices=["/dev/x"])


class Raises(NodePlugin):
    name = "raises"

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        raise RuntimeError("boom")

    def check(self, agent: AgentContext) -> list[CheckResult]:
        raise RuntimeError("no disk")


class Hangs(NodePlugin):
    name = "hangs"
    timeout = 0.1

    def __init__(self) -> None:
        self.release = threading.Event()

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        self.release.wait(10)
        return Adjustment(env={"LATE": "1"})


class Refuses(NodePlugin):
    name = "refuses"

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        raise Refuse("GPU 2 is not yours")


def agent(*plugins: NodePlugin, budget: float = 1.5) -> tuple[Agent, FakeContext]:
    context = FakeContext()
    return Agent(plugins, context, budget=budget), context


def test_adjustments_merge_in_order_later_wins() -> None:
    a, _ = agent(SetEnv(), First())
    got = a.create_container(POD, CONTAINER)
    assert got.env == {"A": "second", "B": "b"}
    assert got.devices == ["/dev/x"]


def test_a_plugin_that_raises_is_reported_and_the_container_goes_on() -> None:
    a, context = agent(Raises(), SetEnv())
    assert a.create_container(POD, CONTAINER).env["B"] == "b"
    assert context.events == [
        (
            "default/web-1",
            "FulcrumPluginFailed",
            "default/web-1 container 'app': plugin 'raises': create_container raised "
            "RuntimeError: boom; went on without it",
        )
    ]
    [result] = a.checks()
    assert result.severity is Severity.ERROR and "no disk" in result.message


def test_failure_policy_fail_refuses() -> None:
    class Strict(Raises):
        name = "strict"
        failure_policy = "fail"

    a, _ = agent(Strict())
    with pytest.raises(Refuse, match="failure policy: fail"):
        a.create_container(POD, CONTAINER)


def test_a_hung_plugin_costs_its_timeout_once_then_is_skipped_until_it_returns() -> None:
    hangs = Hangs()
    a, context = agent(hangs, SetEnv())
    started = time.monotonic()
    assert a.create_container(POD, CONTAINER).env == {"A": "second", "B": "b"}
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    a.create_container(POD, CONTAINER)
    assert time.monotonic() - started < 0.05  # skipped while stuck
    assert "has not returned" in context.events[-1][2]
    hangs.release.set()
    deadline = time.monotonic() + 5
    while a._stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.create_container(POD, CONTAINER).env["LATE"] == "1"


def test_the_budget_bounds_all_plugins_together() -> None:
    first, second = Hangs(), Hangs()
    second.__class__ = type("Hangs2", (Hangs,), {"name": "hangs-2", "timeout": 0.1})
    a, context = agent(first, second, SetEnv(), budget=0.1)
    started = time.monotonic()
    a.create_container(POD, CONTAINER)
    assert time.monotonic() - started < 0.3
    assert (
        "plugin 'hangs-2': skipped create_container, the agent's 0.1 s budget"
        in (context.events[1][2])
    )
    first.release.set()
    second.release.set()


def test_refuse_passes_through_with_an_event() -> None:
    a, context = agent(SetEnv(), Refuses())
    with pytest.raises(Refuse, match="refuses: GPU 2 is not yours"):
        a.create_container(POD, CONTAINER)
    assert context.events[0][1] == "FulcrumRefused"


def test_only_overridden_hooks_count() -> None:
    assert hooks_of(SetEnv) == ["create_container"]
    assert hooks_of(Raises()) == ["create_container", "check"]
    a, _ = agent(SetEnv())
    assert a.uses("create_container") and not a.uses("container_stopped")


def test_parse_options() -> None:
    assert parse_options(["gpu.fake=4", "GPU.model=A100", "x.y="]) == {
        "gpu.fake": "4",
        "gpu.model": "A100",
        "x.y": "",
    }
    with pytest.raises(ValueError, match=r"expected PLUGIN\.KEY=VALUE"):
        parse_options(["fake=4"])
