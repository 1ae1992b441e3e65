"""node.registry: built-ins and installed node plugins; examples/fulcrum-node-example conforms."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from node import registry
from node.conformance import ConformanceError, check_node_plugin
from node.plugin import NodePlugin

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "fulcrum-node-example" / "src"
GROUP = registry.ENTRY_POINT_GROUP


@pytest.fixture
def example() -> Iterator[EntryPoint]:
    sys.path.insert(0, str(EXAMPLE_SRC))
    try:
        yield EntryPoint("annotation-env", "fulcrum_node_example:AnnotationEnv", GROUP)
    finally:
        sys.path.remove(str(EXAMPLE_SRC))


def test_builtins_and_an_installed_plugin(example: EntryPoint) -> None:
    found = registry.available([example])
    assert found["gpu"].source == "built-in"
    assert found["annotation-env"].cls.__name__ == "AnnotationEnv"
    plugins = registry.create(["annotation-env", "GPU", "gpu"], [example])
    assert [p.name for p in plugins] == ["annotation-env", "gpu"]
    rows = {r["name"]: r for r in registry.describe([example])}
    assert rows["annotation-env"]["hooks"] == ["create_container", "check"]


def test_the_example_conforms(example: EntryPoint) -> None:
    cls = registry.available([example])["annotation-env"].cls
    check_node_plugin(cls)


def test_an_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(
        registry.UnknownPluginError, match="unknown node plugin 'nope'; available: gpu"
    ):
        registry.create(["nope"], [])


@pytest.mark.parametrize(
    ("point", "error"),
    [
        (EntryPoint("gpu", "node.gpu:GpuDevices", GROUP), "clashes with an existing node plugin"),
        (EntryPoint("x", "node.plugin:Severity", GROUP), "is not a subclass of"),
        (EntryPoint("x", "node.gpu:GpuDevices", GROUP), "its class's name is 'gpu'"),
        (EntryPoint("x", "no_such_module:X", GROUP), "cannot load node plugin 'x'"),
    ],
)
def test_bad_entry_points_are_named(point: EntryPoint, error: str) -> None:
    with pytest.raises(registry.PluginError, match=error):
        registry.available([point])


def test_the_kit_catches_a_plugin_that_breaks_the_rules() -> None:
    class Slow(NodePlugin):
        name = "Bad Name"

    with pytest.raises(ConformanceError, match="lower-case letters"):
        check_node_plugin(Slow)

    class BadEnv(NodePlugin):
        name = "bad-env"

        def create_container(self, pod, container):  # type: ignore[no-untyped-def]
            raise KeyError(pod.annotations["missing"])

    with pytest.raises(ConformanceError, match="raised KeyError"):
        check_node_plugin(BadEnv)
