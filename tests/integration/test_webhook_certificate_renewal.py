"""The webhook's managed certificate against a real API server (fulcrum/run/webhook_certs.py):
a CA 20 days from expiry is renewed in its Secret (labels and annotations, Helm's ownership,
kept), the new CA joins the old one in the caBundle of every webhook of both configurations, a
second check writes nothing, and a write after someone else's is a conflict, not an overwrite.

A control plane with one kwok node and no Fulcrum process; the configurations are the
test's own, matching no object (a namespace selector no namespace has).
"""

from __future__ import annotations

import base64
import datetime
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client, config

from fulcrum.harness import cluster
from fulcrum.harness.certs import make_serving_cert
from fulcrum.run.webhook_certs import (
    KINDS,
    CertificateManager,
    Conflict,
    KubeCluster,
    ManagedCertificate,
)
from kube import certs
from tests.integration.conftest import _start

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
NAME = "it-webhook-certs"
NAMESPACE = "it-certs"
TARGET = ManagedCertificate(NAMESPACE, "it-webhook-tls", "it-webhook", "it.fulcrum.io")
NOW = datetime.datetime.now(datetime.UTC)


def _webhook(name: str, ca: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {
            "service": {"namespace": NAMESPACE, "name": TARGET.service, "port": 443},
            "caBundle": base64.b64encode(ca).decode(),
        },
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["configmaps"],
                "operations": ["CREATE"],
            }
        ],
        "namespaceSelector": {"matchLabels": {"it-certs/never": "true"}},
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }


@pytest.fixture(scope="module")
def api() -> Iterator[client.ApiClient]:
    _start(NAME, nodes=1, extender=False, fulcrum_scheduler=False)
    try:
        yield config.new_client_from_config(config_file=str(cluster.kubeconfig_path(NAME)))
    finally:
        cluster.down(NAME, log=print)


@pytest.fixture(scope="module")
def old(api: client.ApiClient) -> dict[str, bytes]:
    """A Secret whose CA (and certificate) expire in 20 days, and configurations trusting it."""
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    ca = certs.new_ca("old-ca", now=NOW - datetime.timedelta(days=345))
    serving = certs.new_serving(ca, certs.service_hosts(TARGET.service, NAMESPACE), now=NOW)
    data = certs.secret_data(ca, serving)
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {
                "name": TARGET.secret,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "it"},
            },
            "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        },
    )
    admission = client.AdmissionregistrationV1Api(api)
    for create, prefix in (
        (admission.create_mutating_webhook_configuration, "mutate"),
        (admission.create_validating_webhook_configuration, "validate"),
    ):
        hooks = [_webhook(f"{prefix}-{i}.it.fulcrum.io", ca.cert_pem()) for i in range(2)]
        create({"metadata": {"name": TARGET.configuration}, "webhooks": hooks})
    return data


def test_an_expiring_ca_is_renewed_and_both_cas_are_trusted(
    api: client.ApiClient, old: dict[str, bytes]
) -> None:
    kube = KubeCluster(api)
    manager = CertificateManager(kube, TARGET)
    assert manager.check() == "renewed"
    secret = kube.read_secret(NAMESPACE, TARGET.secret)
    assert secret is not None
    raw = secret.raw
    assert raw.metadata.labels == {"app.kubernetes.io/managed-by": "Helm"}
    assert raw.metadata.annotations == {"meta.helm.sh/release-name": "it"}
    new_ca = x509.load_pem_x509_certificate(secret.data["ca.crt"])
    old_ca = x509.load_pem_x509_certificate(old["ca.crt"])
    assert new_ca != old_ca
    assert new_ca.not_valid_after_utc > NOW + datetime.timedelta(days=360)
    serving = x509.load_pem_x509_certificate(secret.data["tls.crt"])
    serving.verify_directly_issued_by(new_ca)
    for kind in KINDS:
        read = kube.read_configuration(kind, TARGET.configuration)
        assert read is not None and len(read.ca_bundles) == 2
        for bundle in read.ca_bundles:
            assert certs.load_bundle(bundle) == [new_ca, old_ca], kind
    versions = {kind: kube.read_configuration(kind, TARGET.configuration) for kind in KINDS}
    assert manager.check() == "kept"
    again = kube.read_secret(NAMESPACE, TARGET.secret)
    assert again is not None and again.resource_version == secret.resource_version
    for kind in KINDS:
        assert kube.read_configuration(kind, TARGET.configuration) == versions[kind]


