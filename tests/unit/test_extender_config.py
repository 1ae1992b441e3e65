"""Configuration errors stop start-up with the field path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.config import ConfigError, load_settings
from policies.registry import default_registry


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fulcrum.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file() -> None:
    settings = load_settings(None, default_registry(plugins=False), port=9999)
    assert settings.port == 9999
    assert [p.policy for p in settings.prioritize] == ["Archimedes"]


def test_a_full_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "apiVersion: fulcrum.io/v1alpha1\nkind: ExtenderConfiguration\n"
        "prioritize:\n- {policy: fgd, weight: 2}\n- {policy: MostAllocated}\nmaxBodyBytes: 1000\n",
    )
    settings = load_settings(path, default_registry(plugins=False))
    assert [(p.policy, p.weight) for p in settings.prioritize] == [("fgd", 2), ("MostAllocated", 1)]
    assert settings.max_body_bytes == 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "prioritize:\n- {policy: nope}\n",
            "prioritize[0].policy: unknown policy 'nope'; available",
        ),
        (
            "prioritize:\n- {policy: FGD, weight: -1}\n",
            "prioritize[0].weight: Input should be greater than 0",
        ),
        ("port: 70000\n", "port: Input should be less than or equal to 65535"),
        ("prioritise: []\n", "prioritise: Extra inputs are not permitted"),
        ("tls: {certFile: /no/cert, keyFile: /no/key}\n", "certFile /no/cert: no such file"),
        ("- just a list\n", "expected a mapping"),
        ("prioritize: [\n", "not YAML"),
        ("prioritize: []\n", "prioritize: needs at least one policy"),
        ("decideInFilter: false\n", "bindAll: false (kube-scheduler binds the pods Fulcrum"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), default_registry(plugins=False))
    assert message in str(caught.value)
