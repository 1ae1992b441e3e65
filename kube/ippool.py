"""Per-application IP pools: which addresses an IPPool has and who holds them.

An IPPool custom object lists its addresses (``spec.cidr`` or ``spec.addresses``),
the pods of its namespace that may use it (``spec.selector``) and who holds what
(``status.allocations``: address -> holder). Holders are opaque strings; the
controller uses ``pod:<uid>`` and ``reservation:<name>``.

Every function is pure: it returns a new pool (a deep copy) and never mutates its
argument. Writing the result with a compare-and-swap on ``resourceVersion`` is the
caller's job; a lost race simply means computing again from the fresh pool.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

MAX_ADDRESSES = 65_536

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PoolError(ValueError):
    """An IPPool that is malformed, or a request it cannot satisfy; the message says the fix."""


class PoolExhausted(PoolError):
    """Every address of the pool is held."""


class AddressTaken(PoolError):
    """The requested address is held by someone else."""


# --- reading a pool -----------------------------------------------------------------------------


def _label(pool: Mapping[str, Any]) -> str:
    meta = pool.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '?')}"


def _spec(pool: Mapping[str, Any]) -> Mapping[str, Any]:
    return pool.get("spec") or {}


def _describe(pool: Mapping[str, Any]) -> str:
    spec = _spec(pool)
    if spec.get("cidr") is not None:
        return str(spec["cidr"])
    return f"{len(spec.get('addresses') or [])} listed addresses"


def _sort_key(address: Address) -> tuple[int, int]:
    return address.version, int(address)


def _cidr_addresses(label: str, cidr: Any) -> list[str]:
    example = 'write e.g. "10.64.0.0/28"'
    if not isinstance(cidr, str):
        raise PoolError(f"pool {label}: spec.cidr {cidr!r} is not a CIDR; {example}")
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        try:
            loose = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise PoolError(f'pool {label}: spec.cidr "{cidr}" is not a CIDR; {example}') from None
        raise PoolError(
            f'pool {label}: spec.cidr "{cidr}" has host bits set; write "{loose}"'
        ) from None
    skip = 1 if network.version == 4 and network.prefixlen < 31 else 0
    count = network.num_addresses - 2 * skip
    if count > MAX_ADDRESSES:
        raise PoolError(
            f'pool {label}: spec.cidr "{cidr}" has {count} addresses, more than {MAX_ADDRESSES}; '
            "use a smaller cidr (at most a /16 for IPv4, a /112 for IPv6)"
        )
    base = network.network_address
    return [str(base + offset) for offset in range(skip, skip + count)]


def _listed_addresses(label: str, listed: Any) -> list[str]:
    if not isinstance(listed, list) or not listed:
        raise PoolError(f"pool {label}: spec.addresses must be a non-empty list of IP addresses")
    if len(listed) > MAX_ADDRESSES:
        raise PoolError(
            f"pool {label}: spec.addresses lists {len(listed)} addresses, "
            f"more than {MAX_ADDRESSES}; split the pool"
        )
    seen: set[Address] = set()
    for index, raw in enumerate(listed):
        try:
            if "%" in str(raw):  # a zone ("fe80::1%eth0") names a host's link, never a pod's
                raise ValueError(raw)
            address = ipaddress.ip_address(raw)
        except ValueError:
            raise PoolError(
                f"pool {label}: spec.addresses[{index}] {raw!r} is not an IP address without "
                'a zone; write e.g. "10.64.0.5"'
            ) from None
        if address in seen:
            raise PoolError(f"pool {label}: spec.addresses lists {address} twice; remove one")
        seen.add(address)
    return [str(a) for a in sorted(seen, key=_sort_key)]


def pool_addresses(pool: Mapping[str, Any]) -> list[str]:
    """The pool's usable addresses, lowest first, in canonical form.

    An IPv4 ``cidr`` shorter than /31 loses its network and broadcast addresses.
    """
    label, spec = _label(pool), _spec(pool)
    cidr, listed = spec.get("cidr"), spec.get("addresses")
    if (cidr is None) == (listed is None):
        raise PoolError(f"pool {label}: give exactly one of spec.cidr and spec.addresses")
    if cidr is not None:
        return _cidr_addresses(label, cidr)
    return _listed_addresses(label, listed)


def _allocations(pool: Mapping[str, Any]) -> dict[str, str]:
    raw = (pool.get("status") or {}).get("allocations") or {}
    if not isinstance(raw, Mapping) or not all(
        isinstance(ip, str) and isinstance(holder, str) and holder for ip, holder in raw.items()
    ):
        raise PoolError(
            f"pool {_label(pool)}: status.allocations must map addresses to holder names"
        )
    return dict(raw)


def _canonical(pool: Mapping[str, Any], ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise PoolError(
            f'pool {_label(pool)}: "{ip}" is not an IP address; write e.g. "10.64.0.5"'
        ) from None


def holders(pool: Mapping[str, Any]) -> dict[str, str]:
    """Holder -> address. PoolError if a holder appears twice (a corrupt pool)."""
    out: dict[str, str] = {}
    for ip, holder in _allocations(pool).items():
        if holder in out:
            raise PoolError(
                f"pool {_label(pool)}: {holder} holds both {out[holder]} and {ip}; "
                "release one in status.allocations"
            )
        out[holder] = ip
    return out


def holder_ip(pool: Mapping[str, Any], holder: str) -> str | None:
    """The address ``holder`` holds, if any."""
    return holders(pool).get(holder)


def ip_holder(pool: Mapping[str, Any], ip: str) -> str | None:
    """Who holds ``ip``, if anyone."""
    return _allocations(pool).get(_canonical(pool, ip))


def check_invariants(pool: Mapping[str, Any]) -> None:
    """Raise PoolError unless each held address is a canonical pool address with one holder,
    and each holder holds one address."""
    inside = set(pool_addresses(pool))
    for ip in _allocations(pool):
        if ip not in inside:
            raise PoolError(
                f"pool {_label(pool)}: status.allocations holds {ip}, "
                f"which is not an address of the pool ({_describe(pool)})"
            )
    holders(pool)


def selects(pool: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether the pool may serve the pod: same namespace, and its selector matches the pod.

    A missing or empty selector selects every pod of the namespace.
    """
    pool_meta, pod_meta = pool.get("metadata") or {}, pod.get("metadata") or {}
    if (pool_meta.get("namespace") or "default") != (pod_meta.get("namespace") or "default"):
        return False
    selector = _spec(pool).get("selector") or {}
    labels: Mapping[str, str] = pod_meta.get("labels") or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if operator == "In":
            matched = key in labels and labels[key] in values
        elif operator == "NotIn":
            matched = key not in labels or labels[key] not in values
        elif operator == "Exists":
            matched = key in labels
        elif operator == "DoesNotExist":
            matched = key not in labels
        else:
            raise PoolError(
                f"pool {_label(pool)}: spec.selector.matchExpressions[{index}].operator "
                f"{operator!r} is not supported; use In, NotIn, Exists or DoesNotExist"
            )
        if not matched:
            return False
    return True


