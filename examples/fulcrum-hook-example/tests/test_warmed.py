from typing import Any

from fulcrum_hook_example.warmed import WARM, Warmed

from kube.hooks import ALLOW, hooks_for

READY = {"conditions": [{"type": "Ready", "status": "True"}]}


def successor(*, ready: bool, warm: bool) -> dict[str, Any]:
    annotations = {WARM: "true"} if warm else {}
    return {"metadata": {"annotations": annotations}, "status": READY if ready else {}}


def test_a_successor_is_rebuilt_once_ready_and_warm() -> None:
    hook = Warmed()
    assert hook.post_rebuild(successor(ready=True, warm=True)) == ALLOW
    assert hook.post_rebuild(successor(ready=True, warm=False)).reason == f"waiting for {WARM}"
    assert hook.post_rebuild(successor(ready=False, warm=True)).reason == "waiting for Ready"
    assert not hook.post_rebuild({}).allow


def test_a_rebuild_starts_at_once() -> None:
    assert Warmed().pre_rebuild(successor(ready=False, warm=False)) == ALLOW


def test_the_installed_package_gives_the_controller_the_hook() -> None:
    """Run where the package is installed (pip install ., as in the README)."""
    from kube.hooks import ANNOTATION, default_hook_registry

    [hook] = hooks_for({ANNOTATION: "warmed"}, default_hook_registry())
    assert isinstance(hook, Warmed)
