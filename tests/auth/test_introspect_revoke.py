"""POST /oauth2/introspect (RFC 7662) and /oauth2/revoke (RFC 7009), both behind client authentication."""
from __future__ import annotations

from tests.auth.conftest import NOTIFY_SECRET, REPORTING_SECRET, WEB_SECRET, AuthMesh, Clock, basic

RESOURCE_SERVER = basic("reporting", REPORTING_SECRET)


async def introspect(auth: AuthMesh, token: str, **form: str) -> dict:  # type: ignore[type-arg]
    status, headers, body = await auth.post("/oauth2/introspect", {"token": token, **form}, RESOURCE_SERVER)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    return body  # type: ignore[no-any-return]


async def test_an_active_access_token_is_described(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]
    info = await introspect(auth, token)
    assert info["active"] is True and info["client_id"] == "notification-service"
    assert info["scope"] == "users.notify" and info["sub"] == "notification-service" and info["aud"] == "users"
    assert info["iss"] == auth.issuer and info["token_type"] == "Bearer" and info["exp"] > info["iat"]
    assert "username" not in info
    user = await introspect(auth, (await auth.user_tokens())["access_token"])
    assert user["active"] is True and user["username"] == "alice"


async def test_an_expired_access_token_is_inactive(auth: AuthMesh) -> None:
    clock = auth.server.clock = Clock()
    token = (await auth.client_token())["access_token"]
    clock.advance(301)
    assert await introspect(auth, token) == {"active": False}


async def test_a_revoked_access_token_is_inactive(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]
    status, headers, body = await auth.post("/oauth2/revoke", {"token": token,
                                                               "token_type_hint": "access_token"},
                                            basic("notification-service", NOTIFY_SECRET))
    assert status == 200 and body == "" and headers["Cache-Control"] == "no-store"
    assert await introspect(auth, token) == {"active": False}


async def test_revoking_a_refresh_token_ends_its_family(auth: AuthMesh) -> None:
    login = await auth.user_tokens()
    info = await auth.post("/oauth2/introspect", {"token": login["refresh_token"],
                                                  "token_type_hint": "refresh_token"}, RESOURCE_SERVER)
    assert info[2] == {"active": False}, "another client does not see someone else's refresh token"
    status, _, _ = await auth.post("/oauth2/revoke", {"token": login["refresh_token"], "client_id": "meshrun-cli"})
    assert status == 200
    assert await introspect(auth, login["access_token"]) == {"active": False}
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "refresh_token", "client_id": "meshrun-cli",
                                                        "refresh_token": login["refresh_token"]})
    assert status == 400 and body["error"] == "invalid_grant"


async def test_a_refresh_token_is_introspected_by_its_own_client(auth: AuthMesh) -> None:
    login = await auth.user_tokens(client_id="web-app", secret=WEB_SECRET)
    status, _, info = await auth.post("/oauth2/introspect", {"token": login["refresh_token"]},
                                      basic("web-app", WEB_SECRET))
    assert status == 200 and info["active"] is True and info["token_type"] == "refresh_token"
    assert info["username"] == "alice" and info["client_id"] == "web-app"


async def test_unknown_tokens_are_inactive_and_revoking_them_is_not_an_error(auth: AuthMesh) -> None:
    assert await introspect(auth, "garbage") == {"active": False}
    assert await introspect(auth, "a.b.c") == {"active": False}
    status, _, _ = await auth.post("/oauth2/revoke", {"token": "garbage"}, RESOURCE_SERVER)
    assert status == 200


async def test_introspection_requires_client_authentication(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]
    for authorization, form in ((None, {}), (None, {"client_id": "meshrun-cli"}),
                                (basic("reporting", "wrong"), {})):
        status, headers, body = await auth.post("/oauth2/introspect", {"token": token, **form}, authorization)
        assert status == 401 and body["error"] == "invalid_client" and "WWW-Authenticate" in headers


async def test_revocation_requires_client_authentication(auth: AuthMesh) -> None:
    token = (await auth.client_token())["access_token"]
    status, _, body = await auth.post("/oauth2/revoke", {"token": token})
    assert status == 401 and body["error"] == "invalid_client"
    assert (await introspect(auth, token))["active"] is True


async def test_revoking_another_clients_token_answers_as_for_an_unknown_one_and_changes_nothing(
        auth: AuthMesh) -> None:
    machine = (await auth.client_token())["access_token"]
    login = await auth.user_tokens()
    for token in (machine, login["access_token"], login["refresh_token"], "not-a-token"):
        answers = [await auth.post("/oauth2/revoke", {"token": token}, RESOURCE_SERVER),
                   await auth.post("/oauth2/revoke", {"token": token}, basic("web-app", WEB_SECRET))]
        assert [(status, body) for status, _, body in answers] == [(200, ""), (200, "")], token
    status, _, _ = await auth.post("/oauth2/revoke", {"token": machine, "client_id": "meshrun-cli"})
    assert status == 200, "a public client, too, is answered as for an unknown token"
    assert (await introspect(auth, machine))["active"] is True
    assert (await introspect(auth, login["access_token"]))["active"] is True
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "refresh_token", "client_id": "meshrun-cli",
                                                        "refresh_token": login["refresh_token"]})
    assert status == 200, "the refresh token was not revoked by another client"


async def test_a_client_introspects_only_tokens_it_may_see(auth: AuthMesh) -> None:
    """RFC 7662 §4: its own tokens, and tokens for the audiences it speaks for; others look inactive."""
    machine = (await auth.client_token())["access_token"]  # notification-service's, audience users
    user = (await auth.user_tokens(client_id="web-app", secret=WEB_SECRET))["access_token"]  # audience orders
    as_web_app = basic("web-app", WEB_SECRET)  # speaks for no resource server
    status, _, info = await auth.post("/oauth2/introspect", {"token": machine}, as_web_app)
    assert status == 200 and info == {"active": False}, "another client's token, for another audience"
    status, _, info = await auth.post("/oauth2/introspect", {"token": user}, as_web_app)
    assert status == 200 and info["active"] is True and info["client_id"] == "web-app", "its own token"
    status, _, info = await auth.post("/oauth2/introspect", {"token": user}, basic("notification-service",
                                                                                   NOTIFY_SECRET))
    assert info == {"active": False}
    assert (await introspect(auth, machine))["active"] is True, "reporting speaks for users and orders"


async def test_introspection_without_a_token_is_invalid_request(auth: AuthMesh) -> None:
    status, _, body = await auth.post("/oauth2/introspect", {}, RESOURCE_SERVER)
    assert status == 400 and body["error"] == "invalid_request"
