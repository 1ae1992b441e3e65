"""Hold an opted-in Deployment's image change until its nodes have the new images.

A Deployment's controller deletes its old pods the instant it sees a new template, so there is
no moment to pre-pull in between unless the change arrives paused. This mutating step (webhook
``deployments.prepull.fulcrum.io``) adds ``spec.paused: true`` and ``fulcrum.io/prepull-hold:
<time>`` to the UPDATE that changes the images of an opted-in template (``fulcrum.io/rebuild:
local``), in that same write; the rebuild controller (``rebuild.prepull``) then asks the
predecessors' nodes to pull and unpauses it when they have answered, or after its bound.

A Deployment paused by its user is left alone (the hold annotation marks Fulcrum's pause, and
only that one is ever undone); a change made while Fulcrum holds it keeps the hold and its
start. The webhook's failurePolicy is Ignore: while Fulcrum is down, a rollout goes on without
its pre-pull.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kube import api

Obj = Mapping[str, Any]


def _annotations(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    found = meta.get("annotations") if isinstance(meta, Mapping) else None
    return found if isinstance(found, Mapping) else {}


def hold(request: Obj, now: datetime | None = None) -> list[dict[str, Any]]:
    """The JSON patch that pauses this Deployment UPDATE for a pre-pull, or none."""
    new, old = request.get("object"), request.get("oldObject")
    if request.get("operation") != "UPDATE" or not isinstance(new, Mapping):
        return []
    if not isinstance(old, Mapping) or not api.template_opted_in(new):
        return []
    if api.template_images(new) == api.template_images(old):
        return []
    spec = new.get("spec")
    if not isinstance(spec, Mapping) or (spec.get("replicas") == 0):
        return []
    held = api.PREPULL_HOLD in _annotations(new)
    if spec.get("paused") and not held:
        return []  # paused by its user, now or before: theirs to resume
    if held:
        return []  # held already: the hold and its start stay as they are
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    patch: list[dict[str, Any]] = [{"op": "add", "path": "/spec/paused", "value": True}]
    key = api.PREPULL_HOLD.replace("~", "~0").replace("/", "~1")
    meta = new.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("annotations"), Mapping):
        patch.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": when})
    else:
        value = {api.PREPULL_HOLD: when}
        patch.append({"op": "add", "path": "/metadata/annotations", "value": value})
    return patch
