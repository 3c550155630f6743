"""Building tokens by hand for the attack tests: any header, any claims, any signature (or none)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, RSAKey

from meshrun.auth.keys import KeyStore, SigningKey
from meshrun.auth.keys import signing_key as active_key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def segment(value: dict[str, Any]) -> str:
    return b64(orjson.dumps(value))


def claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    value: dict[str, Any] = {"iss": issuer, "sub": "alice", "aud": "orders", "exp": now + 300, "iat": now,
                             "jti": "forged-1", "client_id": "meshrun-cli", "scope": "orders.write"}
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


def signing_key(keys_dir: Path) -> SigningKey:
    """The issuer's current private key, read from its keys dir as an insider (or a test) could."""
    key = active_key(KeyStore(keys_dir).load(), time.time())
    assert key is not None
    return key


def _signed(private_key: Any, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Signed with `cryptography` directly: any header goes, whatever a JOSE library would refuse to write."""
    signing_input = f"{segment(header)}.{segment(payload)}".encode()
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants r || s, not DER
    else:
        signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    """A token signed with the issuer's real key (so only the claims or header are wrong)."""
    return _signed(key.key.private_key, {"alg": key.alg, "typ": "at+jwt", "kid": key.kid, **header}, payload)


def hs256_with_public_key(key: SigningKey, payload: dict[str, Any]) -> str:
    """The classic algorithm confusion: HMAC keyed with the issuer's public key, which everyone can fetch."""
    public_pem = key.key.public_key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{segment(payload)}"
    return f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"


def attacker_key(alg: str = "ES256") -> RSAKey | ECKey:
    return RSAKey.generate_key(2048, private=True) if alg == "RS256" else ECKey.generate_key("P-256", private=True)


def sign_with(attacker: RSAKey | ECKey, payload: dict[str, Any], **header: Any) -> str:
    alg = "RS256" if isinstance(attacker, RSAKey) else "ES256"
    return _signed(attacker.private_key, {"alg": alg, "typ": "at+jwt", **header}, payload)
