"""PKCE (RFC 7636) with the S256 method only: the client's side (make a verifier) and the server's (check it).

`plain` is not offered: it protects nothing once the authorization request can be observed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")  # BASE64URL(SHA-256(verifier)), unpadded


def new_verifier() -> str:
    return secrets.token_urlsafe(48)  # 64 characters from the unreserved set


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def is_verifier(value: str) -> bool:
    return _VERIFIER.fullmatch(value) is not None


def is_challenge(value: str) -> bool:
    return _CHALLENGE.fullmatch(value) is not None


def verifier_matches(verifier: str, challenge: str) -> bool:
    return is_verifier(verifier) and hmac.compare_digest(s256(verifier), challenge)
