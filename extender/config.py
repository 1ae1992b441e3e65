"""The extender's configuration file, validated at start-up with field paths in the errors.

```yaml
apiVersion: fulcrum.io/v1alpha1
kind: ExtenderConfiguration
prioritize:                 # weighted policies, by registry name (case-insensitive)
- {policy: Archimedes, weight: 3}
- {policy: MostAllocated, weight: 1}
decideInFilter: true        # filter passes only Fulcrum's pick; kube-scheduler skips scoring
decisionRecord: true        # write why each node was chosen on its pod (fulcrum.io/decision)
workloadPrior:              # the GPU pod to expect before any is seen (scheduler/workload_model.py)
  cpuShare: 0.5             # CPU kept beside each GPU for it: this share of the GPU nodes' per GPU
  # cpuPerGpuMilli: 4000    # or this much, in milli
  pods: 10                  # its weight against the pods seen
  halfLifeSeconds: 3600     # how fast the memory of arrivals fades
maxBodyBytes: 67108864
tls: {certFile: /etc/fulcrum/tls.crt, keyFile: /etc/fulcrum/tls.key}
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

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

    @model_validator(mode="after")
    def _files_exist(self) -> TLS:
        for field in ("cert_file", "key_file"):
            if not getattr(self, field).is_file():
                raise ValueError(f"{to_camel(field)} {getattr(self, field)}: no such file")
        return self


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
    workload_prior: WorkloadPriorSettings = WorkloadPriorSettings()
    tls: TLS | None = None

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
        raise ConfigError(f"{where}{_path(first['loc'])}: {first['msg']}") from exc
    settings.check_policies(registry)
    return settings
