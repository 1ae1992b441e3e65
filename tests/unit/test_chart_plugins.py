"""Plugin packages in the chart (values ``plugins.*``): an init container pip-installs them into a
volume on the PYTHONPATH of the extender and the rebuild controller (the webhook loads no
plugin). The rendered
install command is run here, as the init container runs it, and the plugin it installs is then
found as the extender would find it.

helm as in test_chart.py (built by `fulcrum build`; these tests skip without it unless CI is set).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fulcrum.harness import chart
from tests.unit.test_chart import Doc, env, helm, one, render

__all__ = ["helm"]  # the fixture, shared with test_chart.py

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fulcrum-policy-example"
PLUGINS = "/opt/fulcrum-plugins"
PODS = {  # Deployment -> its container that runs Fulcrum
    "fulcrum-scheduler": "extender",
    "fulcrum-rebuild": "rebuild",
}


def pod(docs: list[Doc], deployment: str) -> Doc:
    spec: Doc = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def render_with(helm: Path, tmp_path: Path, plugins: Doc) -> list[Doc]:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"plugins": plugins}))
    return render(helm, values_files=[values])


def test_no_packages_no_init_container(helm: Path) -> None:
    docs = render(helm)
    for deployment, container in PODS.items():
        spec = pod(docs, deployment)
        assert "initContainers" not in spec
        assert "plugins" not in {v["name"] for v in spec["volumes"]}
        fulcrum = next(c for c in spec["containers"] if c["name"] == container)
        assert "PYTHONPATH" not in env(fulcrum)


def test_listed_packages_are_installed_into_every_fulcrum_pod(helm: Path, tmp_path: Path) -> None:
    docs = render_with(
        helm,
        tmp_path,
        {
            "packages": [
                "fulcrum-tenant-affinity==0.1.0",
                "https://files.example/z-1-py3-none-any.whl",
            ],
            "pipArgs": ["--index-url=https://pypi.internal/simple"],
        },
    )
    for deployment, container in PODS.items():
        spec = pod(docs, deployment)
        [init] = spec["initContainers"]
        assert init["name"] == "install-plugins"
        assert init["image"] == "docker.io/library/python:3.11-slim-bookworm"
        assert init["command"][-3:] == [
            "--index-url=https://pypi.internal/simple",
            "fulcrum-tenant-affinity==0.1.0",
            "https://files.example/z-1-py3-none-any.whl",
        ]
        assert {"--no-deps", f"--target={PLUGINS}"} <= set(init["command"])
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"]: m.get("readOnly", False) for m in init["volumeMounts"]} == {
            PLUGINS: False,
            "/tmp": False,
        }
        fulcrum = next(c for c in spec["containers"] if c["name"] == container)
        assert env(fulcrum)["PYTHONPATH"] == PLUGINS
        assert {"name": "plugins", "mountPath": PLUGINS, "readOnly": True} in fulcrum[
            "volumeMounts"
        ]
        assert {"plugins", "plugins-tmp"} <= {v["name"] for v in spec["volumes"]}
    scheduler = next(
        c for c in pod(docs, "fulcrum-scheduler")["containers"] if c["name"] == "kube-scheduler"
    )
    assert "PYTHONPATH" not in env(scheduler)


def test_the_init_containers_command_installs_a_plugin_the_extender_finds(
    helm: Path, tmp_path: Path
) -> None:
    """The rendered command, run with this Python instead of the installer image's, on a wheel
    of the example plugin; then ``fulcrum policies`` with the container's PYTHONPATH."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    source = shutil.copytree(EXAMPLE, tmp_path / "src")  # building leaves nothing in the tree
    subprocess.run([*build, "--wheel-dir", str(wheels), str(source)], check=True)
    [wheel] = wheels.glob("*.whl")
    docs = render_with(helm, tmp_path, {"packages": [str(wheel)], "pipArgs": ["--no-index"]})
    spec = pod(docs, "fulcrum-scheduler")
    [init] = spec["initContainers"]
    target = tmp_path / "plugins"
    command = [str(target).join(a.split(PLUGINS)) for a in init["command"]]
    assert command[:3] == ["python", "-m", "pip"]
    subprocess.run([sys.executable, *command[1:]], check=True, timeout=300)

    extender = next(c for c in spec["containers"] if c["name"] == "extender")
    path = str(target).join(env(extender)["PYTHONPATH"].split(PLUGINS))
    here = os.environ.get("PYTHONPATH")  # a worktree shadowing the installed Fulcrum, if any
    listed = subprocess.run(
        [sys.executable, "-m", "fulcrum.cli", "policies", "-o", "json"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([path, *([here] if here else [])])},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = {row["name"]: row for row in json.loads(listed.stdout)["policies"]}
    assert rows["GpuNodesForGpuPods"]["distribution"] == "fulcrum-policy-example"
    assert rows["GpuNodesForGpuPods"]["loaded"] is True


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        ({"packages": ["--pre"]}, "/plugins/packages/0"),  # an option, not a package
        ({"pipArgs": ["pypi.internal"]}, "/plugins/pipArgs/0"),  # a package, not an option
        ({"instaler": {}}, "instaler"),  # a typo
    ],
    ids=["option-as-package", "package-as-option", "typo"],
)
def test_a_bad_plugins_value_is_refused_naming_it(
    helm: Path, tmp_path: Path, plugins: Doc, message: str
) -> None:
    with pytest.raises(chart.ChartError) as failed:
        render_with(helm, tmp_path, plugins)
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)