def test_a_write_after_another_is_a_conflict_not_an_overwrite(
    api: client.ApiClient, old: dict[str, bytes]
) -> None:
    kube = KubeCluster(api)
    read = kube.read_secret(NAMESPACE, TARGET.secret)
    assert read is not None
    core = client.CoreV1Api(api)
    core.patch_namespaced_secret(
        TARGET.secret, NAMESPACE, {"metadata": {"labels": {"it-certs/touched": "1"}}}
    )
    with pytest.raises(Conflict):
        kube.write_secret(NAMESPACE, TARGET.secret, old, read)
    after = kube.read_secret(NAMESPACE, TARGET.secret)
    assert after is not None and after.data["ca.crt"] == read.data["ca.crt"]

    stale = kube.read_configuration(KINDS[0], TARGET.configuration)
    assert stale is not None
    client.AdmissionregistrationV1Api(api).patch_mutating_webhook_configuration(
        TARGET.configuration, {"metadata": {"labels": {"it-certs/touched": "1"}}}
    )
    with pytest.raises(Conflict):
        kube.write_ca_bundles(KINDS[0], TARGET.configuration, stale, [b"", b""])
    now = kube.read_configuration(KINDS[0], TARGET.configuration)
    assert now is not None and now.ca_bundles == stale.ca_bundles


def test_the_webhook_process_renews_at_start(
    api: client.ApiClient, old: dict[str, bytes], tmp_path: Path
) -> None:
    """``fulcrum webhook --manage-certificate``, as the chart runs it, renews a Secret whose CA
    expires in 20 days within moments of its start (it checks at once, then hourly)."""
    name, service = "it-webhook-2-tls", "it-webhook-2"
    core = client.CoreV1Api(api)
    ca = certs.new_ca("old-ca-2", now=NOW - datetime.timedelta(days=345))
    data = certs.secret_data(ca, certs.new_serving(ca, [f"{service}.{NAMESPACE}.svc"], now=NOW))
    core.create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        },
    )
    files = make_serving_cert(tmp_path, ["127.0.0.1"])
    cmd = [
        sys.executable,
        "-m",
        "fulcrum.cli",
        "webhook",
        f"--port={cluster.free_port()}",
        f"--tls-cert={files.cert}",
        f"--tls-key={files.key}",
        f"--kubeconfig={cluster.kubeconfig_path(NAME)}",
        f"--manage-certificate={NAMESPACE}/{name}",
        f"--service={service}",
        f"--webhook-configuration={TARGET.configuration}",
    ]
    process = subprocess.Popen(cmd, cwd=ROOT)
    kube = KubeCluster(api)
    try:
        deadline = time.monotonic() + 60
        while True:
            secret = kube.read_secret(NAMESPACE, name)
            assert secret is not None
            if secret.data["ca.crt"] != data["ca.crt"]:
                break
            assert process.poll() is None, "the webhook exited"
            assert time.monotonic() < deadline, "the webhook did not renew its certificate"
            time.sleep(0.5)
        new_ca = x509.load_pem_x509_certificate(secret.data["ca.crt"])
        for kind in KINDS:
            read = kube.read_configuration(kind, TARGET.configuration)
            assert read is not None
            for bundle in read.ca_bundles:
                found = certs.load_bundle(bundle)  # the new CA first, the previous one kept
                assert found[0] == new_ca and len(found) > 1, kind
    finally:
        process.terminate()
        process.wait(timeout=30)
