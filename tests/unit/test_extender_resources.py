from __future__ import annotations

import pytest

from kube.resources import QuantityError, pod_requests, quantity


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
