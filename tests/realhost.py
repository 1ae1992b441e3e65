"""What a test on real nodes needs from the host, said once: root and the Debian packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fulcrum.harness import images, realnodes


def require_real_nodes() -> None:
    """Skip (fail under CI, whose ``.ci/run`` installs them) unless real nodes can run here."""
    missing = [p for p, path in realnodes.PACKAGES.items() if not Path(path).exists()]
    if not images.DOCKER_REGISTRY.exists() and "docker-registry" not in missing:
        missing.append("docker-registry")
    reason = f"real nodes need apt-get install {' '.join(missing)}" if missing else ""
    if not reason and os.geteuid() != 0:
        reason = "real nodes need root"
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
