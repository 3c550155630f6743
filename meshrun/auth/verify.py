"""Verifying a JWT access token (RFC 9068) against a set of public keys: pure, synchronous, no I/O.

Where the keys come from (the issuer's JWKS) is `jwks`'s job; turning failures into HTTP answers is `guard`'s.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from meshrun.auth.claims import Claims, format_scope
from meshrun.errors import AuthError

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# A key never carries its own trust: tokens naming a key or a place to fetch one are refused outright (RFC 8725 §3.10).
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# The `typ` values each token profile a resource server can accept stands for (compared without case, RFC 7515
# §4.1.9). "JWT" is what Spring Security's default decoder and Spring Authorization Server use: `typ: JWT` or no
# typ at all (SAS writes none). A profile is accepted only where it is named, so an at+jwt-only service never
# takes a JWT of another kind (an ID token, say) for an access token.
PROFILE_TYPES: dict[str, frozenset[str | None]] = {
    "at+jwt": frozenset(ACCESS_TOKEN_TYPES),
    "JWT": frozenset({"jwt", "application/jwt", None}),
}
DEFAULT_PROFILES = ("at+jwt",)
MAX_TOKEN_BYTES = 4096  # ours are under 1 KB; aiohttp refuses header lines over 8190 bytes anyway
MAX_HEADER_BYTES = 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class InvalidToken(AuthError):
    """The token is missing, malformed, expired, wrongly signed, or meant for someone else (RFC 6750: 401)."""

    error = "invalid_token"
    status = 401

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)


class UnknownSigningKey(InvalidToken):
    """The token names a key id this verifier does not have; the caller may refetch the JWKS once and retry."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__(f"token is signed with key id {_shown(kid)}, which the issuer's JWKS does not contain")


class InsufficientScope(AuthError):
    """The token is valid but lacks the scope the route needs (RFC 6750: 403)."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, needed: str, has: frozenset[str]) -> None:
        self.scope = needed
        self.description = (f"token lacks scope {needed!r} (it has: {format_scope(has) or 'no scope'}); "
                            f"request a token with scope {needed!r}")
        super().__init__(self.description)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key from a JWKS, with the only algorithm a token signed by it may use."""

    kid: str
    alg: str
    key: RSAKey | ECKey = field(compare=False)
    material: bytes  # canonical public parameters: two keys are the same key iff these (and alg) are equal


