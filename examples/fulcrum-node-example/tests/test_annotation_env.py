"""The example plugin passes Fulcrum's conformance kit and does what it says."""

from __future__ import annotations

from fulcrum_node_example import ANNOTATION, AnnotationEnv

from node.conformance import FakeContext, check_node_plugin
from node.plugin import ContainerView, PodView, Severity


def test_conforms() -> None:
    check_node_plugin(AnnotationEnv)


def test_env_from_the_annotation() -> None:
    plugin = AnnotationEnv()
    plugin.configure(FakeContext())
    pod = PodView("default", "web", "u1", annotations={ANNOTATION: "TEAM=payments"})
    got = plugin.create_container(pod, ContainerView("app"))
    assert got is not None and got.env == {"TEAM": "payments"}
    assert plugin.create_container(PodView("default", "web", "u2"), ContainerView("app")) is None


def test_the_check_turns_to_error_past_its_threshold(tmp_path: object) -> None:
    plugin = AnnotationEnv()
    plugin.configure(FakeContext(options={"annotation-env.error": "0", "annotation-env.path": "/"}))
    [result] = plugin.check(FakeContext())
    assert result.severity is Severity.ERROR and result.check == "example.scratch"
