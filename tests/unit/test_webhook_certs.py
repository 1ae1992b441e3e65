"""The webhook's managed certificate: when it renews (kube/certs.py ``renewal``), the caBundle it
writes (``ca_bundle``), and its writes against a fake cluster (fulcrum/run/webhook_certs.py):
CA kept when only the serving certificate expires, old and new CA in the caBundle until the old
one expires, a conflict on the Secret read again and never overwritten."""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fulcrum.harness.certs import make_serving_cert
from fulcrum.run.serve import ServeError
from fulcrum.run.webhook_certs import (
    KINDS,
    CertificateManager,
    Configuration,
    Conflict,
    KubeCluster,
    ManagedCertificate,
    Secret,
    managed_certificate,
)
from fulcrum.run.webhook_serve import serve_webhook
from kube import certs

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
WINDOW = 30 * DAY
HOST = "fulcrum-webhook.fulcrum-system.svc"
HOSTS = certs.service_hosts("fulcrum-webhook", "fulcrum-system")
TARGET = ManagedCertificate("fulcrum-system", "fulcrum-webhook-tls", "fulcrum-webhook")


def pem(*cas: certs.KeyPair) -> bytes:
    return b"".join(ca.cert_pem() for ca in cas)


def bundle(data: bytes) -> list[x509.Certificate]:
    return certs.load_bundle(data)


def issued(*, ca_days: int = 365, serving_days: int = 365, at: datetime.datetime = NOW) -> dict:
    ca = certs.new_ca("test-ca", now=at, days=ca_days)
    serving = certs.new_serving(ca, HOSTS, now=at, days=serving_days)
    return certs.secret_data(ca, serving)


# --- renew? ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ca_days", "serving_days", "ca", "serving"),
    [
        (365, 365, False, False),  # 365 days left of each: nothing to do
        (365, 31, False, False),  # 31 days left, the window is 30: not yet
        (365, 30, False, True),  # 30 left: the serving certificate, signed by the same CA
        (365, 5, False, True),
        (30, 30, True, True),  # the CA within the window: both, since the CA signs the leaf
        (10, 365, True, True),  # (a leaf never outlives its CA: capped at 10 days)
    ],
)
def test_renews_within_the_window_and_not_before(
    ca_days: int, serving_days: int, ca: bool, serving: bool
) -> None:
    stored = certs.parse_stored(issued(ca_days=ca_days, serving_days=serving_days))
    decision = certs.renewal(stored, host=HOST, now=NOW, renew_before=WINDOW)
    assert (decision.ca, decision.serving) == (ca, serving), decision.reason


def test_an_expired_certificate_is_renewed() -> None:
    stored = certs.parse_stored(issued())
    later = NOW + 400 * DAY
    decision = certs.renewal(stored, host=HOST, now=later, renew_before=WINDOW)
    assert decision.ca and decision.serving


