"""A resource server protecting its routes with BearerGuard, over real HTTP: RFC 6750 answers, attack tokens,
key rotation with the resource server running, and tokens surviving an issuer restart."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest

from meshrun.auth.guard import BearerGuard
from meshrun.auth.keys import KeyStore, rotate
from tests.auth import forge
from tests.auth.conftest import AuthMesh, Clock, mesh_data
from tests.conftest import free_port


async def test_a_valid_token_with_the_scope_reaches_the_handler_with_its_claims(auth: AuthMesh) -> None:
    token = (await auth.user_tokens())["access_token"]
    status, _, body = await auth.call("orders-api", "POST", "/orders", token)
    assert status == 201
    assert body == {"sub": "alice", "client_id": "meshrun-cli", "scope": ["orders.read", "orders.write"],
                    "aud": ["orders"]}


async def test_a_request_without_a_token_gets_a_bare_bearer_challenge(auth: AuthMesh) -> None:
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}):
        async with auth.session.post(auth.url("orders-api", "/orders"), headers=headers) as response:
            assert response.status == 401
            # RFC 6750 §3.1: no error code when the request carried no bearer credentials at all.
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="orders"'
            body = await response.json()
    assert body["error"] == "invalid_token" and "Authorization: Bearer" in body["error_description"]


async def test_a_token_without_the_routes_scope_is_403_insufficient_scope(auth: AuthMesh) -> None:
    token = (await auth.user_tokens(scope="orders.read"))["access_token"]
    status, headers, body = await auth.call("orders-api", "POST", "/orders", token)
    assert status == 403
    challenge = headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="orders.write"' in challenge
    assert body["error"] == "insufficient_scope" and body["scope"] == "orders.write"
    assert "orders.write" in body["error_description"]
    status, _, _ = await auth.call("orders-api", "GET", "/me", token)  # authenticated, no scope needed
    assert status == 200


async def test_a_machine_token_for_another_audience_is_refused(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]  # aud users
    status, _, body = await auth.call("users-api", "POST", "/notify", token)
    assert status == 200 and body["sub"] == "notification-service"
    status, headers, body = await auth.call("orders-api", "POST", "/notify", token)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert "audience" in body["error_description"]


Forger = Callable[[AuthMesh], str]


def _attacks() -> list[tuple[str, Forger, str]]:
    def real(auth: AuthMesh) -> forge.SigningKey:
        return forge.signing_key(auth.tmp_path / "keys")

    def ok(auth: AuthMesh, **overrides: Any) -> dict[str, Any]:
        return forge.claims(auth.issuer, **overrides)

    attacker, rsa_attacker = forge.attacker_key(), forge.attacker_key("RS256")
    now = int(time.time())
    return [
        ("alg none", lambda a: f"{forge.segment({'alg': 'none', 'typ': 'at+jwt', 'kid': real(a).kid})}."
                               f"{forge.segment(ok(a))}.", "not signed"),
        ("alg None, signature kept", lambda a: f"{forge.segment({'alg': 'None', 'typ': 'at+jwt'})}."
                                               f"{forge.segment(ok(a))}.c2ln", "not signed"),
        ("HS256 keyed with the public key", lambda a: forge.hs256_with_public_key(real(a), ok(a)), "not allowed"),
        ("unknown kid", lambda a: forge.sign_with(attacker, ok(a), kid="attacker-key"), "does not contain"),
        ("our kid, attacker's signature", lambda a: forge.sign_with(attacker, ok(a), kid=real(a).kid),
         "signature does not verify"),
        ("our kid, another algorithm", lambda a: forge.sign_with(rsa_attacker, ok(a), kid=real(a).kid),
         "not allowed"),
        ("jku pointing elsewhere", lambda a: forge.sign_with(attacker, ok(a), kid="k", jku="http://evil.example/jwks"),
         "jku"),
        ("x5u pointing elsewhere", lambda a: forge.sign_with(attacker, ok(a), kid="k", x5u="http://evil.example/c"),
         "x5u"),
        ("embedded jwk", lambda a: forge.sign_with(attacker, ok(a), kid=real(a).kid,
                                                   jwk=attacker.as_dict(private=False)), "jwk"),
        ("signature stripped", lambda a: forge.sign(real(a), ok(a)).rsplit(".", 1)[0] + ".", "no signature"),
        ("claims swapped under a real signature", lambda a: _swap_payload(forge.sign(real(a), ok(a)),
                                                                          ok(a, sub="admin")),
         "signature does not verify"),
        ("expired", lambda a: forge.sign(real(a), ok(a, exp=now - 60, iat=now - 360)), "expired"),
        ("not yet valid", lambda a: forge.sign(real(a), ok(a, nbf=now + 600)), "not valid yet"),
        ("issued in the future", lambda a: forge.sign(real(a), ok(a, iat=now + 600)), "future"),
        ("wrong iss", lambda a: forge.sign(real(a), ok(a, iss="http://evil.example")), "issuer"),
        ("wrong aud", lambda a: forge.sign(real(a), ok(a, aud="users")), "audience"),
        ("no aud", lambda a: forge.sign(real(a), ok(a, aud=None)), "aud"),
        ("no exp", lambda a: forge.sign(real(a), ok(a, exp=None)), "exp"),
        ("typ JWT (an ID token, say)", lambda a: forge.sign(real(a), ok(a), typ="JWT"), "typ"),
        ("crit header", lambda a: forge.sign(real(a), ok(a), crit=["exp"]), "crit"),
        ("garbage", lambda a: "garbage", "not a JWT"),
        ("three dots of nothing", lambda a: "..", "not a JWT"),
        ("header not base64", lambda a: "%%%." + forge.segment(ok(a)) + ".sig", "base64"),
        ("header not JSON", lambda a: forge.b64(b"{not json") + "." + forge.segment(ok(a)) + ".sig", "JSON"),
        ("JWE (five parts)", lambda a: "a.b.c.d.e", "encrypted"),
        ("oversized header", lambda a: forge.sign(real(a), ok(a), pad="x" * 2000), "header is larger"),
        ("oversized token", lambda a: forge.sign(real(a), ok(a, pad="x" * 5000)), "bytes long"),
    ]


def _swap_payload(token: str, payload: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{forge.segment(payload)}.{signature}"


ATTACKS = _attacks()


@pytest.mark.parametrize("name, make, reason", ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_attack_tokens_are_refused_with_401_invalid_token(auth: AuthMesh, name: str, make: Forger,
                                                                 reason: str) -> None:
    status, headers, body = await auth.call("orders-api", "POST", "/orders", make(auth))
    assert status == 401, body
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["error"] == "invalid_token" and reason in body["error_description"], body


async def test_an_rs256_issuers_public_key_is_no_hmac_secret(start_mesh: Any) -> None:
    auth = await start_mesh(signing_alg="RS256")
    key = forge.signing_key(auth.tmp_path / "keys")
    assert key.alg == "RS256"
    status, _, body = await auth.call("orders-api", "POST", "/orders",
                                      forge.hs256_with_public_key(key, forge.claims(auth.issuer)))
    assert status == 401 and "not allowed" in body["error_description"]
    status, _, _ = await auth.call("orders-api", "POST", "/orders", forge.sign(key, forge.claims(auth.issuer)))
    assert status == 201


async def test_a_forged_token_with_the_real_key_passes_so_the_table_tests_what_it_says(auth: AuthMesh) -> None:
    token = forge.sign(forge.signing_key(auth.tmp_path / "keys"), forge.claims(auth.issuer))
    status, _, body = await auth.call("orders-api", "POST", "/orders", token)
    assert status == 201, body


async def test_a_cached_token_is_refused_once_it_expires(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]
    assert (await auth.call("users-api", "POST", "/notify", token))[0] == 200
    clock = auth.guard("users-api").clock = Clock()
    clock.advance(300 + 5)  # lifetime plus the leeway
    status, _, body = await auth.call("users-api", "POST", "/notify", token)
    assert status == 401 and "expired" in body["error_description"]


async def wait_for_kid(auth: AuthMesh, kid: str) -> None:
    """Poll the issuer's JWKS until a running issuer has noticed a key added on disk."""
    for _ in range(200):
        async with auth.session.get(auth.issuer + "/oauth2/jwks") as response:
            if kid in {k["kid"] for k in (await response.json())["keys"]}:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"issuer never published {kid}")


