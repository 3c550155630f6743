"""Login CSRF defences for the sign-in form: a token bound to a cookie, and refusing cross-site submissions.

Values in, verdicts out: the service reads the headers and the form, sets the cookie and shows the answer.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
# Sec-Fetch-Site values a form of our own can produce: posted from our page, or typed/bookmarked by the user.
_SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, as browsers write it in the Origin header."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site_reason(origin: str | None, fetch_site: str | None, issuer_origin: str) -> str | None:
    """Why a form submission did not come from the issuer's own page, judging by the browser's headers, or None.

    Browsers send Origin on every POST and Sec-Fetch-Site on every request; a client that sends neither (the
    `meshrun token` command) is judged by the CSRF token alone.
    """
    if fetch_site is not None and fetch_site.lower() not in _SAME_SITE_FETCH:
        return f"the form was submitted from another site (Sec-Fetch-Site: {fetch_site[:32]})"
    if origin is not None and origin.lower() != issuer_origin:
        return f"the form was submitted from another origin ({origin[:100]}, not {issuer_origin})"
    return None


class LoginCsrf:
    """Double-submit, signed: the cookie holds a random value, the form a MAC of it under a secret of the issuer's
    (shared by its processes). A page elsewhere can neither read the cookie nor compute the MAC of one it planted.

    The cookie is HttpOnly and SameSite=Strict; on an https issuer it is also Secure and named with the `__Host-`
    prefix (no Domain, Path=/), so no sibling host can set it.
    """

    def __init__(self, secret: bytes, *, secure: bool) -> None:
        self._secret = secret
        self.secure = secure
        self.cookie_name = "__Host-meshrun_csrf" if secure else "meshrun_csrf"

    def cookie_for(self, current: str | None) -> str:
        """The cookie value to use: the browser's own if it is well-formed (other tabs keep working), else new."""
        if current is not None and _COOKIE_VALUE.fullmatch(current):
            return current
        return secrets.token_urlsafe(32)

    def token_for(self, cookie: str) -> str:
        mac = hmac.new(self._secret, b"meshrun login csrf\0" + cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def problem(self, cookie: str | None, token: str | None) -> str | None:
        """Why the submitted form is not one this issuer just showed to this browser, or None."""
        if cookie is None or not _COOKIE_VALUE.fullmatch(cookie):
            return "the sign-in cookie is missing (cookies blocked, or the form was not loaded from this server)"
        if token is None:
            return "the form carries no CSRF token"
        if not hmac.compare_digest(self.token_for(cookie).encode(), token.encode("utf-8", "replace")):
            return "the form's CSRF token does not belong to this browser's sign-in cookie"
        return None
