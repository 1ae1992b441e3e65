"""``warmed``: a successor counts as rebuilt once it is Ready and annotated warm.

A pod whose cache takes a while to fill after it starts (Ready early, fast later) has its
workload, or an operator, annotate it ``example.fulcrum.io/warm: "true"`` when it is; until
then the rebuild controller keeps the successor's status ``claimed`` and asks again every
``RETRY_SECONDS``. Rebuilds start at once (``pre_rebuild`` allows).
"""

from __future__ import annotations

from kube import objects
from kube.hooks import ALLOW, Verdict
from kube.objects import Raw

WARM = "example.fulcrum.io/warm"
RETRY_SECONDS = 2.0


class Warmed:
    """Done once the successor is Ready and annotated ``example.fulcrum.io/warm: "true"``."""

    name = "warmed"

    def pre_rebuild(self, pod: Raw) -> Verdict:
        return ALLOW

    def post_rebuild(self, successor: Raw) -> Verdict:
        if not objects.ready(successor):
            return Verdict(allow=False, retry_after=RETRY_SECONDS, reason="waiting for Ready")
        if objects.annotations(successor).get(WARM) != "true":
            return Verdict(allow=False, retry_after=RETRY_SECONDS, reason=f"waiting for {WARM}")
        return ALLOW
