"""POST /oauth2/token: the client_credentials grant, client authentication, and RFC 6749 error answers."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import jwt as pyjwt
import pytest

from tests.auth.conftest import NOTIFY_SECRET, REPORTING_SECRET, AuthMesh, StartMesh, auth_settings, basic


async def test_client_credentials_with_basic_auth_issues_an_rfc9068_access_token(auth: AuthMesh) -> None:
    status, headers, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials"},
                                            basic("notification-service", NOTIFY_SECRET))
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["scope"] == "users.notify"
    assert "refresh_token" not in body
    header = pyjwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["iss"] == auth.issuer and claims["sub"] == "notification-service"
    assert claims["aud"] == "users" and claims["client_id"] == "notification-service"
    assert claims["scope"] == "users.notify" and claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert abs(claims["iat"] - time.time()) < 5


async def test_client_secret_post_is_accepted(auth: AuthMesh) -> None:
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials",
                                                        "client_id": "notification-service",
                                                        "client_secret": NOTIFY_SECRET})
    assert status == 200, body


async def test_tokens_verify_with_pyjwt_against_the_published_jwks(auth: AuthMesh) -> None:
    """An independent JWT library (PyJWT, not joserfc which signs) accepts our tokens with our JWKS."""
    body = await auth.client_token()
    user = await auth.user_tokens()
    async with auth.session.get(auth.issuer + "/oauth2/jwks") as response:  # PyJWKClient would block the loop
        jwks = pyjwt.PyJWKSet.from_dict(await response.json())
    for token, audience in ((body["access_token"], "users"), (user["access_token"], "orders")):
        key = jwks[pyjwt.get_unverified_header(token)["kid"]]
        claims = pyjwt.decode(token, key, algorithms=["ES256"], audience=audience, issuer=auth.issuer,
                              options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
        assert claims["client_id"] in ("notification-service", "meshrun-cli")


async def test_resource_parameter_selects_among_the_clients_audiences(auth: AuthMesh) -> None:
    both = await auth.client_token("reporting", REPORTING_SECRET)
    assert pyjwt.decode(both["access_token"], options={"verify_signature": False})["aud"] == ["orders", "users"]
    one = await auth.client_token("reporting", REPORTING_SECRET, resource="users", scope="users.notify")
    claims = pyjwt.decode(one["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "users" and claims["scope"] == "users.notify"
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials", "resource": "billing"},
                                      basic("reporting", REPORTING_SECRET))
    assert status == 400 and body["error"] == "invalid_target"


@pytest.mark.parametrize("authorization, form, description", [
    (basic("notification-service", "wrong"), {}, "wrong secret"),
    (basic("nobody", "x"), {}, "unknown client"),
    (None, {"client_id": "notification-service", "client_secret": "wrong"}, "wrong secret in the body"),
    (None, {}, "no client authentication"),
    (None, {"client_id": "notification-service"}, "confidential client without its secret"),
    ("Basic !!!not-base64", {}, "malformed Basic header"),
    ("Bearer abc", {}, "another scheme"),
])
async def test_failed_client_authentication_is_invalid_client_401_with_a_challenge(
        auth: AuthMesh, authorization: str | None, form: dict[str, str], description: str) -> None:
    status, headers, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials", **form},
                                            authorization)
    assert status == 401, description
    assert body["error"] == "invalid_client" and body["error_description"]
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("form, error", [
    ({"grant_type": "password", "username": "alice", "password": "alice-password"}, "unsupported_grant_type"),
    ({"grant_type": "implicit"}, "unsupported_grant_type"),
    ({"grant_type": "urn:ietf:params:oauth:grant-type:device_code"}, "unsupported_grant_type"),
    ({"grant_type": "authorization_code", "code": "x"}, "unauthorized_client"),
    ({}, "invalid_request"),
    ({"grant_type": "client_credentials", "scope": "orders.write"}, "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "bad\"scope"}, "invalid_scope"),
    ([("grant_type", "client_credentials"), ("scope", "users.notify"), ("scope", "users.notify")],
     "invalid_request"),
])
async def test_refused_token_requests_get_rfc6749_json_errors(auth: AuthMesh, form: object, error: str) -> None:
    status, headers, body = await auth.post("/oauth2/token", form,  # type: ignore[arg-type]
                                            basic("notification-service", NOTIFY_SECRET))
    assert status == 400
    assert body["error"] == error and body["error_description"]
    assert headers["Cache-Control"] == "no-store"


async def test_both_client_authentication_methods_at_once_is_invalid_request(auth: AuthMesh) -> None:
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials",
                                                        "client_secret": NOTIFY_SECRET},
                                      basic("notification-service", NOTIFY_SECRET))
    assert status == 400 and body["error"] == "invalid_request"


async def test_public_client_cannot_get_machine_tokens(auth: AuthMesh) -> None:
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials",
                                                        "client_id": "meshrun-cli"})
    assert status == 400 and body["error"] == "unauthorized_client"


async def test_a_body_that_is_not_a_form_is_invalid_request_not_a_traceback(auth: AuthMesh) -> None:
    async with auth.session.post(auth.issuer + "/oauth2/token", json={"grant_type": "client_credentials"},
                                 headers={"Authorization": basic("notification-service", NOTIFY_SECRET)}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_request"
    async with auth.session.get(auth.issuer + "/oauth2/token") as r:
        assert r.status == 405 and r.content_type == "application/json"


async def test_a_secret_is_hashed_once_then_served_from_the_verified_credentials_cache(auth: AuthMesh) -> None:
    checker = auth.server.checker
    calls = 0
    original = checker.matches

    async def counting(hashed, secret, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return await original(hashed, secret, **kwargs)

    checker.matches = counting  # type: ignore[method-assign]
    auth.server.authenticator.verified._entries.clear()
    bodies = await asyncio.gather(*(auth.client_token() for _ in range(20)))
    assert len({b["access_token"] for b in bodies}) == 20
    assert calls == 1, "20 concurrent requests with the same credentials ran the slow hash once"
    status, _, _ = await auth.post("/oauth2/token", {"grant_type": "client_credentials"},
                                   basic("notification-service", "wrong"))
    assert status == 401 and calls == 2, "a wrong secret is never answered from the cache"


async def test_secret_from_environment_replaces_the_configured_hash(start_mesh: StartMesh,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_NOTIFY_SECRET", "from-the-environment")
    settings = auth_settings(Path("/unused"))
    clients = settings["clients"]
    clients[0] = {**clients[0], "secret_env": "TEST_NOTIFY_SECRET"}
    auth = await start_mesh(clients=clients)
    status, _, _ = await auth.post("/oauth2/token", {"grant_type": "client_credentials"},
                                   basic("notification-service", NOTIFY_SECRET))
    assert status == 401
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "client_credentials"},
                                      basic("notification-service", "from-the-environment"))
    assert status == 200, body

