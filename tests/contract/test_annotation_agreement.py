"""Every ``fulcrum.io/`` annotation, generated (valid, near-valid, garbage, huge, unicode), fed
to admission (validate and mutate), the extender (its cache applying the pod, a filter through
the verbs) and the controller's readers (``read_options``, ``written_problems``, the
Reservation made from the pod, eligibility): they agree on accept or refuse, and none raises.
Which rebuild hooks exist is the controller's to say (``kube.hooks``): the others defer to it,
so it is modelled here with every well-spelt hook a pod names installed."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admission.review import mutate, validate
from extender.cache import ClusterCache
from extender.config import ExtenderSettings, PolicyWeight
from extender.rebuild_gate import RebuildGate
from extender.verbs import Verbs
from extender.wire import ExtenderArgs
from kube import api, eligibility
from kube.hooks import HookRegistry, ReadyHook, UnknownHookError, hooks_for, named_hooks
from kube.resources import MAX_GPUS, assigned_devices, pod_request
from policies.plugins import PluginRegistry
from tests import builders

TRUSTED = "system:serviceaccount:fulcrum-system:fulcrum-rebuild"
SETTINGS = ExtenderSettings(prioritize=(PolicyWeight(policy="MostAllocated", weight=1),))
# what the extender reads of a pod's annotations to place it
EXTENDER_READS = ("fulcrum.io/gpu-milli", "fulcrum.io/gpu-model", api.GPU_DEVICES)

VALID = {
    api.REBUILD: ["local"],
    api.FALLBACK: ["wait", "reschedule"],
    api.WAIT: ["90s", "5m", "1m30s", "24h"],
    api.ORDER: ["delete-first", "create-first"],
    api.ACCEPT_DATA_LOSS: ["true", "false"],
    api.IP_POOL: ["web", "db.pool"],
    api.IP_REQUEST: ["10.0.0.5", "fd00::5"],
    "fulcrum.io/gpu-milli": ["1", "500", "1000"],
    "fulcrum.io/gpu-model": ["A100", "A100|V100", "Tesla-T4"],
    api.GPU_DEVICES: ["", "0", "0,1", "255"],
    api.ASSIGNED_IP: ["10.0.0.2", "fd00::2"],
    api.RESERVATION: ["rb-1", "rb-abc.def"],
    api.DECISION: ['{"policy": "fgd", "node": "n1"}'],
    api.STATUS: ['{"action": "claimed", "reason": "back"}'],
    "fulcrum.io/rebuild-hooks": ["pvc", "leader-aware,drained", "Ready", "drain.v2"],
}
NEAR = [
    "0,0",
    "1,",
    "-1",
    "256",
    "1001",
    "0",
    "Local",
    "25h",
    "0s",
    "10.0.0.300",
    "fe80::1%eth0",
    "Web",
    "web/x",
    "A100|",
    " | ",
    "[]",
    "{",
    "-bad-",
    "1e3",
]
UNICODE = ["\uff15\uff10\uff10", "\u0665", "A100\u00e9", "\u0000", "r\u00e9b"]
HUGE = ["A" * 200_000, "1" * 70, "0," * 300, '{"a": "' + "x" * 5000 + '"}']


@st.composite
def annotations(draw: st.DrawFn) -> dict[str, str]:
    keys = draw(st.lists(st.sampled_from(sorted(VALID)), max_size=5, unique=True))
    out = {}
    for key in keys:
        out[key] = draw(
            st.one_of(
                st.sampled_from(VALID[key]),
                st.sampled_from(NEAR),
                st.sampled_from(UNICODE),
                st.sampled_from(HUGE),
                st.text(max_size=12),
            )
        )
    return out


def pod(annotations: dict[str, str], gpus: int, cpu: str, node: str = "") -> dict[str, Any]:
    requests = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    out = builders.pod(
        "u", node_name=node, cpu=cpu, requests=requests, annotations=annotations, phase="Running"
    )
    out["spec"]["schedulerName"] = api.SCHEDULER_NAME
    return out


def review(obj: dict[str, Any], user: str) -> dict[str, Any]:
    return {
        "uid": "r",
        "kind": {"kind": "Pod"},
        "operation": "CREATE",
        "object": obj,
        "userInfo": {"username": user},
    }


def controller_with(notes: dict[str, str]) -> HookRegistry:
    """A controller that has every well-spelt hook ``notes`` names, besides the built-ins."""
    try:
        names = named_hooks(notes)
    except ValueError:
        names = []
    hooks = {"ready": ReadyHook(), **{name: ReadyHook() for name in names}}
    return PluginRegistry("rebuild hook", hooks, unknown=UnknownHookError)


def controller_problems(obj: dict[str, Any]) -> list[str]:
    """What the controller's readers report bad of a pod (each reader, as the controller calls
    it), after making the Reservation it would hold for it; raises nothing else."""
    notes = api.objects.annotations(obj)
    options = api.read_options(notes)
    hooks = controller_with(notes)
    problems = [str(e) for e in (*options.errors, *api.written_problems(notes))]
    try:
        hooks_for(notes, hooks)
    except ValueError as exc:
        problems.append(str(exc))
    devices = ip = None
    try:
        request = pod_request(obj)
        if not any(e.annotation == api.GPU_DEVICES for e in api.written_problems(notes)):
            devices = assigned_devices(obj, request)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        ip = api.assigned_ip(notes)
    except ValueError as exc:  # the written problems named it already
        assert any(e.annotation == api.ASSIGNED_IP for e in api.written_problems(notes)), exc
    eligibility.refusal(obj, options, hooks)
    eligibility.reserved_on_delete(obj, options, hooks)
    held = api.Reservation(
        name=api.reservation_name("u"),
        namespace="ns",
        key=str(api.successor_key(obj)),
        node="n1",
        predecessor="u",
        predecessor_uid="u",
        template=api.reservation_template(obj),
        devices=devices or None,
        ip=ip,
        pool=options.pool if ip else None,
        claims=api.claim_names(obj),
        fallback=options.fallback,
        expires_at=None,
    )
    assert api.Reservation.from_object(held.to_object()) == held  # what it writes reads back
    return problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(annotations(), st.sampled_from([0, 0, 1, 2]), st.sampled_from(["1", "1", "NaN", "1e999999"]))
def test_admission_extender_and_controller_agree(
    notes: dict[str, str], gpus: int, cpu: str
) -> None:
    bound = pod(notes, gpus, cpu, node="n1")

    # admission: Fulcrum's own account is judged on the values only; anyone else, also on
    # writing what only Fulcrum writes
    trusted = validate(review(bound, TRUSTED), trusted=frozenset({TRUSTED}))
    anyone = validate(review(bound, "alice"), trusted=frozenset({TRUSTED}))
    forged = any(key in notes for key in api.WRITTEN_BY_FULCRUM)
    assert anyone.allowed == (trusted.allowed and not forged)
    mutate(review(pod(notes, gpus, cpu), "alice"))

    # the controller's readers
    assert trusted.allowed == (not controller_problems(bound))

    # the extender: a node with every device a pod may name, the pod bound there, then the
    # same pod pending through filter
    cache = ClusterCache()
    gate = RebuildGate(cache)
    cache.apply("nodes", "ADDED", builders.node("n1", cpu="64", gpus=MAX_GPUS, model="A100"))
    cache.apply("pods", "ADDED", bound)
    read = {k: v for k, v in notes.items() if k in EXTENDER_READS}
    extender_view = validate(
        review(pod(read, gpus, cpu, node="n1"), TRUSTED), trusted=frozenset({TRUSTED})
    )
    assert extender_view.allowed == ("pod/ns/u" not in cache.bad_objects), cache.bad_objects
    pending = pod(notes, gpus, cpu)
    pending["metadata"]["uid"] = "v"
    verbs = Verbs(SETTINGS, cache, gate=gate)
    result = asyncio.run(verbs.filter(ExtenderArgs(Pod=pending, NodeNames=["n1"])))
    assert result is not None
    for message in [*(result.FailedNodes or {}).values(), result.Error or ""]:
        assert len(message) < 2000  # a huge value is never echoed whole
