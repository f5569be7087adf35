"""The client's address: the socket peer, or the rightmost untrusted hop of
``X-Forwarded-For``/``Forwarded`` when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from ..core.errors import OptionsError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(value: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """Addresses and CIDR networks, as a list or a comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    networks = []
    for entry in value:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise OptionsError(
                f"trusted_proxies must hold IP addresses or CIDR networks. Received: {entry!r}"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: "[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _forwarded_hops(headers: Mapping[str, str]) -> list[str] | None:
    """The hops the proxies added, leftmost first: ``X-Forwarded-For`` when
    present (what nginx, load balancers, uvicorn and Werkzeug's ProxyFix
    use), else the ``for=`` values of ``Forwarded``. Never a mix, and the one
    the proxy sets wins: a proxy that appends to ``X-Forwarded-For`` passes
    a client's own ``Forwarded`` through, which must not pick the key."""
    xff = headers.get("x-forwarded-for")
    if xff:
        return xff.split(",")
    forwarded = headers.get("forwarded")
    if not forwarded:
        return None
    hops = []
    for element in forwarded.split(","):
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                hops.append(value)
    return hops


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[IPNetwork, ...]
) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy;
    then the rightmost hop that is not itself trusted (a garbled hop ends
    the walk: nothing left of it can be believed)."""
    if peer is None or not trusted:
        return peer
    current = _address(peer)
    if current is None or not any(current in net for net in trusted):
        return peer
    hops = _forwarded_hops(headers)
    if not hops:
        return peer
    for raw in reversed(hops):
        hop = _address(raw)
        if hop is None:
            return str(current)
        current = hop
        if not any(hop in net for net in trusted):
            return str(hop)
    return str(current)  # every hop trusted: the leftmost is the client