async def test_key_rotation_reaches_a_running_resource_server_without_restart(auth: AuthMesh) -> None:
    old_token = (await auth.client_token())["access_token"]
    assert (await auth.call("users-api", "POST", "/notify", old_token))[0] == 200
    guard = auth.guard("users-api")
    fetches = guard.jwks.fetches

    new_key, deleted = rotate(KeyStore(auth.tmp_path / "keys"), "ES256", 300 + 60)
    assert deleted == []
    await wait_for_kid(auth, new_key.kid)
    new_token = (await auth.client_token())["access_token"]
    assert pyjwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert (await auth.call("users-api", "POST", "/notify", new_token))[0] == 200
    assert guard.jwks.fetches == fetches + 1, "one refetch for the unknown kid"
    assert (await auth.call("users-api", "POST", "/notify", old_token))[0] == 200, "old key still published"

    # Once every token of the old key has expired, the issuer stops publishing it; a resource server that
    # refreshes its JWKS forgets tokens it had verified with that key, even cached ones.
    auth.server.clock = Clock()
    auth.server.clock.advance(300 + 61)  # type: ignore[attr-defined]
    async with auth.session.get(auth.issuer + "/oauth2/jwks") as response:
        assert [k["kid"] for k in (await response.json())["keys"]] == [new_key.kid]
    await guard.jwks.refresh()
    status, _, body = await auth.call("users-api", "POST", "/notify", old_token)
    assert status == 401 and "does not contain" in body["error_description"]


async def test_refetching_for_unknown_key_ids_is_rate_limited(auth: AuthMesh) -> None:
    guard = auth.guard("orders-api")
    fetches = guard.jwks.fetches
    attacker = forge.attacker_key()
    for i in range(10):
        token = forge.sign_with(attacker, forge.claims(auth.issuer), kid=f"made-up-{i}")
        assert (await auth.call("orders-api", "POST", "/orders", token))[0] == 401
    assert guard.jwks.fetches <= fetches + 1


async def test_tokens_survive_an_issuer_restart(start_mesh: Any, tmp_path: Any) -> None:
    data = mesh_data(tmp_path, free_port())
    first = await start_mesh(data)
    token = (await first.client_token())["access_token"]
    await first.mesh.stop()
    second = await start_mesh(data)
    status, _, _ = await second.call("users-api", "POST", "/notify", token)
    assert status == 200
    assert len(KeyStore(tmp_path / "keys").load()) == 1


async def test_ready_says_the_issuer_is_unreachable_until_its_keys_are_fetched() -> None:
    async with aiohttp.ClientSession() as session:
        guard = BearerGuard(issuer=f"http://127.0.0.1:{free_port()}", audience="orders", session=lambda: session)
        problem = await guard.ready()
        assert problem is not None and "unreachable" in problem
        await guard.close()
