"""Built-in node plugin ``ipam``: the node's pool addresses agree with Fulcrum's decisions.

``fulcrum-ipam`` (the CNI IPAM plugin, docs/networking.md) records each pool address it gives a
sandbox as ``<dataDir>/<address>``. Fulcrum decides those addresses at bind
(``fulcrum.io/assigned-ip``). The check compares the two for this node:

- an address held on the node that no pod bound here claims: Warn (a leak, or a handover the
  next sandbox will take within ``fulcrum-ipam``'s wait);
- a claimed address held for longer than that with no pod: the same Warn, each address named;
- every held address claimed: Info, with the count.

Options: ``data-dir`` (``--plugin-option ipam.data-dir=...``; default
``/var/lib/fulcrum/cni/fulcrum-ipam``, the chart's ``cni`` configuration).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from pathlib import Path

from node.plugin import AgentContext, CheckResult, NodePlugin, PodView, Severity

DEFAULT_DATA_DIR = "/var/lib/fulcrum/cni/fulcrum-ipam"


class IpamAgreement(NodePlugin):
    name = "ipam"
    description = "fulcrum-ipam's addresses on this node agree with fulcrum.io/assigned-ip"
    order = 30

    def __init__(self) -> None:
        self.data_dir = Path(DEFAULT_DATA_DIR)
        self._claims: dict[str, str] = {}  # pod uid -> assigned address
        self._keys: dict[str, str] = {}  # pod uid -> namespace/name
        self._lock = threading.Lock()

    def configure(self, agent: AgentContext) -> None:
        from node.agent import options_for

        self.data_dir = Path(options_for(agent, self.name).get("data-dir", DEFAULT_DATA_DIR))

    def pod_changed(self, pod: PodView, agent: AgentContext) -> None:
        try:
            address = pod.assigned_ip
        except ValueError:
            address = None  # the controller reports a forged or bad address; nothing to compare
        with self._lock:
            if address is None:
                self._claims.pop(pod.uid, None)
            else:
                self._claims[pod.uid] = address
                self._keys[pod.uid] = pod.key

    def pod_removed(self, pod: PodView) -> None:
        with self._lock:
            self._claims.pop(pod.uid, None)
            self._keys.pop(pod.uid, None)

    def held(self) -> list[str]:
        """The addresses ``fulcrum-ipam`` holds on this node."""
        if not self.data_dir.is_dir():
            return []
        found = []
        for path in self.data_dir.iterdir():
            try:
                found.append(str(ipaddress.ip_address(path.name)))
            except ValueError:
                continue  # its lock file, a temporary file
        return sorted(found)

    def check(self, agent: AgentContext) -> Iterable[CheckResult]:
        if not self.data_dir.is_dir():
            message = f"no fulcrum-ipam data on this node ({self.data_dir}); no pool addresses"
            return [CheckResult("ipam.agreement", Severity.INFO, message, value=0)]
        held = self.held()
        with self._lock:
            claimed = set(self._claims.values())
        stray = [a for a in held if a not in claimed]
        if stray:
            message = (
                f"{len(stray)} of {len(held)} pool address(es) held with no pod on this node "
                f"claiming them: {', '.join(stray[:10])}"
            )
            return [
                CheckResult("ipam.agreement", Severity.WARN, message, value=len(stray), threshold=0)
            ]
        message = f"{len(held)} pool address(es) held, each claimed by a pod on this node"
        return [CheckResult("ipam.agreement", Severity.INFO, message, value=len(held))]
