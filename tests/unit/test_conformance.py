"""Every registered policy, and the example plugin, passes the shared conformance suite."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from policies.conformance import ConformanceError, check_policy
from policies.registry import BUILTIN
from scheduler.policy import PolicyContext

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "fulcrum-policy-example" / "src"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_policy_conforms(name: str) -> None:
    check_policy(BUILTIN[name])


@pytest.mark.parametrize("name", ["FGD", "Archimedes"])
def test_workload_policies_conform_without_a_target_workload(name: str) -> None:
    check_policy(BUILTIN[name], seeds=(4,), with_workload=False)


def test_example_plugin_conforms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    module = importlib.import_module("fulcrum_policy_example.gpu_nodes_for_gpu_pods")
    check_policy(module.create)
    sys.modules.pop("fulcrum_policy_example.gpu_nodes_for_gpu_pods", None)


class _Mutating:
    name = "Mutating"
    node_local = True

    def score(self, snapshot, pod):  # type: ignore[no-untyped-def]
        snapshot.free[:, 0] += 1
        return snapshot.free[:, 0] * 0.0

    def filter(self, snapshot, pod):  # type: ignore[no-untyped-def]
        return snapshot.feasible(pod) | True

    def select_devices(self, snapshot, row, pod):  # type: ignore[no-untyped-def]
        return snapshot.best_fit_devices(row, pod)


class _OutOfRange(_Mutating):
    name = "OutOfRange"

    def score(self, snapshot, pod):  # type: ignore[no-untyped-def]
        return snapshot.free[:, 0].astype(float)


@pytest.mark.parametrize(
    ("policy", "message"), [(_Mutating, "modified"), (_OutOfRange, "out of 0..100")]
)
def test_the_suite_catches_broken_policies(policy: type, message: str) -> None:
    def factory(context: PolicyContext) -> object:
        return policy()

    with pytest.raises(ConformanceError, match=message):
        check_policy(factory, seeds=(0,))  # type: ignore[arg-type]
