"""Which address a request comes from, for throttling: the peer, or behind a trusted proxy, its X-Forwarded-For.

A plain function of the values involved; only proxies listed in `trusted_proxies` are believed, since any client
can write an X-Forwarded-For header.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[IpNetwork]) -> str:
    """The peer's address; if the peer is a trusted proxy, the last X-Forwarded-For entry that is not one (the
    entries before it were written by the client, or by proxies we know nothing about)."""
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, proxies):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        address = hop
        if not _trusted(hop, proxies):
            break
    return address or "unknown"
