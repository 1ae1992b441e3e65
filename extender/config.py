"""The extender's configuration file, validated at start-up with field paths in the errors.

```yaml
apiVersion: fulcrum.io/v1alpha1
kind: ExtenderConfiguration
prioritize:                 # weighted policies, by registry name (case-insensitive)
- {policy: Archimedes, weight: 3}
- {policy: MostAllocated, weight: 1}
decideInFilter: true        # filter passes only Fulcrum's pick; kube-scheduler skips scoring
decisionRecord: true        # write why each node was chosen on its pod (fulcrum.io/decision)
nominate: false             # nominate Fulcrum's pick as each pod arrives (extender/nominate.py)
workloadPrior:              # the GPU pod to expect before any is seen (scheduler/workload_model.py)
  cpuShare: 0.5             # CPU kept beside each GPU for it: this share of the GPU nodes' per GPU
  # cpuPerGpuMilli: 4000    # or this much, in milli
  pods: 10                  # its weight against the pods seen
  halfLifeSeconds: 3600     # how fast the memory of arrivals fades
maxBodyBytes: 67108864
schedulerName: fulcrum-scheduler   # bind serves only known pods of this scheduler
tls:                        # HTTPS; with clientCAFile, mutual TLS (kube-scheduler's tlsConfig
  certFile: /etc/fulcrum/tls.crt  # certFile/keyFile are its client certificate)
  keyFile: /etc/fulcrum/tls.key
  clientCAFile: /etc/fulcrum/client-ca.crt   # only clients with a certificate it signed
```

``host`` is loopback unless ``tls.clientCAFile`` is set: the verbs (``/bind`` among them) take
no other authentication, so nothing but the kube-scheduler beside the extender may reach them
unless it proves who it is.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kube.api import SCHEDULER_NAME
from policies.registry import Registry, UnknownPolicyError
from scheduler.workload_model import WorkloadPrior


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field path and the fix."""


class _Config(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class PolicyWeight(_Config):
    policy: str
    weight: float = Field(1.0, gt=0)


class TLS(_Config):
    cert_file: Path
    key_file: Path
    # the CA that signs the clients' certificates: set, a client without one it signed is
    # refused during the TLS handshake (mutual TLS)
    client_ca_file: Path | None = Field(None, alias="clientCAFile")

    @model_validator(mode="after")
    def _files_exist(self) -> TLS:
        for field in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, field)
            if path is not None and not path.is_file():
                alias = TLS.model_fields[field].alias or to_camel(field)
                raise ValueError(f"{alias} {path}: no such file")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PRIOR = WorkloadPrior()  # the defaults live there


class WorkloadPriorSettings(_Config):
    """``scheduler.workload_model.WorkloadPrior``: the GPU pod to expect before any is seen."""

    cpu_per_gpu_milli: int | None = Field(_PRIOR.cpu_per_gpu_milli, ge=0)
    cpu_share: float = Field(_PRIOR.cpu_share, ge=0, le=1)
    pods: float = Field(_PRIOR.pods, ge=0)
    half_life_seconds: float = Field(_PRIOR.half_life_s, gt=0)

    def prior(self) -> WorkloadPrior:
        return WorkloadPrior(
            self.cpu_per_gpu_milli, self.pods, self.half_life_seconds, self.cpu_share
        )


class ExtenderSettings(_Config):
    api_version: Literal["fulcrum.io/v1alpha1"] = "fulcrum.io/v1alpha1"
    kind: Literal["ExtenderConfiguration"] = "ExtenderConfiguration"
    host: str = "127.0.0.1"
    port: int = Field(8888, ge=1, le=65535)
    max_body_bytes: int = Field(64 * 2**20, gt=0)  # a 5,000-node NodeList is ~30 MiB
    prioritize: tuple[PolicyWeight, ...] = (PolicyWeight(policy="Archimedes", weight=1.0),)
    # filter passes only the node Fulcrum would pick, so kube-scheduler skips scoring (one HTTP
    # call per pod instead of two); false keeps kube-scheduler's own score plugins in play
    decide_in_filter: bool = True
    # the decision record (extender/record.py), written on each pod with its binding
    decision_record: bool = True
    # false: Fulcrum binds only pods marked with the resource fulcrum.io/bind, the ones that need
    # its bind (GPUs, an IP pool, local rebuild; the admission webhook marks them), and
    # kube-scheduler binds the rest itself: its configuration has a second extender entry with
    # bindVerb and managedResources [{name: fulcrum.io/bind, ignoredByScheduler: true}].
    # true: a single entry with bindVerb, Fulcrum binds every pod. false needs decideInFilter
    # (with kube-scheduler scoring, Fulcrum could not know the node to charge at filter).
    bind_all: bool = False
    # Fulcrum nominates its pick for each new pending pod kube-scheduler binds
    # (status.nominatedNodeName, extender/nominate.py): kube-scheduler then filters that one
    # node first and sends filter one name; one status write per pod (docs/benchmarks.md)
    nominate: bool = False
    workload_prior: WorkloadPriorSettings = WorkloadPriorSettings()
    tls: TLS | None = None
    # the kube-scheduler profile that calls this extender: bind serves only pods it knows whose
    # spec.schedulerName is this one (the chart's schedulerName)
    scheduler_name: str = Field(SCHEDULER_NAME, min_length=1)

    @model_validator(mode="after")
    def _split_needs_a_decided_filter(self) -> ExtenderSettings:
        if not self.bind_all and not self.decide_in_filter:
            raise ValueError(
                "bindAll: false (kube-scheduler binds the pods Fulcrum need not) needs "
                "decideInFilter: true, so that Fulcrum knows and charges the one node it passes; "
                "with decideInFilter: false set bindAll: true (and bindVerb on the single "
                "extenders[] entry)"
            )
        return self

    @model_validator(mode="after")
    def _nominations_need_kube_scheduler_binds(self) -> ExtenderSettings:
        if self.nominate and self.bind_all:
            raise ValueError(
                "nominate: true nominates only pods kube-scheduler binds itself, and with "
                "bindAll: true Fulcrum binds them all: set bindAll: false, or nominate: false"
            )
        return self

    @model_validator(mode="after")
    def _only_loopback_without_client_certificates(self) -> ExtenderSettings:
        if not is_loopback(self.host) and (self.tls is None or self.tls.client_ca_file is None):
            raise ValueError(
                f"host {self.host!r} is not a loopback address, and the verbs (bind among them) "
                "take no authentication: listen on 127.0.0.1 beside kube-scheduler, or set "
                "tls.certFile, tls.keyFile and tls.clientCAFile (mutual TLS; kube-scheduler's "
                "extender tlsConfig gives its client certificate)"
            )
        return self

    def check_policies(self, registry: Registry) -> None:
        if not self.prioritize:
            raise ConfigError("prioritize: needs at least one policy, e.g. [{policy: Archimedes}]")
        for i, entry in enumerate(self.prioritize):
            try:
                registry.canonical(entry.policy)
            except UnknownPolicyError as exc:
                raise ConfigError(f"prioritize[{i}].policy: {exc}") from exc


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_settings(path: Path | None, registry: Registry, **overrides: object) -> ExtenderSettings:
    """Read and validate ``path`` (or the defaults), then apply command-line ``overrides``."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"--config {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: expected a mapping of fields at the top level")
        data = loaded or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = ExtenderSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"{path}: " if path else ""
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:  # a field's error; the model's own checks name their fields
            message = f"{_path(first['loc'])}: {message}"
        raise ConfigError(f"{where}{message}") from exc
    settings.check_policies(registry)
    return settings
