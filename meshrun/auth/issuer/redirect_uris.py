"""Redirect URIs: which may be registered, and whether one sent in a request is a registered one.

Matching is on the raw strings, never on a parsed form: parsers forgive (urlsplit drops tabs and newlines, strips
leading spaces and control characters), and the raw string is what ends up in the redirect (RFC 9700 §4.1.3).
"""
from __future__ import annotations

import re

# RFC 3986 §2: unreserved, reserved (gen-delims and sub-delims), and percent-encodings. Nothing else, so no control
# character, space, DEL, backslash, quote, angle bracket or non-ASCII character.
_URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
# A loopback IP redirect (RFC 8252 §7.3): host, optional port, then the path and query (no fragment).
_LOOPBACK = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?([/?][^#]*)?")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(//([^/?#]*))?[^#]*")


def character_problem(uri: str) -> str | None:
    """Why `uri` is not a URI at all (characters RFC 3986 does not allow), or None."""
    if _URI_CHARACTERS.fullmatch(uri):
        return None
    bad = next((c for c in uri if not _URI_CHARACTERS.fullmatch(c)), "%")
    return (f"contains {bad!r}, which a URI may not contain (RFC 3986: no control characters, spaces, backslashes "
            "or stray '%')")


def _loopback(uri: str) -> tuple[str, str] | None:
    """(host, path and query) of a loopback redirect URI with a valid port or none, else None."""
    match = _LOOPBACK.fullmatch(uri)
    if match is None:
        return None
    port = match[2]
    if port is not None and (port != str(int(port)) or not 0 < int(port) <= 65535):
        return None  # leading zeros or out of range: not the port a browser would use
    return match[1], match[3] or ""


def redirect_uri_matches(registered: tuple[str, ...], given: str) -> bool:
    """Exact string match (RFC 6749 §3.1.2.3), except that a loopback IP redirect may use any port (RFC 8252 §7.3).

    `given` must have passed `character_problem` first; a registered URI passed `redirect_uri_problem`.
    """
    if given in registered:
        return True
    parts = _loopback(given)
    return parts is not None and any(_loopback(uri) == parts for uri in registered)


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be registered (RFC 6749 §3.1.2, RFC 8252 §7-8), or None."""
    problem = character_problem(uri)
    if problem:
        return problem
    match = _ABSOLUTE.fullmatch(uri)
    if match is None or "#" in uri:
        return "must be an absolute URI without a fragment"
    scheme, authority = match[1].lower(), match[3]
    if scheme in ("http", "https") and not authority:
        return "has no host"
    if scheme == "http" and _loopback(uri) is None:
        return "plain http is only allowed on a loopback IP literal (http://127.0.0.1/... or http://[::1]/...)"
    return None
