"""Where Fulcrum's kwok Stages live: pass ``STAGES_PATH`` to ``kwokctl --config``.

``kwok_stages.yaml`` (package data, next to this module) is a complete set of Stages: kwokctl
replaces all of its defaults as soon as its configuration holds one. It differs from kwok's
"fast" lifecycle in two ways: a pod annotated ``fulcrum.io/assigned-ip`` gets exactly that
IP, and terminating pods are deleted without stripping their finalizers.
"""

from __future__ import annotations

from pathlib import Path

STAGES_PATH: Path = Path(__file__).resolve().with_name("kwok_stages.yaml")
