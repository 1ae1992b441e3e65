from __future__ import annotations

import pytest

from kube.resources import (
    GPU,
    GPU_MODEL_ANNOTATION,
    MAX_GPUS,
    MAX_QUANTITY,
    QuantityError,
    node_spec,
    pod_request,
    pod_requests,
    quantity,
)
from scheduler.snapshot import UNKNOWN_GPU_MODEL, Snapshot


@pytest.mark.parametrize(
    ("resource", "value", "expected"),
    [
        ("cpu", "500m", 500),
        ("cpu", "2", 2000),
        ("cpu", "0.1", 100),
        ("memory", "1Gi", 2**30),
        ("memory", "1G", 10**9),
        ("nvidia.com/gpu", "2", 2),
    ],
)
def test_quantity_units(resource: str, value: str, expected: int) -> None:
    assert quantity(resource, value) == expected


def test_bad_quantity_names_the_resource() -> None:
    with pytest.raises(QuantityError, match="cpu: 'lots'"):
        quantity("cpu", "lots")


def test_pod_requests_follow_the_init_container_max_rule_plus_overhead() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "500m"}}},
            ],
            # init: cpu max(1500, 2000) = 2000; memory max(1Gi, 512Mi) = 1Gi
            "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "512Mi"}}}],
            "overhead": {"cpu": "100m"},
        }
    }
    assert pod_requests(pod) == {"cpu": 2100, "memory": 2**30, "pods": 1}


def test_sidecar_init_containers_add_to_the_app_containers() -> None:
    pod = {
        "spec": {
            "containers": [{"resources": {"requests": {"cpu": "1"}}}],
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"requests": {"cpu": "250m"}}},
                # a plain init container after the sidecar runs beside it: 2000 + 250
                {"resources": {"requests": {"cpu": "2"}}},
            ],
        }
    }
    assert pod_requests(pod)["cpu"] == 2250


@pytest.mark.parametrize("value", ["1e18", "1e309", "99999999999999999999999999", "1Ei"])
def test_quantities_beyond_the_arrays_are_counted_at_the_ceiling(value: str) -> None:
    assert quantity("cpu", value) == MAX_QUANTITY
    assert quantity("memory", value) == MAX_QUANTITY
    assert quantity("memory", "-" + value) == -MAX_QUANTITY


def test_a_node_of_absurd_quantities_goes_into_a_snapshot() -> None:
    huge = {"cpu": "1e309", "memory": "99999999999999999999999999", "pods": "1e18"}
    node = {"metadata": {"name": "n"}, "status": {"allocatable": {**huge, GPU: "1e18"}}}
    snapshot = Snapshot()
    snapshot.add_node("n", **node_spec(node))
    assert snapshot.gpu_count[0] == MAX_GPUS
    assert snapshot.model_names == (UNKNOWN_GPU_MODEL,)


def test_an_empty_gpu_model_is_refused() -> None:
    pod = {"metadata": {"annotations": {GPU_MODEL_ANNOTATION: " | "}}, "spec": {"containers": []}}
    with pytest.raises(QuantityError, match="names no model"):
        pod_request(pod)


def test_a_pod_asking_for_more_gpus_than_any_node_holds_is_refused() -> None:
    pod = {"spec": {"containers": [{"resources": {"requests": {GPU: "1e9"}}}]}}
    with pytest.raises(QuantityError, match="at most 256"):
        pod_request(pod)
