"""TokenVerifier without HTTP: its cache never accepts what a full check would refuse; key sets from JWKS."""
from __future__ import annotations

import time
from typing import Any

import pytest

from meshrun.auth.keys import SigningKey, generate_key
from meshrun.auth.verify import InsufficientScope, InvalidToken, TokenVerifier, UnknownSigningKey, keys_from_jwks

ISSUER = "http://issuer.test"


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def mint(key: SigningKey, now: float, **overrides: Any) -> str:
    claims = {"iss": ISSUER, "sub": "alice", "aud": ["orders", "users"], "exp": int(now) + 60, "iat": int(now),
              "jti": "j1", "client_id": "cli", "scope": "orders.read orders.write", **overrides}
    return key.sign({"typ": "at+jwt"}, claims)


@pytest.fixture(scope="module")
def rsa() -> SigningKey:
    return generate_key("RS256", time.time())


def verifier_for(*keys: SigningKey, clock: Clock, **kwargs: Any) -> TokenVerifier:
    verifier = TokenVerifier(ISSUER, "orders", clock=clock, **kwargs)
    verifier.set_keys(keys_from_jwks({"keys": [k.public_jwk() for k in keys]})[0])
    return verifier


def test_a_valid_token_gives_typed_claims(rsa: SigningKey) -> None:
    clock = Clock()
    claims = verifier_for(rsa, clock=clock).verify(mint(rsa, clock.now), "orders.write")
    assert claims.sub == "alice" and claims.client_id == "cli" and claims.aud == ("orders", "users")
    assert claims.scope == frozenset({"orders.read", "orders.write"}) and claims.jti == "j1"
    assert claims.raw["iss"] == ISSUER


def test_es256_keys_work_the_same(rsa: SigningKey) -> None:
    clock = Clock()
    ec = generate_key("ES256", clock.now)
    assert verifier_for(rsa, ec, clock=clock).verify(mint(ec, clock.now)).sub == "alice"


def test_a_cached_token_is_refused_after_its_expiry_plus_leeway(rsa: SigningKey) -> None:
    clock = Clock()
    verifier = verifier_for(rsa, clock=clock, leeway=5.0)
    token = mint(rsa, clock.now)
    verifier.verify(token)
    clock.now += 60 + 4.9
    assert verifier.verify(token).sub == "alice"  # within the leeway, from the cache
    clock.now += 0.2
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_cached_tokens_are_dropped_when_their_key_leaves_the_set(rsa: SigningKey) -> None:
    clock = Clock()
    other = generate_key("ES256", clock.now)
    verifier = verifier_for(rsa, other, clock=clock)
    token = mint(rsa, clock.now)
    verifier.verify(token)
    verifier.set_keys(keys_from_jwks({"keys": [other.public_jwk()]})[0])
    with pytest.raises(UnknownSigningKey):
        verifier.verify(token)


def test_refetching_the_same_key_set_keeps_the_cache(rsa: SigningKey) -> None:
    clock = Clock()
    verifier = verifier_for(rsa, clock=clock)
    verifier.verify(mint(rsa, clock.now))
    verifier.set_keys(keys_from_jwks({"keys": [rsa.public_jwk()]})[0])  # a periodic refresh: new objects
    assert len(verifier._cache) == 1


def test_scope_is_checked_on_cached_tokens_too(rsa: SigningKey) -> None:
    clock = Clock()
    verifier = verifier_for(rsa, clock=clock)
    token = mint(rsa, clock.now, scope="orders.read")
    verifier.verify(token, "orders.read")
    with pytest.raises(InsufficientScope) as refused:
        verifier.verify(token, "orders.write")
    assert refused.value.scope == "orders.write"
    with pytest.raises(InsufficientScope):
        verifier.verify(token, "orders.read orders.write")  # a route needing two scopes


def test_the_cache_is_bounded(rsa: SigningKey) -> None:
    clock = Clock()
    verifier = verifier_for(rsa, clock=clock, cache_size=10)
    for i in range(25):
        verifier.verify(mint(rsa, clock.now, jti=f"j{i}"))
    assert len(verifier._cache) <= 10


def test_a_jwks_never_yields_symmetric_or_unsupported_keys(rsa: SigningKey) -> None:
    keys, skipped = keys_from_jwks({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        {**rsa.public_jwk(), "alg": "HS256"},
        {**rsa.public_jwk(), "kid": "enc", "use": "enc"},
        {**rsa.public_jwk(), "kid": None},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        rsa.public_jwk(),
    ]})
    assert list(keys) == [rsa.kid] and keys[rsa.kid].alg == "RS256"
    assert len(skipped) == 5


def test_private_members_of_a_published_key_are_ignored(rsa: SigningKey) -> None:
    leaked = {**rsa.key.as_dict(private=True), "kid": rsa.kid, "alg": "RS256"}
    keys, _ = keys_from_jwks({"keys": [leaked]})
    assert not keys[rsa.kid].key.is_private
