"""The refresh_token grant: rotation on every use, and a replayed old token revoking its whole family."""
from __future__ import annotations

import jwt as pyjwt

from tests.auth.conftest import WEB_SECRET, AuthMesh, Clock, basic


async def refresh(auth: AuthMesh, token: str, **form: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "refresh_token", "client_id": "meshrun-cli",
                                                        "refresh_token": token, **form})
    return status, body


async def introspect(auth: AuthMesh, token: str) -> dict:  # type: ignore[type-arg]
    status, _, body = await auth.post("/oauth2/introspect", {"token": token}, basic("web-app", WEB_SECRET))
    assert status == 200
    return body  # type: ignore[no-any-return]


async def test_a_used_refresh_token_is_replaced_by_a_new_one(auth: AuthMesh) -> None:
    login = await auth.user_tokens()
    status, second = await refresh(auth, login["refresh_token"])
    assert status == 200, second
    assert second["refresh_token"] != login["refresh_token"]
    assert second["access_token"] != login["access_token"]
    claims = pyjwt.decode(second["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["scope"] == "orders.read orders.write"
    status, third = await refresh(auth, second["refresh_token"])
    assert status == 200 and third["refresh_token"] not in (login["refresh_token"], second["refresh_token"])


async def test_replaying_an_old_refresh_token_revokes_the_whole_family(auth: AuthMesh) -> None:
    login = await auth.user_tokens()
    status, second = await refresh(auth, login["refresh_token"])
    assert status == 200
    status, body = await refresh(auth, login["refresh_token"])  # the stolen copy comes back
    assert status == 400 and body["error"] == "invalid_grant" and "already used" in body["error_description"]
    status, body = await refresh(auth, second["refresh_token"])  # the legitimate newest one is dead too
    assert status == 400 and body["error"] == "invalid_grant" and "revoked" in body["error_description"]
    for access in (login["access_token"], second["access_token"]):
        assert await introspect(auth, access) == {"active": False}


async def test_refresh_may_narrow_the_scope_but_never_widen_it(auth: AuthMesh) -> None:
    login = await auth.user_tokens()
    status, body = await refresh(auth, login["refresh_token"], scope="orders.write admin")
    assert status == 400 and body["error"] == "invalid_scope"
    status, narrowed = await refresh(auth, login["refresh_token"], scope="orders.read")  # still valid after that
    assert status == 200 and narrowed["scope"] == "orders.read"
    status, again = await refresh(auth, narrowed["refresh_token"])
    assert status == 200 and again["scope"] == "orders.read orders.write"  # the login's scope, not the last one


async def test_a_refresh_token_belongs_to_its_client(auth: AuthMesh) -> None:
    login = await auth.user_tokens()
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "refresh_token",
                                                        "refresh_token": login["refresh_token"]},
                                      basic("web-app", WEB_SECRET))
    assert status == 400 and body["error"] == "invalid_grant"
    status, _ = await refresh(auth, login["refresh_token"])
    assert status == 200


async def test_refresh_tokens_expire_with_the_login(auth: AuthMesh) -> None:
    clock = auth.server.clock = Clock()
    login = await auth.user_tokens()
    clock.advance(8 * 3600 + 1)
    status, body = await refresh(auth, login["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant" and "expired" in body["error_description"]


async def test_unknown_refresh_token_is_invalid_grant(auth: AuthMesh) -> None:
    status, body = await refresh(auth, "not-a-refresh-token")
    assert status == 400 and body["error"] == "invalid_grant"
