"""examples/fulcrum-hook-example pip-installed into a fresh virtual environment, as its README
says: the controller's registry there has the hook, this Python's does not, and the example's
own tests pass there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kube.hooks import default_hook_registry
from tests.pluginenv import fresh_venv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fulcrum-hook-example"


def test_the_example_hook_is_the_controllers_once_installed(tmp_path: Path) -> None:
    python = fresh_venv(tmp_path, EXAMPLE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ask = "from kube.hooks import default_hook_registry as r; print(','.join(r().names()))"
    there = subprocess.run(
        [str(python), "-c", ask], capture_output=True, text=True, env=env, check=True
    )
    assert there.stdout.split() == ["leader-aware,ready,warmed"]
    assert "warmed" not in default_hook_registry()  # installed there only
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