# --- changing a pool ----------------------------------------------------------------------------


def _with(pool: Mapping[str, Any], allocations: dict[str, str]) -> dict[str, Any]:
    """A deep copy of ``pool`` with ``status.allocations`` replaced."""
    new = copy.deepcopy(dict(pool))
    status = dict(new.get("status") or {})
    status["allocations"] = allocations
    new["status"] = status
    return new


def allocate(
    pool: Mapping[str, Any], holder: str, *, want: str | None = None
) -> tuple[dict[str, Any], str]:
    """Give ``holder`` an address: ``want`` if given, else the lowest free one.

    Idempotent: a holder that already holds an address gets it back and the pool
    is unchanged (a PoolError if ``want`` names a different address).
    """
    label, allocations = _label(pool), _allocations(pool)
    wanted = None if want is None else _canonical(pool, want)
    current = holder_ip(pool, holder)
    if current is not None:
        if wanted is not None and wanted != current:
            raise PoolError(
                f"pool {label}: {holder} already holds {current}, not {wanted}; "
                "release it before asking for another address"
            )
        return copy.deepcopy(dict(pool)), current
    addresses = pool_addresses(pool)
    if wanted is not None:
        if wanted not in set(addresses):
            raise PoolError(f"{wanted} is outside pool {label} ({_describe(pool)})")
        taken_by = allocations.get(wanted)
        if taken_by is not None:
            raise AddressTaken(
                f"{wanted} in pool {label} is held by {taken_by}; "
                "ask for another address, or for none to get any free one"
            )
        chosen = wanted
    else:
        free = next((ip for ip in addresses if ip not in allocations), None)
        if free is None:
            raise PoolExhausted(
                f"pool {label} ({_describe(pool)}) has no free address: all {len(addresses)} "
                "are held; release some or make the pool larger"
            )
        chosen = free
    allocations[chosen] = holder
    return _with(pool, allocations), chosen


def release(pool: Mapping[str, Any], holder: str) -> dict[str, Any] | None:
    """The pool without ``holder``'s address, or None when it holds none (nothing to write)."""
    ip = holder_ip(pool, holder)
    if ip is None:
        return None
    allocations = _allocations(pool)
    del allocations[ip]
    return _with(pool, allocations)


def transfer(pool: Mapping[str, Any], old: str, new: str) -> dict[str, Any] | None:
    """Hand ``old``'s address to ``new``; None when there is nothing to do.

    Nothing to do: ``old`` holds nothing (e.g. the transfer was already written)
    or ``old`` is ``new``. PoolError if ``new`` already holds another address.
    """
    ip = holder_ip(pool, old)
    if ip is None or old == new:
        return None
    current = holder_ip(pool, new)
    if current is not None:
        raise PoolError(
            f"pool {_label(pool)}: {new} already holds {current}, so it cannot take {ip} "
            f"from {old}; release {current} first"
        )
    allocations = _allocations(pool)
    allocations[ip] = new
    return _with(pool, allocations)


def shared_addresses(pool: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The addresses both pools have, lowest first (``PoolError`` if either is malformed)."""
    mine = set(pool_addresses(pool))
    return [ip for ip in pool_addresses(other) if ip in mine]
