"""Where a Fulcrum process finds its cluster, and how its credentials stay fresh.

In order: ``--kubeconfig``, then ``$KUBECONFIG``, then the pod's in-cluster service account (a
command run by a person, ``fulcrum inspect`` say, also tries ``~/.kube/config`` before that);
``--context`` picks a context of the kubeconfig, as kubectl's does.
Service-account tokens rotate (the kubelet rewrites the projected token file well before it
expires): in-cluster, the client re-reads the file every minute; a kubeconfig whose user names
a ``tokenFile`` is followed the same way here (the kubernetes client reads it only once).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

TOKEN_CHECK_SECONDS = 10.0


class CredentialsError(RuntimeError):
    """No usable cluster credentials; the message names the source and the fix."""


def add_flags(
    parser: argparse.ArgumentParser,
    *,
    kubeconfig_help: str,
    group: argparse._MutuallyExclusiveGroup | None = None,
) -> None:
    """``--kubeconfig FILE`` (in ``group``, if given) and ``--context NAME``, as kubectl has
    them."""
    (group or parser).add_argument(
        "--kubeconfig", type=Path, default=None, metavar="FILE", help=kubeconfig_help
    )
    parser.add_argument(
        "--context",
        default=None,
        help="the kubeconfig context to use (default: its current-context)",
    )


def _token_file(kubeconfig: Path, context_name: str | None = None) -> Path | None:
    """The ``tokenFile`` of the user of the kubeconfig's context (``context_name``, else its
    current one), if it names one."""
    try:
        doc = yaml.safe_load(kubeconfig.read_text()) or {}
        wanted = context_name or doc["current-context"]
        context = next(c["context"] for c in doc.get("contexts") or [] if c["name"] == wanted)
        user = next(u["user"] for u in doc.get("users") or [] if u["name"] == context["user"])
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError):
        return None  # the client's own loader reports what is wrong with it
    token_file = user.get("tokenFile") if isinstance(user, dict) else None
    return kubeconfig.parent / token_file if isinstance(token_file, str) else None


def follow_token_file(cfg: client.Configuration, path: Path) -> None:
    """Re-read the bearer token from ``path`` when the file changes (checked every 10 s)."""
    seen: list[float] = [time.monotonic(), path.stat().st_mtime]  # checked at, file's mtime

    def refresh(configuration: client.Configuration) -> None:
        now = time.monotonic()
        if now - seen[0] < TOKEN_CHECK_SECONDS:
            return
        seen[0] = now
        try:
            mtime = path.stat().st_mtime
            if mtime != seen[1]:
                configuration.api_key["BearerToken"] = f"Bearer {path.read_text().strip()}"
                seen[1] = mtime
        except OSError:
            pass  # mid-rotation: the old token serves until the next check

    cfg.refresh_api_key_hook = refresh


def _from_file(path: Path, source: str, context: str | None) -> client.Configuration:
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)
    except (config.ConfigException, OSError, yaml.YAMLError) as exc:
        raise CredentialsError(f"{source}: {exc}") from exc
    token_file = _token_file(path, context)
    if token_file is not None and token_file.is_file():
        follow_token_file(cfg, token_file)
    return cfg


def configured(kubeconfig: Path | None, context: str | None = None) -> bool:
    """Whether a process was pointed at a cluster (a flag, ``$KUBECONFIG`` or a pod's account)."""
    return (
        kubeconfig is not None
        or context is not None
        or any(os.environ.get(v) for v in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"))
    )


def load(
    kubeconfig: Path | None, *, user_default: bool = False, context: str | None = None
) -> tuple[client.Configuration, str]:
    """The client configuration and where it came from: ``kubeconfig``, else ``$KUBECONFIG``
    (its first file), else ``~/.kube/config`` if ``user_default``, else in-cluster; ``context``
    (``--context``): the kubeconfig's context to use instead of its current one."""
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise CredentialsError(f"--kubeconfig {kubeconfig}: no such file")
        source = f"--kubeconfig {kubeconfig}"
        return _from_file(kubeconfig, source, context), source
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env:
        if not Path(env).is_file():
            raise CredentialsError(f"$KUBECONFIG={env}: no such file; fix or unset it")
        return _from_file(Path(env), f"$KUBECONFIG={env}", context), f"$KUBECONFIG={env}"
    home = Path.home() / ".kube" / "config"
    if user_default and home.is_file():
        return _from_file(home, str(home), context), str(home)
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise CredentialsError(
            "no cluster credentials: pass --kubeconfig, set $KUBECONFIG, or run in a pod "
            "with a service account"
        )
    if context is not None:
        raise CredentialsError(
            f"--context {context}: no kubeconfig to take it from (in-cluster credentials have "
            "no contexts); pass --kubeconfig or set $KUBECONFIG"
        )
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # re-reads its token
    except config.ConfigException as exc:
        raise CredentialsError(f"in-cluster service account: {exc}") from exc
    return cfg, "the pod's service account (in-cluster)"


def api_client(
    kubeconfig: Path | None,
    *,
    user_default: bool = False,
    log: Callable[[str], Any] | None = None,
    connections: int | None = None,
    context: str | None = None,
) -> client.ApiClient:
    """An ``ApiClient`` from ``load``; ``log`` is told where its credentials came from.

    ``connections``: how many connections to the apiserver it keeps open, at least one per
    thread that calls it at once and per watch (the client's default is 5 per CPU; past the
    pool's size every call opens, and then drops, a TLS connection of its own)."""
    cfg, source = load(kubeconfig, user_default=user_default, context=context)
    if log is not None:
        log(f"cluster {cfg.host}, credentials from {source}")
    if connections is not None:
        cfg.connection_pool_maxsize = connections  # read when the client is made, not after
    return client.ApiClient(cfg)
