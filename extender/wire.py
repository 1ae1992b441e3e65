"""Wire types of ``k8s.io/kube-scheduler/extender/v1``, with the Go field names it uses on the wire.

Only the envelope is modelled; Kubernetes objects inside (Pod, Node) stay raw dicts, because the
extender reads a handful of their fields and re-encodes nodes unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_EXTENDER_SCORE = 10  # extenderv1.MaxExtenderPriority; HostPriorityList is written directly


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class NodeList(_Wire):
    """v1.NodeList, passed through unchanged apart from the filtered items."""

    model_config = ConfigDict(extra="allow", frozen=True)
    metadata: dict[str, Any] = Field(default_factory=dict)
    items: list[dict[str, Any]] = Field(default_factory=list)


class ExtenderArgs(_Wire):
    """Request of the filter and prioritize verbs."""

    Pod: dict[str, Any]
    Nodes: NodeList | None = None  # set when nodeCacheCapable is false
    NodeNames: list[str] | None = None  # set when nodeCacheCapable is true


class ExtenderFilterResult(_Wire):
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class ExtenderPreemptionArgs(_Wire):
    """Victims per node: whole pods (``nodeCacheCapable: false``) or UIDs (true)."""

    Pod: dict[str, Any]
    NodeNameToVictims: dict[str, Any] | None = None
    NodeNameToMetaVictims: dict[str, Any] | None = None


class ExtenderBindingArgs(_Wire):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(_Wire):
    Error: str = ""
