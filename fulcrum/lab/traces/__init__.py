"""The openb production trace (Alibaba, Apache-2.0: ``openb/NOTICE``), shipped with Fulcrum.

``OPENB`` is where ``fulcrum simulate``, ``fulcrum compare`` and the benchmarks read it:
``$FULCRUM_TRACES`` if set, else the copy inside the package, so any install has it.
"""

from __future__ import annotations

import os
from pathlib import Path

WORKLOADS = ("default", "cpu050", "gpushare40", "gpuspec33", "multigpu20")
NODE_LISTS = ("gpu_node", "all_node")


def openb_dir() -> Path:
    return Path(os.environ.get("FULCRUM_TRACES") or Path(__file__).resolve().parent / "openb")


def pod_list(workload: str) -> Path:
    return openb_dir() / f"openb_pod_list_{workload}.csv"


def node_list(kind: str = "gpu_node") -> Path:
    return openb_dir() / f"openb_node_list_{kind}.csv"
