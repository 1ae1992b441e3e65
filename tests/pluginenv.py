"""Plugin packages installed as users install them: ``pip install`` into a fresh virtual
environment, not monkeypatched entry points.

The new environment sees this one's site-packages through a ``.pth`` line (appended after its
own), so Fulcrum and its dependencies resolve without downloads while the plugin packages, and
only they, are installed into it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def fresh_venv(tmp_path: Path, *package_dirs: Path) -> Path:
    """A virtual environment under ``tmp_path`` with ``package_dirs`` pip-installed (no
    dependencies, no build isolation: offline); returns its ``python``.

    Each package is built from a copy, so the build leaves nothing in the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    ask = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(subprocess.check_output([str(python), "-c", ask], text=True).strip())
    ours = sysconfig.get_path("purelib")
    (purelib / "fulcrum-host-env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    copies = [shutil.copytree(d, tmp_path / "packages" / Path(d).name) for d in package_dirs]
    if copies:
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        subprocess.run([*pip, "--no-build-isolation", *map(str, copies)], check=True)
    return python
