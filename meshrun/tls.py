"""Whether a URL may carry credentials in cleartext: plain http is acceptable on a loopback host only.

A rule about URLs, no I/O: configuration, the bearer guard and the token clients each apply it to what they call.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

TRUST_PROXY_HINT = ("use https, or set mesh.trust_proxy_tls = true if a TLS-terminating proxy or sidecar encrypts "
                    "this traffic")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`: traffic to it never leaves the machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_problem(url: str, what: str) -> str | None:
    """Why `url` must not be used to send passwords, secrets or tokens (plain http beyond loopback), or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return f"{what} {url!r} is not a valid URL"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http":
        return f"{what} {url!r} must be an https URL"
    if is_loopback_host(host):
        return None
    return f"{what} {url} is plain http on a non-loopback host: passwords, secrets and tokens would cross the " \
           f"network in cleartext; {TRUST_PROXY_HINT}"
