"""`fulcrum node`: bad input is one line naming the fix, before any connection; the wiring's
choices (which NRI events, which options go unused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.cli import main
from fulcrum.run.node_serve import NRIBridge, _unused_options
from node.agent import Agent
from node.conformance import FakeContext
from node.gpu import GpuDevices
from node.ipam_check import IpamAgreement


def test_an_unknown_plugin_is_refused_naming_the_available_ones() -> None:
    with pytest.raises(SystemExit, match="unknown node plugin 'nope'; available: gpu, ipam"):
        main(["node", "--plugins", "gpu,nope"])


def test_a_malformed_plugin_option_is_refused() -> None:
    with pytest.raises(SystemExit, match=r"expected PLUGIN\.KEY=VALUE"):
        main(["node", "--plugin-option", "fake=4"])


def test_list_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--list-plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("gpu", "ipam", "node-checks", "prepull"):
        assert f"\n{name} " in "\n" + out


def test_nri_events_are_only_those_a_plugin_takes() -> None:
    context = FakeContext()
    assert NRIBridge(Agent([IpamAgreement()], context)).events() == set()
    gpu = NRIBridge(Agent([GpuDevices()], context)).events()
    assert gpu == {"CreateContainer", "StopContainer"}


def test_options_for_plugins_not_running_are_named() -> None:
    options = {"gpu.fake": "2", "node-checks.root": "/host"}
    assert _unused_options(options, [GpuDevices()]) == ["node-checks.root"]


def test_a_relist_removes_the_pods_deleted_while_the_watch_was_down() -> None:
    from unittest.mock import MagicMock

    from fulcrum.run.node_serve import NodeContext, PodSink

    seen: list[tuple[str, str]] = []

    class Tracks(IpamAgreement):
        def pod_changed(self, pod, agent):  # type: ignore[no-untyped-def]
            seen.append(("changed", pod.name))

        def pod_removed(self, pod):  # type: ignore[no-untyped-def]
            seen.append(("removed", pod.name))

    context = NodeContext("n1", Path("/k"), "", Path("/c"), {}, MagicMock(), MagicMock())
    sink = PodSink(Agent([Tracks()], context), context)

    def pod(name: str) -> dict[str, object]:
        return {"metadata": {"namespace": "d", "name": name, "uid": f"u-{name}"}}

    sink.replace("pods", [pod("a"), pod("b")])
    sink.apply("pods", "DELETED", pod("a"))
    sink.replace("pods", [pod("c")])
    assert seen == [
        ("changed", "a"),
        ("changed", "b"),
        ("removed", "a"),
        ("removed", "b"),
        ("changed", "c"),
    ]
