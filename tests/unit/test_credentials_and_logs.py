"""Credentials (--kubeconfig, $KUBECONFIG, then in-cluster; rotated tokens re-read); logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extender.apiserver import KubeBinder
from fulcrum.run import kubeconfig
from fulcrum.run.kubeconfig import CredentialsError


def write_kubeconfig(tmp_path: Path, name: str, server: str) -> Path:
    (tmp_path / "token").write_text("first-token")
    path = tmp_path / name
    path.write_text(
        f"""apiVersion: v1
kind: Config
current-context: c
contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
clusters: [{{name: k, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{tokenFile: token}}}}]
"""
    )
    return path


def test_the_flag_comes_first_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = write_kubeconfig(tmp_path, "flag.yaml", "https://flag:6443")
    env = write_kubeconfig(tmp_path, "env.yaml", "https://env:6443")
    monkeypatch.setenv("KUBECONFIG", f"{env}{os.pathsep}/elsewhere")

    cfg, source = kubeconfig.load(flag)
    assert (cfg.host, source) == ("https://flag:6443", f"--kubeconfig {flag}")
    cfg, source = kubeconfig.load(None)
    assert (cfg.host, source) == ("https://env:6443", f"$KUBECONFIG={env}")


def test_missing_credentials_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not kubeconfig.configured(None)
    with pytest.raises(CredentialsError, match="pass --kubeconfig, set \\$KUBECONFIG"):
        kubeconfig.load(None)
    with pytest.raises(CredentialsError, match="no such file"):
        kubeconfig.load(tmp_path / "nope.yaml")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(CredentialsError, match=r"KUBECONFIG=.*gone\.yaml: no such file"):
        kubeconfig.load(None)


def test_a_rotated_token_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(kubeconfig.time, "monotonic", lambda: clock[0])
    cfg, _ = kubeconfig.load(write_kubeconfig(tmp_path, "k.yaml", "https://k:6443"))
    binder = KubeBinder(cfg)
    assert binder.authorization() == {"Authorization": "Bearer first-token"}

    token = tmp_path / "token"
    token.write_text("second-token")
    os.utime(token, (token.stat().st_atime, token.stat().st_mtime + 5))
    assert binder.authorization() == {"Authorization": "Bearer first-token"}  # not checked yet
    clock[0] += kubeconfig.TOKEN_CHECK_SECONDS
    assert binder.authorization() == {"Authorization": "Bearer second-token"}


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import orjson

    from fulcrum.run import logs

    logs.configure("debug", "json")
    try:
        logging.getLogger("fulcrum.test").debug("cache synced: %d nodes", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("fulcrum.test").exception("failed")
    finally:
        logs.configure()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
        ("debug", "fulcrum.test", "cache synced: 3 nodes"),
        ("error", "fulcrum.test", "failed"),
    ]
    assert "ValueError: boom" in lines[1]["exc"] and lines[0]["time"].endswith("+00:00")