def keys_from_jwks(document: Any) -> tuple[dict[str, VerificationKey], list[str]]:
    """Usable signature keys of a JWK Set, by kid, and a sentence per key skipped (symmetric, unknown type...)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: expected an object with a `keys` array")
    keys: dict[str, VerificationKey] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        try:
            key = _verification_key(jwk)
        except ValueError as exc:
            skipped.append(f"keys[{index}]: {exc}")
            continue
        if key.kid in keys:
            skipped.append(f"keys[{index}]: duplicate kid {key.kid!r}")
            continue
        keys[key.kid] = key
    return keys, skipped


def _verification_key(jwk: Any) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise ValueError("not an object")
    kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use is {jwk.get('use')!r}, not sig")
    if kty == "RSA":
        public = {"kty": "RSA", "n": jwk.get("n"), "e": jwk.get("e")}
        alg = alg or "RS256"
        if alg not in RSA_ALGORITHMS:
            raise ValueError(f"alg {alg!r} is not an RSA signature algorithm")
    elif kty == "EC":
        public = {"kty": "EC", "crv": jwk.get("crv"), "x": jwk.get("x"), "y": jwk.get("y")}
        expected = EC_ALGORITHMS.get(str(jwk.get("crv")))
        if expected is None or alg not in (None, expected):
            raise ValueError(f"EC key with crv {jwk.get('crv')!r} and alg {alg!r} is not supported")
        alg = expected
    else:  # "oct" above all: a symmetric key in a JWKS would let anyone holding it mint tokens
        raise ValueError(f"key type {kty!r} is not accepted (RSA and EC signature keys only)")
    try:
        key: RSAKey | ECKey = (RSAKey if kty == "RSA" else ECKey).import_key(public)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid {kty} key: {exc}") from None
    if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
        raise ValueError(f"RSA key of {key.raw_value.key_size} bits is too short (2048 at least)")
    return VerificationKey(kid, alg, key, orjson.dumps(public, option=orjson.OPT_SORT_KEYS))


def _shown(value: Any, limit: int = 80) -> str:
    """A token-supplied value made safe to echo in a WWW-Authenticate header: short, ASCII, no quotes."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    text = "".join(c if " " <= c <= "~" and c not in "\"\\" else "?" for c in text)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _segment(text: str, what: str) -> bytes:
    if _BASE64URL.fullmatch(text) is None:
        raise InvalidToken(f"token {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"token {what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidToken(f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"token {what} is not a JSON object")
    return value


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TokenVerifier:
    """Checks signature, `typ`, `iss`, `aud`, `exp`/`nbf`/`iat` and scope; remembers tokens it verified.

    The cache is keyed by the token string and bounded: a hit costs a dict lookup, a clock read and a set lookup.
    An entry is used only until the token's `exp` (plus the same leeway as a full check), and is dropped as soon as
    its signing key leaves the key set, so the cache never accepts what a full verification would refuse.
    `audience=None` skips the audience check: only the issuer's own introspection does that.
    `token_typ` names the profiles accepted (`PROFILE_TYPES`): RFC 9068's at+jwt unless told otherwise.
    """

    def __init__(self, issuer: str, audience: str | None, *, leeway: float = 5.0,
                 clock: Callable[[], float] = time.time, cache_size: int = 10_000,
                 max_token_bytes: int = MAX_TOKEN_BYTES, token_typ: tuple[str, ...] = DEFAULT_PROFILES) -> None:
        unknown = [p for p in token_typ if p not in PROFILE_TYPES]
        if unknown or not token_typ:
            raise ValueError(f"token_typ {list(token_typ)!r}: expected one or more of {', '.join(PROFILE_TYPES)}")
        self.issuer = issuer
        self.audience = audience
        self.token_typ = token_typ
        self._types: frozenset[str | None] = frozenset().union(*(PROFILE_TYPES[p] for p in token_typ))
        self.leeway = leeway
        self.clock = clock
        self.cache_size = cache_size
        self.max_token_bytes = max_token_bytes
        self.keys: Mapping[str, VerificationKey] = {}
        self._cache: dict[str, tuple[Claims, float, str]] = {}

    def set_keys(self, keys: Mapping[str, VerificationKey]) -> None:
        """Replace the key set; cached tokens whose key is gone (or changed) are forgotten."""
        old, self.keys = self.keys, dict(keys)
        gone = {kid for kid, key in old.items() if keys.get(kid) != key}
        if gone:
            self._cache = {t: e for t, e in self._cache.items() if e[2] not in gone}

    def verify(self, token: str, scope: str | None = None) -> Claims:
        """The token's claims, or InvalidToken / UnknownSigningKey / InsufficientScope saying what is wrong."""
        entry = self._cache.get(token)
        if entry is not None and self.clock() < entry[1]:
            claims = entry[0]
        else:
            if entry is not None:
                del self._cache[token]
            claims = self._verify_uncached(token)
        if scope is not None and scope not in claims.scope:
            self._check_scopes(claims, scope)
        return claims

    def _check_scopes(self, claims: Claims, scope: str) -> None:
        for needed in scope.split():  # a route may need several scopes, space-separated
            if needed not in claims.scope:
                raise InsufficientScope(needed, claims.scope)

    def _verify_uncached(self, token: str) -> Claims:
        if len(token) > self.max_token_bytes:
            raise InvalidToken(f"token is {len(token)} bytes long, more than the {self.max_token_bytes} accepted")
        parts = token.split(".")
        if len(parts) == 5:
            raise InvalidToken("token is encrypted (JWE); only signed JWT access tokens are accepted")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise InvalidToken("token is not a JWT (expected header.payload.signature in base64url)")
        if len(parts[0]) > MAX_HEADER_BYTES:
            raise InvalidToken(f"token header is larger than {MAX_HEADER_BYTES} bytes")
        header = _json_object(_segment(parts[0], "header"), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("token is not signed (alg none); only tokens signed by the issuer are accepted")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise InvalidToken(f"token header carries {name!r}: keys are only taken from the issuer's JWKS")
        if "crit" in header:
            raise InvalidToken("token header has critical extensions (crit), which this verifier does not know")
        typ = header.get("typ")
        if (typ.lower() if isinstance(typ, str) else typ) not in self._types:
            raise InvalidToken(self._typ_refused(typ))
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("token header has no kid, so no key of the issuer can verify it")
        key = self.keys.get(kid)
        if key is None:
            raise UnknownSigningKey(kid)
        if alg != key.alg:
            raise InvalidToken(f"token alg {_shown(alg)} is not allowed with key {_shown(kid)} (only {key.alg})")
        if not parts[2]:
            raise InvalidToken("token has no signature")
        try:
            payload = jws.deserialize_compact(token, key.key, algorithms=[key.alg]).payload
        except JoseError:
            raise InvalidToken(f"token signature does not verify with the issuer's key {_shown(kid)}") from None
        rfc9068 = isinstance(typ, str) and typ.lower() in ACCESS_TOKEN_TYPES
        claims = self._check_claims(_json_object(payload, "payload"), rfc9068=rfc9068)
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                self._evict()
            self._cache[token] = (claims, claims.exp + self.leeway, kid)
        return claims

    def _typ_refused(self, typ: Any) -> str:
        if self.token_typ == DEFAULT_PROFILES:
            return (f"token typ is {_shown(typ)}, expected 'at+jwt' (an RFC 9068 access token, not an ID token or "
                    "another JWT; a service that takes plain JWTs declares token_typ = [\"JWT\"])")
        return f"token typ is {_shown(typ)}, not one this service accepts (token_typ: {', '.join(self.token_typ)})"

    def _check_claims(self, raw: dict[str, Any], *, rfc9068: bool = True) -> Claims:
        """The claims, checked; a plain JWT (`rfc9068=False`, e.g. from Spring Authorization Server) may leave out
        client_id and write scope as a JSON array of strings, as SAS does."""
        if raw.get("iss") != self.issuer:
            raise InvalidToken(f"token issuer {_shown(raw.get('iss'))} is not the issuer this service trusts "
                               f"({self.issuer})")
        aud = raw.get("aud")
        audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if not audiences or not all(isinstance(a, str) for a in audiences):
            raise InvalidToken("token has no aud (audience) claim")
        if self.audience is not None and self.audience not in audiences:
            raise InvalidToken(f"token audience {_shown(', '.join(audiences))} does not include this service "
                               f"({self.audience!r}); request a token for resource {self.audience!r}")
        now = self.clock()
        exp = raw.get("exp")
        if not _number(exp):
            raise InvalidToken("token has no numeric exp (expiry) claim")
        if now >= exp + self.leeway:
            raise InvalidToken(f"token expired {int(now - exp)} s ago; get a new one")
        nbf = raw.get("nbf")
        if nbf is not None and (not _number(nbf) or nbf > now + self.leeway):
            raise InvalidToken("token is not valid yet (nbf is in the future); check the issuer's clock")
        iat = raw.get("iat")
        if not _number(iat) or iat > now + self.leeway:
            raise InvalidToken("token iat (issued-at) is missing or in the future; check the issuer's clock")
        for name in ("sub", "client_id", "jti") if rfc9068 else ("sub", "jti"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise InvalidToken(f"token has no {name} claim, which RFC 9068 access tokens carry")
        scope = raw.get("scope", "")
        if isinstance(scope, str):
            scopes = frozenset(scope.split())
        elif not rfc9068 and isinstance(scope, list) and all(isinstance(s, str) for s in scope):
            scopes = frozenset(scope)
        else:
            raise InvalidToken("token scope claim is not a space-separated string")
        client_id = raw.get("client_id") if rfc9068 else raw.get("client_id", raw.get("azp", ""))
        if not isinstance(client_id, str):
            raise InvalidToken("token client_id claim is not a string")
        return Claims(sub=raw["sub"], client_id=client_id, scope=scopes, aud=audiences, exp=int(exp),
                      jti=raw["jti"], raw=raw)

    def _evict(self) -> None:
        """Drop expired entries; if that frees too little, the oldest tenth, so a full cache costs O(1) amortised."""
        now = self.clock()
        self._cache = {t: e for t, e in self._cache.items() if e[1] > now}
        excess = len(self._cache) - self.cache_size * 9 // 10
        if excess > 0:
            for token in list(self._cache)[:excess]:
                del self._cache[token]

    def forget(self) -> None:
        """Drop every cached verification (tests and benchmarks measure the uncached path with this)."""
        self._cache.clear()
