"""The chart's inspection CronJob (charts/fulcrum/templates/inspection.yaml; values
``inspection.*``): rendered only when ``inspection.enabled``; its command line, parsed by
``fulcrum``'s own parser, records into the mounted history; a PersistentVolumeClaim, one of
yours, or a host directory; exit status 1 fails the Job without a retry; its ClusterRole reads
exactly what ``fulcrum inspect`` reads and writes nothing; bad values refused.

helm as in test_chart.py (built by `fulcrum build`; these tests skip without it unless CI is set).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.cli import build_parser
from fulcrum.harness.chart import ChartError
from tests.unit.test_chart import Doc, find, helm, one, render

__all__ = ["helm"]  # the fixture, shared with test_chart.py

NAME = "fulcrum-inspection"
HISTORY = "/var/lib/fulcrum/inspections"
RULES = [
    {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]},
    {"apiGroups": ["fulcrum.io"], "resources": ["reservations", "ippools"], "verbs": ["list"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]},
    {"nonResourceURLs": ["/livez", "/readyz", "/metrics", "/version"], "verbs": ["get"]},
]


def job_pod(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "CronJob", NAME)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def test_the_cronjob_is_rendered_only_when_enabled(helm: Path) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in render(helm)}
    assert not {n for n in names if n[1] == NAME}
    docs = render(helm, "inspection.enabled=true")
    added = {(d["kind"], d["metadata"]["name"]) for d in docs} - names
    assert added == {
        ("CronJob", NAME),
        ("ServiceAccount", NAME),
        ("ClusterRole", NAME),
        ("ClusterRoleBinding", NAME),
        ("PersistentVolumeClaim", NAME),
    }


def test_it_records_into_the_mounted_history(helm: Path) -> None:
    docs = render(helm, "inspection.enabled=true", "inspection.extraArgs={--window=30}")
    cron = one(docs, "CronJob", NAME)["spec"]
    assert cron["schedule"] == "0 * * * *" and cron["concurrencyPolicy"] == "Forbid"
    pod = job_pod(docs)
    assert pod["serviceAccountName"] == NAME and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["fulcrum", "inspect"]
    args = build_parser().parse_args(command[1:])
    assert args.record == Path(HISTORY) and args.plan_seconds == 0
    assert args.window == 30  # extraArgs come last and win
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == HISTORY
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == NAME
    claim = one(docs, "PersistentVolumeClaim", NAME)
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pod["securityContext"]["fsGroup"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    policy = one(docs, "CronJob", NAME)["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]
    (rule,) = policy["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [1]


def test_a_claim_of_yours_or_a_host_directory(helm: Path) -> None:
    docs = render(helm, "inspection.enabled=true", "inspection.persistence.existingClaim=mine")
    assert not find(docs, "PersistentVolumeClaim", NAME)
    assert job_pod(docs)["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mine"
    docs = render(helm, "inspection.enabled=true", "inspection.hostPath=/srv/inspections")
    assert not find(docs, "PersistentVolumeClaim", NAME)
    host = job_pod(docs)["volumes"][0]["hostPath"]
    assert host == {"path": "/srv/inspections", "type": "DirectoryOrCreate"}


def test_its_role_reads_what_inspect_reads_and_nothing_more(helm: Path) -> None:
    docs = render(helm, "inspection.enabled=true")
    assert one(docs, "ClusterRole", NAME)["rules"] == RULES
    binding = one(docs, "ClusterRoleBinding", NAME)
    assert binding["roleRef"]["name"] == NAME
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "fulcrum-system"}
    ]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("inspection.hostPath=relative/dir", "hostPath"),
        ("inspection.window=-1", "window"),
        ("inspection.extraArgs={record}", "extraArgs"),
        ("inspection.persistence.size=lots", "size"),
        ("inspection.shedule=x", "shedule"),
    ],
)
def test_bad_values_are_refused_naming_them(helm: Path, value: str, named: str) -> None:
    with pytest.raises(ChartError) as raised:
        render(helm, "inspection.enabled=true", value)
    assert named in str(raised.value)
