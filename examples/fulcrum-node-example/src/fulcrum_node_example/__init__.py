"""An example node plugin for ``fulcrum node``: copy it to start your own.

``AnnotationEnv`` does two things a platform team often wants on its nodes:

- **an environment variable from a pod annotation**: a pod annotated
  ``example.fulcrum.io/env: "TEAM=payments"`` gets ``TEAM=payments`` in every container, set
  by the runtime as the container is created (NRI), not by editing the pod;
- **a check**: how full a directory the node keeps scratch data in is (``path``, default
  ``/tmp``), Warn and Error above two thresholds; ``fulcrum inspect`` counts it with the built-in
  checks.

Options (``fulcrum node --plugin-option annotation-env.KEY=VALUE``): ``path``, ``warn`` and
``error`` (percent used, default 80 and 95).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from node.agent import options_for
from node.plugin import (
    Adjustment,
    AgentContext,
    CheckResult,
    ContainerView,
    NodePlugin,
    PodView,
    Severity,
)

ANNOTATION = "example.fulcrum.io/env"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class AnnotationEnv(NodePlugin):
    name = "annotation-env"
    description = f"{ANNOTATION}: NAME=VALUE into every container; a check of a directory's use"
    order = 50
    timeout = 0.2

    def __init__(self) -> None:
        self.path = "/tmp"
        self.warn = 80.0
        self.error = 95.0

    def configure(self, agent: AgentContext) -> None:
        options = options_for(agent, self.name)
        self.path = options.get("path", self.path)
        self.warn = float(options.get("warn", self.warn))
        self.error = float(options.get("error", self.error))

    def create_container(self, pod: PodView, container: ContainerView) -> Adjustment | None:
        raw = pod.annotations.get(ANNOTATION)
        if raw is None:
            return None
        name, eq, value = raw.partition("=")
        if not eq or not _NAME.fullmatch(name):
            # a plugin reports bad input by raising: the agent records an Event on the pod
            # and, with the default failure policy ("ignore"), the container starts without it
            raise ValueError(f"annotation {ANNOTATION}={raw[:60]!r}: expected NAME=VALUE")
        return Adjustment(env={name: value})

    def check(self, agent: AgentContext) -> Iterable[CheckResult]:
        try:
            stats = os.statvfs(self.path)
        except OSError as exc:
            return [CheckResult("example.scratch", Severity.ERROR, f"{self.path}: {exc}")]
        used = 100.0 * (1 - stats.f_bavail / stats.f_blocks) if stats.f_blocks else 0.0
        severity = (
            Severity.ERROR
            if used >= self.error
            else Severity.WARN
            if used >= self.warn
            else Severity.INFO
        )
        message = f"{self.path} {used:.1f}% used"
        threshold = self.error if severity is Severity.ERROR else self.warn
        return [CheckResult("example.scratch", severity, message, round(used, 1), threshold)]
