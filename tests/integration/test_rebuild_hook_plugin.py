"""A rebuild hook installed as docs/rebuild.md says: ``pip install`` where the rebuild controller
runs, and nowhere else. Here the controller runs from a fresh virtual environment with
examples/fulcrum-hook-example installed; the webhook and the extender run from this Python,
without it. A pod naming the hook is admitted, keeps its node, and is rebuilt through the hook;
a pod naming a hook nobody has is refused by the controller, naming the hook and the fix."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fulcrum.harness import cluster
from fulcrum.lab import rebuild_run as rr
from kube import api
from kube.hooks import ANNOTATION, INSTALL_HINT, default_hook_registry
from tests.integration.conftest import KwokCluster, kit_in
from tests.pluginenv import fresh_venv

pytestmark = pytest.mark.integration

NS = "it-hook-plugin"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fulcrum-hook-example"
WARM = "example.fulcrum.io/warm"


@pytest.fixture(scope="module")
def kit(kwok_cluster: KwokCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[rr.Kit]:
    """The cluster's controller restarted from a virtual environment with the example hook."""
    assert "warmed" not in default_hook_registry()  # this Python (webhook, extender) lacks it
    python = fresh_venv(tmp_path_factory.mktemp("hook-env"), EXAMPLE)
    cluster.restart_rebuild(kwok_cluster.name, python=python)
    log = cluster.state_dir(kwok_cluster.name) / "rebuild-fulcrum-rebuild-0.log"
    assert "rebuild hooks: leader-aware, ready, warmed" in log.read_text()
    yield kit_in(kwok_cluster, NS)
    cluster.restart_rebuild(kwok_cluster.name)  # as the other tests of the cluster expect it


def pod(kit: rr.Kit, name: str) -> dict[str, Any]:
    found = kit.core.read_namespaced_pod(name, NS, _preload_content=False)
    out: dict[str, Any] = orjson.loads(found.data)
    return out


def status(kit: rr.Kit, name: str) -> dict[str, Any]:
    return api.rebuild_status(pod(kit, name)["metadata"].get("annotations") or {})


def events(kit: rr.Kit, name: str) -> list[tuple[str, str]]:
    found = kit.core.list_namespaced_event(
        NS, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    return [(e["reason"], e["message"]) for e in orjson.loads(found.data)["items"]]


def create(kit: rr.Kit, obj: dict[str, Any]) -> str:
    """``kubectl create`` as a user runs it; what it warns (stderr)."""
    state = cluster.load_state(kit.name)
    cmd = [state.kubectl, "--kubeconfig", str(cluster.kubeconfig_path(kit.name))]
    done = subprocess.run(
        [*cmd, "create", "-f", "-"], input=json.dumps(obj), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_pod_naming_a_hook_only_the_controller_has_is_rebuilt_through_it(kit: rr.Kit) -> None:
    hooked = rr.bare_pod(NS, "warm-0", "warm", annotations={ANNOTATION: "warmed"})
    warned = create(kit, hooked)
    assert "'warmed' is not a built-in rebuild hook" in warned  # admitted, with a word
    rr.wait_running(kit, NS, {"warm": 1}, timeout=120)
    rr.wait_guarded(kit, NS, {"warm": 1}, timeout=60)  # the webhook and controller guard it
    node = pod(kit, "warm-0")["spec"]["nodeName"]

    rr.replace_force(kit, [hooked])  # the successor, same name: back on its node
    rr.wait_for("successor claimed", lambda: status(kit, "warm-0").get("action") == "claimed")
    assert pod(kit, "warm-0")["spec"]["nodeName"] == node
    rr.wait_running(kit, NS, {"warm": 1}, timeout=120)
    # Ready, but not warm: the hook keeps it from counting as rebuilt
    with pytest.raises(TimeoutError):
        rr.wait_for("rebuilt", lambda: status(kit, "warm-0").get("action") == "rebuilt", timeout=6)

    kit.kubectl("annotate", "pod", "warm-0", "-n", NS, f"{WARM}=true")
    rr.wait_for(
        "rebuilt once warm", lambda: status(kit, "warm-0").get("action") == "rebuilt", timeout=30
    )
    assert status(kit, "warm-0")["reason"].startswith(f"back on node {node}")


def test_a_pod_naming_a_hook_nobody_has_is_refused_by_the_controller(kit: rr.Kit) -> None:
    create(kit, rr.bare_pod(NS, "cold-0", "cold", annotations={ANNOTATION: "ready,chilled"}))

    def refusals() -> list[str]:
        return [message for reason, message in events(kit, "cold-0") if reason == "RebuildRefused"]

    rr.wait_for("refused, with an Event", lambda: bool(refusals()), timeout=60)
    [message] = refusals()
    assert "the rebuild controller has no hook 'chilled' (it has leader-aware, ready, warmed)" in (
        message
    )
    assert status(kit, "cold-0")["action"] == "refused"
    assert message.endswith(INSTALL_HINT)
    rr.wait_for("finalizer gone", lambda: rr.guarded(kit, NS, "cold") == 0, timeout=30)