@pytest.mark.parametrize(
    ("change", "ca"),
    [
        ({}, True),  # no Secret, or an empty one
        ({"ca.key": None}, True),  # the chart's Secrets before this: a CA that cannot sign
        ({"ca.crt": b"not PEM"}, True),
        ({"tls.key": None}, False),
        ({"tls.crt": b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"}, False),
    ],
)
def test_a_missing_or_unreadable_part_is_made_anew(
    change: Mapping[str, bytes | None], ca: bool
) -> None:
    data = {} if not change else issued()
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    decision = certs.renewal(certs.parse_stored(data), host=HOST, now=NOW, renew_before=WINDOW)
    assert decision.serving and decision.ca == ca, decision.reason


def test_a_serving_certificate_of_another_ca_or_host_is_made_anew() -> None:
    data = issued()
    other = issued()
    mixed = {**data, "tls.crt": other["tls.crt"], "tls.key": other["tls.key"]}
    decision = certs.renewal(certs.parse_stored(mixed), host=HOST, now=NOW, renew_before=WINDOW)
    assert (decision.ca, decision.serving) == (False, True)
    assert "not signed by the CA" in decision.reason
    elsewhere = "fulcrum-webhook.other.svc"
    decision = certs.renewal(certs.parse_stored(data), host=elsewhere, now=NOW, renew_before=WINDOW)
    assert (decision.ca, decision.serving) == (False, True)
    assert elsewhere in decision.reason


def test_a_key_that_is_not_the_certificates_does_not_load() -> None:
    data = issued()
    data["tls.key"] = issued()["tls.key"]
    assert certs.parse_stored(data).serving is None


# --- the caBundle ---------------------------------------------------------------------------------


def test_the_bundle_carries_the_new_ca_and_the_old_one_until_it_expires() -> None:
    old = certs.new_ca("old", now=NOW, days=40)
    new = certs.new_ca("new", now=NOW, days=365)
    written = certs.ca_bundle(new.cert, pem(old), now=NOW + 20 * DAY)
    assert bundle(written) == [new.cert, old.cert]
    again = certs.ca_bundle(new.cert, written, now=NOW + 21 * DAY)
    assert again == written  # nothing duplicated, so a check writes nothing
    assert bundle(certs.ca_bundle(new.cert, written, now=NOW + 41 * DAY)) == [new.cert]


def test_the_bundle_drops_what_it_is_told_and_survives_garbage() -> None:
    a, b = certs.new_ca("a", now=NOW), certs.new_ca("b", now=NOW)
    assert bundle(certs.ca_bundle(a.cert, pem(b, a), now=NOW, drop=[b.cert])) == [a.cert]
    assert bundle(certs.ca_bundle(a.cert, b"not a bundle", now=NOW)) == [a.cert]
    assert bundle(certs.ca_bundle(a.cert, b"", now=NOW)) == [a.cert]


def test_a_leaf_never_outlives_its_ca() -> None:
    ca = certs.new_ca("ca", now=NOW, days=10)
    leaf = certs.new_serving(ca, HOSTS, now=NOW, days=365)
    assert leaf.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


# --- the writes, against a fake cluster -----------------------------------------------------------


class FakeCluster:
    """A Secret and two configurations with resourceVersions, as the API server keeps them."""

    def __init__(self, data: dict[str, bytes] | None, ca_bundle: bytes, webhooks: int = 2) -> None:
        self.secret = None if data is None else Secret(dict(data), "1")
        self.configurations = {kind: Configuration("1", [ca_bundle] * webhooks) for kind in KINDS}
        self.secret_writes = 0
        self.bundle_writes = 0
        self.before_secret_write: list[dict[str, bytes]] = []  # another replica's writes

    def read_secret(self, namespace: str, name: str) -> Secret | None:
        assert (namespace, name) == (TARGET.namespace, TARGET.secret)
        return self.secret

    def write_secret(
        self, namespace: str, name: str, data: Mapping[str, bytes], read: Secret | None
    ) -> None:
        if self.before_secret_write:
            self._store(self.before_secret_write.pop(0))
        current = self.secret.resource_version if self.secret else None
        if (read.resource_version if read else None) != current:
            raise Conflict("the object has been modified")
        self.secret_writes += 1
        self._store(dict(data))

    def _store(self, data: dict[str, bytes]) -> None:
        version = int(self.secret.resource_version) + 1 if self.secret else 1
        self.secret = Secret(data, str(version))

    def read_configuration(self, kind: str, name: str) -> Configuration | None:
        assert name == TARGET.configuration
        return self.configurations[kind]

    def write_ca_bundles(
        self, kind: str, name: str, read: Configuration, ca_bundles: list[bytes]
    ) -> None:
        current = self.configurations[kind]
        if read.resource_version != current.resource_version:
            raise Conflict("the object has been modified")
        self.bundle_writes += 1
        version = str(int(current.resource_version) + 1)
        self.configurations[kind] = Configuration(version, list(ca_bundles))

    def bundles(self) -> set[tuple[x509.Certificate, ...]]:
        return {tuple(bundle(b)) for c in self.configurations.values() for b in c.ca_bundles}


def ca_of(data: Mapping[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data["ca.crt"])


def manager(cluster: FakeCluster, at: datetime.datetime) -> CertificateManager:
    return CertificateManager(cluster, TARGET, clock=lambda: at)


def test_a_good_certificate_is_kept_and_nothing_is_written() -> None:
    data = issued()
    cluster = FakeCluster(data, data["ca.crt"])
    assert manager(cluster, NOW).check() == "kept"
    assert (cluster.secret_writes, cluster.bundle_writes) == (0, 0)


def test_only_the_serving_certificate_renews_with_the_same_ca() -> None:
    data = issued(serving_days=20)
    cluster = FakeCluster(data, data["ca.crt"])
    assert manager(cluster, NOW).check() == "renewed"
    assert cluster.secret is not None
    written = cluster.secret.data
    assert written["ca.crt"] == data["ca.crt"] and written["ca.key"] == data["ca.key"]
    assert written["tls.crt"] != data["tls.crt"]
    serving = x509.load_pem_x509_certificate(written["tls.crt"])
    assert serving.not_valid_after_utc > NOW + 300 * DAY
    serving.verify_directly_issued_by(ca_of(data))
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(HOSTS)
    assert cluster.bundle_writes == 0  # the caBundle already trusts the CA
    assert manager(cluster, NOW).check() == "kept"


def test_a_new_ca_joins_the_old_one_in_every_webhook_until_the_old_expires() -> None:
    data = issued(ca_days=20)
    cluster = FakeCluster(data, data["ca.crt"])
    assert manager(cluster, NOW).check() == "renewed"
    assert cluster.secret is not None
    new, old = ca_of(cluster.secret.data), ca_of(data)
    assert new != old
    assert cluster.bundles() == {(new, old)}  # both webhooks of both configurations
    x509.load_pem_x509_certificate(cluster.secret.data["tls.crt"]).verify_directly_issued_by(new)
    assert manager(cluster, NOW + DAY).check() == "kept"
    assert cluster.bundles() == {(new, old)}
    assert manager(cluster, NOW + 21 * DAY).check() == "kept"  # the old CA has expired
    assert cluster.bundles() == {(new,)}


def test_a_chart_secret_without_the_ca_key_gets_a_new_ca() -> None:
    data = issued()
    del data["ca.key"]
    cluster = FakeCluster(data, data["ca.crt"])
    assert manager(cluster, NOW).check() == "renewed"
    assert cluster.secret is not None and "ca.key" in cluster.secret.data
    assert cluster.bundles() == {(ca_of(cluster.secret.data), ca_of(data))}


def test_a_missing_secret_is_created() -> None:
    data = issued()
    cluster = FakeCluster(None, data["ca.crt"])
    assert manager(cluster, NOW).check() == "renewed"
    assert cluster.secret is not None
    assert cluster.bundles() == {(ca_of(cluster.secret.data), ca_of(data))}


def test_the_bundle_is_repaired_when_someone_wrote_another() -> None:
    data, stranger = issued(), issued()
    cluster = FakeCluster(data, b"")  # e.g. a configuration applied without its caBundle
    assert manager(cluster, NOW).check() == "kept"
    assert cluster.bundles() == {(ca_of(data),)}
    cluster = FakeCluster(data, stranger["ca.crt"])  # a helm upgrade wrote only the new one
    manager(cluster, NOW).check()
    assert cluster.bundles() == {(ca_of(data), ca_of(stranger))}


def test_a_conflict_means_another_replica_renewed_read_again_and_keep_its_certificate() -> None:
    data = issued(ca_days=20)
    cluster = FakeCluster(data, data["ca.crt"])
    theirs = issued(at=NOW)  # the other replica's renewal lands between our read and write
    cluster.before_secret_write.append(theirs)
    cluster.configurations = {
        kind: Configuration("1", [pem_of(theirs) + data["ca.crt"]] * 2) for kind in KINDS
    }
    assert manager(cluster, NOW).check() == "kept"
    assert cluster.secret is not None
    assert cluster.secret.data == theirs  # not overwritten
    assert cluster.secret_writes == 0
    # the CA this replica had added is taken out again; theirs and the old one stay
    assert cluster.bundles() == {(ca_of(theirs), ca_of(data))}


def pem_of(data: Mapping[str, bytes]) -> bytes:
    return ca_of(data).public_bytes(serialization.Encoding.PEM)


def test_a_failed_check_is_counted_and_the_loop_goes_on() -> None:
    class Down(FakeCluster):
        def read_secret(self, namespace: str, name: str) -> Secret | None:
            raise ConnectionError("apiserver unreachable")

    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    stop = threading.Event()
    m = CertificateManager(Down(None, b""), TARGET, registry, clock=lambda: NOW)
    real = m.check

    def once() -> str:
        stop.set()
        return real()

    m.check = once  # type: ignore[method-assign]
    m.run(stop, check_seconds=0.01)
    labels = {"outcome": "failed"}
    assert registry.get_sample_value("fulcrum_webhook_certificate_checks_total", labels) == 1


# --- the flags ------------------------------------------------------------------------------------


def test_the_flags_name_the_secret_and_default_to_the_charts_configuration() -> None:
    managed = managed_certificate("ns5/canary-webhook-tls", service="canary-webhook")
    assert (managed.namespace, managed.secret) == ("ns5", "canary-webhook-tls")
    assert managed.configuration == "canary.fulcrum.io"
    assert managed.host == "canary-webhook.ns5.svc"
    assert managed_certificate("a/b", service="fulcrum-webhook").configuration == "fulcrum.io"


@pytest.mark.parametrize("bad", ["secret-only", "/name", "ns/", "a/b/c"])
def test_a_bad_target_names_the_flag(bad: str) -> None:
    with pytest.raises(ServeError, match=r"--manage-certificate.*NAMESPACE/SECRET"):
        managed_certificate(bad, service="fulcrum-webhook")


def test_a_window_as_long_as_the_lifetime_is_refused() -> None:
    with pytest.raises(ServeError, match=r"--renew-before-days 365.*--certificate-validity-days"):
        managed_certificate(
            "a/b", service="fulcrum-webhook", renew_before_days=365, validity_days=365
        )


# --- the Kubernetes calls, against fake API objects -------------------------------------------


class FakeApi:
    """The client methods KubeCluster calls, recording them; ``status`` makes them fail."""

    def __init__(self, status: int | None = None) -> None:
        self.status, self.calls = status, []

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            if self.status is not None:
                raise ApiException(status=self.status, reason="fake")
            if method == "read_namespaced_secret":
                return client.V1Secret.from_dict(
                    {
                        "metadata": {"name": "s", "resourceVersion": "7", "labels": {"a": "b"}},
                        "data": {"tls.crt": base64.b64encode(b"x").decode()},
                    }
                )
            if method.startswith("read_"):
                hook = {
                    "name": "a.fulcrum.io",
                    "clientConfig": {"caBundle": base64.b64encode(b"PEM").decode()},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
                return client.V1MutatingWebhookConfiguration.from_dict(
                    {"metadata": {"name": "c", "resourceVersion": "3"}, "webhooks": [hook, hook]}
                )
            return None

        return call


def kube_with(core: FakeApi, admission: FakeApi) -> KubeCluster:
    kube = KubeCluster(client.ApiClient())
    kube.core, kube.admission = core, admission  # type: ignore[assignment]
    return kube


def test_the_secret_is_replaced_as_read_and_a_409_is_a_conflict() -> None:
    core = FakeApi()
    kube = kube_with(core, FakeApi())
    read = kube.read_secret("ns", "s")
    assert read is not None and read.data == {"tls.crt": b"x"} and read.resource_version == "7"
    kube.write_secret("ns", "s", {"tls.crt": b"y", "ca.key": b"k"}, read)
    method, args, kwargs = core.calls[-1]
    assert method == "replace_namespaced_secret" and args[:2] == ("s", "ns")
    body = args[2]
    assert body.metadata.resource_version == "7" and body.metadata.labels == {"a": "b"}
    assert body.data == {"tls.crt": "eQ==", "ca.key": "aw=="}
    assert kwargs["_request_timeout"] > 0
    assert kube_with(FakeApi(404), FakeApi()).read_secret("ns", "s") is None
    with pytest.raises(Conflict):
        kube_with(FakeApi(409), FakeApi()).write_secret("ns", "s", {}, read)
    with pytest.raises(ApiException):  # RBAC's 403 is not a conflict: reported, retried later
        kube_with(FakeApi(403), FakeApi()).write_secret("ns", "s", {}, read)


def test_the_ca_bundles_are_patched_at_the_resource_version_read() -> None:
    admission = FakeApi()
    kube = kube_with(FakeApi(), admission)
    read = kube.read_configuration(KINDS[0], "c")
    assert read == Configuration("3", [b"PEM", b"PEM"])
    kube.write_ca_bundles(KINDS[1], "c", read, [b"A", b"B"])
    method, args, kwargs = admission.calls[-1]
    assert method == "patch_validating_webhook_configuration" and args[0] == "c"
    assert args[1] == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "3"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "QQ=="},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "Qg=="},
    ]
    assert kwargs["_content_type"] == "application/json-patch+json"
    with pytest.raises(Conflict):
        kube_with(FakeApi(), FakeApi(409)).write_ca_bundles(KINDS[0], "c", read, [b"A"])
    assert kube_with(FakeApi(), FakeApi(404)).read_configuration(KINDS[0], "c") is None


def test_managing_a_certificate_without_a_cluster_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(variable, raising=False)
    files = make_serving_cert(tmp_path, ["127.0.0.1"])
    with pytest.raises(ServeError, match=r"--manage-certificate: no cluster"):
        serve_webhook(host="127.0.0.1", port=0, cert=files.cert, key=files.key, managed=TARGET)
