"""The chart's two images for a test on real nodes, pushed to the cluster's registry.

- Fulcrum's (the extender, the rebuild controller, the webhook): ``make image``'s build
  (deploy/image/build.sh: buildah and debootstrap, minutes) of this checkout, tagged
  ``src-<digest of its sources>`` and kept in buildah's local storage, so it is built once per
  source change; ``buildah push`` copies it to the registry. ``FULCRUM_TEST_IMAGE`` names another
  image of that storage to push instead.
- kube-scheduler's (the chart's ``scheduler.image``): the harness's own kube-scheduler binary
  FROM scratch, with the shared libraries ``ldd`` lists and the loader (the binary is
  dynamically linked), built by ``fulcrum.harness.images`` (no registry.k8s.io from here).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fulcrum.harness import images

FULCRUM_PACKAGES = (
    "fulcrum",
    "scheduler",
    "policies",
    "extender",
    "rebuild",
    "kube",
    "admission",
    "node",
)
FULCRUM_IMAGE_FILES = ("pyproject.toml", "deploy/image/build.sh", "deploy/image/constraints.txt")
# In the wheel, but never run in a pod: editing the test harness must not rebuild the image.
NOT_IN_PODS = ("fulcrum/harness", "fulcrum/lab")
SCHEDULER_USER = "65532:65532"

Log = Callable[[str], None]


class ChartImageError(RuntimeError):
    """An image could not be built or pushed; the message names the step and the fix."""


def _run(cmd: list[str], *, timeout: float = 600) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise ChartImageError(f"`{' '.join(cmd)}` failed:\n  " + "\n  ".join(output[-20:]))
    return result.stdout


# --- Fulcrum's image ---------------------------------------------------------------------------


def source_digest(root: Path) -> str:
    """12 hex digits over what the pods run of the Fulcrum image: the packages (less the
    harness), pyproject and the build script."""
    files = [root / name for name in FULCRUM_IMAGE_FILES]
    for package in FULCRUM_PACKAGES:
        found = (root / package).rglob("*")
        files += sorted(
            f
            for f in found
            if f.is_file()
            and "__pycache__" not in f.parts
            and not str(f.relative_to(root)).startswith(NOT_IN_PODS)
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_exists(ref: str) -> bool:
    """Whether buildah's local storage (podman's too) has the image ``ref``."""
    inspect = ["buildah", "inspect", "--type", "image", ref]
    return subprocess.run(inspect, capture_output=True, check=False).returncode == 0


def ensure_fulcrum_image(root: Path, *, log: Log = print) -> str:
    """The Fulcrum image of the checkout at ``root``: ``localhost/fulcrum:src-<digest>``, built
    by deploy/image/build.sh unless already there; older ``src-`` images are removed."""
    given = os.environ.get("FULCRUM_TEST_IMAGE")
    if given:
        if not image_exists(given):
            raise ChartImageError(f"FULCRUM_TEST_IMAGE={given}: buildah has no such image")
        return given
    tag = f"src-{source_digest(root)}"
    ref = f"localhost/fulcrum:{tag}"
    if image_exists(ref):
        return ref
    log(f"building {ref} with deploy/image/build.sh (a few minutes, once per source change)")
    env = dict(os.environ, IMAGE=f"fulcrum:{tag}", PYTHON=sys.executable)
    build = [str(root / "deploy" / "image" / "build.sh")]
    result = subprocess.run(
        build, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise ChartImageError("deploy/image/build.sh failed:\n  " + "\n  ".join(output[-20:]))
    listed = _run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"]).split()
    stale = [i for i in listed if i.startswith("localhost/fulcrum:src-") and i != ref]
    if stale:
        subprocess.run(["buildah", "rmi", *stale], capture_output=True, check=False)
    return ref


def push_fulcrum_image(ref: str, registry: str, *, log: Log = print) -> str:
    """``ref`` pushed to the plain-HTTP ``registry`` as ``<registry>/fulcrum:<tag>``: the
    name the nodes pull."""
    target = f"{registry}/fulcrum:{ref.rsplit(':', 1)[1]}"
    log(f"pushing {ref} to {target}")
    _run(["buildah", "push", "--quiet", "--tls-verify=false", ref, f"docker://{target}"])
    return target


# --- kube-scheduler's image -------------------------------------------------------------------


def shared_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader needs for ``binary``, the loader included, by ``ldd`` (none for
    a static binary)."""
    if images.is_static(binary):
        return []
    listed = _run(["ldd", str(binary)])
    return [Path(m.group(1)) for m in re.finditer(r"(/\S+) \(0x", listed)]


def binary_image(binary: Path) -> images.Image:
    """FROM scratch: ``binary`` on PATH with its shared libraries (each at the path ``ldd``
    names, with the file's content), run as 65532 with a writable /tmp."""
    entries: list[images.Entry] = [
        images.File(f"/usr/local/bin/{binary.name}", binary, 0o755),
        *(images.File(str(lib), lib.resolve(), 0o755) for lib in shared_libraries(binary)),
        images.Directory("/tmp", 0o1777),
    ]
    return images.Image(
        layers=(images.Layer(tuple(entries)),),
        entrypoint=(f"/usr/local/bin/{binary.name}",),
        env=("PATH=/usr/local/bin",),
        user=SCHEDULER_USER,
    )


def push_binary_image(binary: Path, registry: str, repository: str, tag: str) -> str:
    """``binary_image(binary)`` pushed as ``<registry>/<repository>:<tag>``; the reference."""
    try:
        with images.build(binary_image(binary)) as built:
            images.push(built, registry, repository, tag)
    except (images.ImageError, images.RegistryError) as exc:
        raise ChartImageError(f"image of {binary}: {exc}") from exc
    return f"{registry}/{repository}:{tag}"
