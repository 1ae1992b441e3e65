"""The Helm chart (charts/fulcrum) is the one source of Fulcrum's manifests; deploy/ is rendered
from it.

``python -m fulcrum.harness.chart`` (``make manifests``) runs ``helm template`` with the chart's
default values plus ``DEPLOY_VALUES`` and writes each template's documents to ``deploy/<template>``
and each CRD to ``deploy/crds/<file>``, so that ``kubectl apply -k deploy/`` and ``fulcrum cluster
up`` (which applies deploy/crds) use what ``helm install`` would. ``--check`` only compares, and
exits 1 naming the files that differ. helm itself is built from the Go module proxy like the
control plane (``fulcrum.harness.binaries``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fulcrum.harness.binaries import REPO_ROOT, BinaryError, ensure_binary

CHART = REPO_ROOT / "charts" / "fulcrum"
DEPLOY = REPO_ROOT / "deploy"
RELEASE = "fulcrum"
NAMESPACE = "fulcrum-system"
# deploy/ is for `kubectl apply -k`: it creates the namespace itself, and its webhook
# certificate comes from the Secret the user makes (`fulcrum webhook-cert`), since a certificate
# generated at render time would change with every rendering. kubectl runs no helm hooks, so
# deploy/ has no pre-delete Job: run `fulcrum rebuild --release-all` before deleting it.
DEPLOY_VALUES = (
    "namespace.create=true",
    "webhook.certificate.source=secret",
    "rebuild.releaseOnUninstall=false",
)
HEADER = (
    "# Generated from charts/fulcrum by `make manifests` (python -m fulcrum.harness.chart):\n"
    "# edit the chart, not this file. tests/unit/test_chart.py fails when they differ.\n"
)
_SOURCE = re.compile(r"^# Source: [^/]+/(.+)$")


class ChartError(RuntimeError):
    """helm failed; the message carries its output."""


def helm() -> Path:
    """The helm binary: ``FULCRUM_BIN_DIR``'s, the cached one, or one built now."""
    return ensure_binary("helm")


def template(
    helm_path: Path,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    values_files: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    include_crds: bool = False,
    chart: Path = CHART,
) -> str:
    """``helm template`` of ``chart``: the rendered documents, each after its ``# Source:``."""
    cmd = [str(helm_path), "template", release, str(chart), "--namespace", namespace]
    cmd += [arg for path in values_files for arg in ("--values", str(path))]
    cmd += [arg for value in set_values for arg in ("--set", value)]
    if include_crds:
        cmd.append("--include-crds")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise ChartError(f"helm template failed (exit {result.returncode}): {result.stderr}")
    return result.stdout


def split_sources(rendered: str) -> dict[str, str]:
    """The rendered documents grouped by the chart file they came from (``templates/x.yaml``,
    ``crds/y.yaml``), in helm's order, joined with ``---``."""
    grouped: dict[str, list[str]] = {}
    for doc in re.split(r"(?m)^---\n", rendered):
        lines = doc.splitlines(keepends=True)
        match = _SOURCE.match(lines[0].rstrip("\n")) if lines else None
        if match is None:
            if doc.strip():
                raise ChartError(f"a rendered document without '# Source:': {doc[:200]!r}")
            continue
        body = "".join(lines[1:]).rstrip("\n") + "\n"
        grouped.setdefault(match.group(1), []).append(body)
    return {source: "---\n".join(docs) for source, docs in grouped.items()}


def deploy_files(helm_path: Path) -> dict[Path, str]:
    """What deploy/ holds of the chart: ``deploy/<template>`` and ``deploy/crds/<crd>``."""
    rendered = template(helm_path, set_values=DEPLOY_VALUES, include_crds=True)
    files: dict[Path, str] = {}
    for source, text in split_sources(rendered).items():
        kind, _, name = source.partition("/")
        target = DEPLOY / name if kind == "templates" else DEPLOY / kind / name
        files[target] = HEADER + text
    return files


def generated_on_disk() -> list[Path]:
    """The files under deploy/ that a rendering wrote (they start with HEADER)."""
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.read_text().startswith(HEADER))


def stale(files: dict[Path, str]) -> list[Path]:
    """Files of deploy/ that differ from ``files``, are missing, or are no longer rendered."""
    differ = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    return sorted(differ + [p for p in generated_on_disk() if p not in files])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fulcrum.harness.chart", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if stale")
    args = parser.parse_args(argv)
    try:
        files = deploy_files(helm())
    except (BinaryError, ChartError) as exc:
        print(f"fulcrum.harness.chart: error: {exc}", file=sys.stderr)
        return 2
    out_of_date = stale(files)
    if args.check:
        for path in out_of_date:
            print(f"{path.relative_to(REPO_ROOT)} differs from the chart: run `make manifests`")
        return 1 if out_of_date else 0
    for path in out_of_date:
        if path in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path])
        else:
            path.unlink()
        print(f"wrote {path.relative_to(REPO_ROOT)}" if path in files else f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
