"""IPPools of different namespaces must not share an address: each pool hands its addresses out
on its own, so an address in two pools could go to two pods at once.

``ippool_refusal`` answers an IPPool's CREATE or UPDATE with the reason to refuse it, or "". It
reads the cluster's pools through ``PoolLister`` (the webhook's wiring lists them across
namespaces at each IPPool admission: pools are few and rarely written, so no informer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kube import ippool

Obj = Mapping[str, Any]
PoolLister = Callable[[], Sequence[Obj]]  # every IPPool of the cluster, as the apiserver has it


def _key(pool: Obj) -> tuple[str, str]:
    meta = pool.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def ippool_refusal(pool: Obj, namespace: str, pools: PoolLister | None) -> str:
    """Why ``pool`` (created or updated in ``namespace``) must be refused, or ""."""
    name = _key(pool)[1]
    label = f"IPPool {namespace}/{name}"
    try:
        ippool.pool_addresses(pool)
    except ippool.PoolError as exc:
        return str(exc)
    if pools is None:  # no cluster credentials: nothing to compare with (a local webhook)
        return ""
    try:
        existing = pools()
    except Exception as exc:
        return f"{label}: cannot list IPPools to check its addresses are its own ({exc}); retry"
    for other in existing:
        other_namespace, other_name = _key(other)
        if other_namespace == namespace:
            continue
        try:
            shared = ippool.shared_addresses(pool, other)
        except ippool.PoolError:
            continue  # the other pool is unreadable: it hands out nothing
        if shared:
            more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
            return (
                f"{label}: its addresses overlap IPPool {other_namespace}/{other_name} "
                f"({shared[0]}{more}): pools of different namespaces must not share an address, "
                "or one IP could go to two pods; give this pool another spec.cidr or "
                "spec.addresses"
            )
    return ""
