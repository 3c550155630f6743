"""GET/POST /oauth2/authorize and the authorization_code grant with PKCE, over real HTTP."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import jwt as pyjwt
import pytest

from meshrun.auth import pkce
from tests.auth.conftest import (
    ALICE_PASSWORD,
    CLI_REDIRECT,
    WEB_REDIRECT,
    WEB_SECRET,
    AuthMesh,
    Clock,
    StartMesh,
    auth_settings,
    basic,
    csrf_token,
)
from tests.conftest import free_port


def loopback() -> str:
    return f"http://127.0.0.1:{free_port()}/callback"


async def exchange(auth: AuthMesh, code: str, redirect_uri: str, verifier: str | None,
                   client_id: str = "meshrun-cli") -> tuple[int, dict]:  # type: ignore[type-arg]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client_id}
    if verifier is not None:
        form["code_verifier"] = verifier
    status, _, body = await auth.post("/oauth2/token", form)
    return status, body


async def test_a_person_logs_in_and_the_public_client_gets_a_user_token_with_pkce(auth: AuthMesh) -> None:
    verifier, redirect = pkce.new_verifier(), loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=verifier, state="s-123")
    assert answer["state"] == "s-123" and answer["iss"] == auth.issuer
    status, body = await exchange(auth, answer["code"], redirect, verifier)
    assert status == 200, body
    assert body["refresh_token"] and body["scope"] == "orders.read orders.write"
    claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["client_id"] == "meshrun-cli" and claims["aud"] == "orders"
    assert "auth_time" in claims
    status, _, placed = await auth.call("orders-api", "POST", "/orders", body["access_token"])
    assert status == 201 and placed["sub"] == "alice"


async def test_the_login_page_is_plain_html_carrying_the_request(auth: AuthMesh) -> None:
    query = urlencode({"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": loopback(),
                       "state": "<script>", "code_challenge": pkce.s256(pkce.new_verifier()),
                       "code_challenge_method": "S256"})
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}") as page:
        html = await page.text()
        assert page.status == 200 and page.content_type == "text/html"
        assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert '<input id="username" name="username"' in html and 'type="password"' in html
    assert urljoin(f"{auth.issuer}/oauth2/authorize?{query}", 'authorize') == f"{auth.issuer}/oauth2/authorize"
    assert '<form method="post" action="authorize">' in html
    assert "&lt;script&gt;" in html and "<script>" not in html


async def test_wrong_password_shows_the_form_again_with_an_error(auth: AuthMesh) -> None:
    redirect = loopback()
    params = {"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": redirect, "state": "s",
              "code_challenge": pkce.s256(pkce.new_verifier()), "code_challenge_method": "S256"}
    token = csrf_token(await auth.login_page(params))
    for username, password in (("alice", "wrong"), ("mallory", ALICE_PASSWORD), ("alice", "")):
        status, headers, html = await auth.post("/oauth2/authorize", {**params, "username": username,
                                                                      "password": password, "csrf_token": token})
        assert status == 200 and "Location" not in headers
        assert "Wrong username or password." in html and 'name="password"' in html
        assert "Traceback" not in html


@pytest.mark.parametrize("redirect_uri", [
    "http://127.0.0.1/callback/../evil", "http://127.0.0.1:8080/other", "https://127.0.0.1/callback",
    "http://localhost:8080/callback", "http://evil.example/callback", "http://127.0.0.1:80@evil.example/callback",
    "http://127.0.0.1:8080/callback#frag", "http://127.0.0.1:8080/callback?x=1",
])
async def test_an_unregistered_redirect_uri_is_refused_on_a_page_never_redirected_to(
        auth: AuthMesh, redirect_uri: str) -> None:
    query = urlencode({"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": redirect_uri,
                       "code_challenge": pkce.s256(pkce.new_verifier()), "code_challenge_method": "S256"})
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}", allow_redirects=False) as page:
        assert page.status == 400 and "Location" not in page.headers
        assert "is not registered" in await page.text()


async def test_the_registered_loopback_redirect_accepts_any_port(auth: AuthMesh) -> None:
    for redirect in (CLI_REDIRECT, loopback(), "http://127.0.0.1:1/callback"):
        answer = await auth.authorize(redirect_uri=redirect, verifier=pkce.new_verifier())
        assert answer["code"]


async def test_unknown_client_is_refused_on_a_page(auth: AuthMesh) -> None:
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?client_id=nope&response_type=code",
                                allow_redirects=False) as page:
        assert page.status == 400 and "nope" in await page.text()


@pytest.mark.parametrize("params, error", [
    ({}, "invalid_request"),  # a public client without PKCE
    ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": "too-short", "code_challenge_method": "S256"}, "invalid_request"),
    ({"code_challenge": pkce.s256("v" * 43), "code_challenge_method": "S256", "response_type": "token"},
     "unsupported_response_type"),
    ({"code_challenge": pkce.s256("v" * 43), "code_challenge_method": "S256", "scope": "admin"}, "invalid_scope"),
])
async def test_other_request_errors_go_back_to_the_client_with_state(
        auth: AuthMesh, params: dict[str, str], error: str) -> None:
    redirect = loopback()
    query = urlencode({"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": redirect,
                       "state": "keep-me", **params})
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}", allow_redirects=False) as page:
        assert page.status == 302
        location = page.headers["Location"]
    assert location.startswith(redirect + "?")
    answer = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert answer["error"] == error and answer["state"] == "keep-me" and answer["iss"] == auth.issuer


async def test_pkce_mismatch_is_invalid_grant(auth: AuthMesh) -> None:
    redirect = loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=pkce.new_verifier())
    status, body = await exchange(auth, answer["code"], redirect, pkce.new_verifier())
    assert status == 400 and body["error"] == "invalid_grant" and "PKCE" in body["error_description"]


async def test_missing_code_verifier_is_invalid_grant(auth: AuthMesh) -> None:
    redirect = loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=pkce.new_verifier())
    status, body = await exchange(auth, answer["code"], redirect, None)
    assert status == 400 and body["error"] == "invalid_grant"


async def test_a_code_is_single_use_and_replaying_it_revokes_what_it_issued(auth: AuthMesh) -> None:
    verifier, redirect = pkce.new_verifier(), loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=verifier)
    status, first = await exchange(auth, answer["code"], redirect, verifier)
    assert status == 200
    status, body = await exchange(auth, answer["code"], redirect, verifier)
    assert status == 400 and body["error"] == "invalid_grant" and "already used" in body["error_description"]
    # RFC 6749 §4.1.2: the tokens of the first exchange are revoked.
    status, _, info = await auth.post("/oauth2/introspect", {"token": first["access_token"]},
                                      basic("web-app", WEB_SECRET))
    assert status == 200 and info == {"active": False}
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "refresh_token", "client_id": "meshrun-cli",
                                                        "refresh_token": first["refresh_token"]})
    assert status == 400 and body["error"] == "invalid_grant"


async def test_an_expired_code_is_invalid_grant(auth: AuthMesh) -> None:
    clock = auth.server.clock = Clock()
    verifier, redirect = pkce.new_verifier(), loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=verifier)
    clock.advance(61)  # codes live 60 s
    status, body = await exchange(auth, answer["code"], redirect, verifier)
    assert status == 400 and body["error"] == "invalid_grant" and "expired" in body["error_description"]


async def test_the_code_is_bound_to_its_redirect_uri_and_client(auth: AuthMesh) -> None:
    verifier, redirect = pkce.new_verifier(), loopback()
    answer = await auth.authorize(redirect_uri=redirect, verifier=verifier)
    status, body = await exchange(auth, answer["code"], loopback(), verifier)
    assert status == 400 and body["error"] == "invalid_grant"
    answer = await auth.authorize(redirect_uri=redirect, verifier=verifier)
    status, _, body = await auth.post("/oauth2/token", {
        "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": redirect,
        "code_verifier": verifier}, basic("web-app", WEB_SECRET))
    assert status == 400 and body["error"] == "invalid_grant"


async def test_a_confidential_client_needs_pkce_too_by_default(auth: AuthMesh) -> None:
    query = urlencode({"response_type": "code", "client_id": "web-app", "redirect_uri": WEB_REDIRECT, "state": "s"})
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}", allow_redirects=False) as page:
        assert page.status == 302
        answer = {k: v[0] for k, v in parse_qs(urlsplit(page.headers["Location"]).query).items()}
    assert answer["error"] == "invalid_request" and "PKCE is required for client 'web-app'" in \
        answer["error_description"]
    verifier = pkce.new_verifier()
    answer = await auth.authorize(client_id="web-app", redirect_uri=WEB_REDIRECT, verifier=verifier)
    form = {"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": WEB_REDIRECT,
            "code_verifier": verifier}
    status, _, body = await auth.post("/oauth2/token", {**form, "client_id": "web-app"})
    assert status == 401 and body["error"] == "invalid_client"  # refused before the code was looked at
    status, _, body = await auth.post("/oauth2/token", form, basic("web-app", WEB_SECRET))
    assert status == 200, body
    assert pyjwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == "alice"


async def test_a_confidential_client_may_be_let_off_pkce_by_its_settings(start_mesh: StartMesh,
                                                                        tmp_path: object) -> None:
    clients = auth_settings(tmp_path)["clients"]  # type: ignore[arg-type]
    clients[3] = {**clients[3], "require_pkce": False}
    auth = await start_mesh(clients=clients)
    answer = await auth.authorize(client_id="web-app", redirect_uri=WEB_REDIRECT)
    status, _, body = await auth.post("/oauth2/token", {"grant_type": "authorization_code", "code": answer["code"],
                                                        "redirect_uri": WEB_REDIRECT}, basic("web-app", WEB_SECRET))
    assert status == 200, body


async def test_duplicate_parameters_in_the_authorization_request_are_refused(auth: AuthMesh) -> None:
    query = "response_type=code&client_id=meshrun-cli&client_id=web-app"
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}", allow_redirects=False) as page:
        assert page.status == 400 and "more than once" in await page.text()


CONTROL_CHARACTER_URIS = [
    "http://127.0.0.1:5555/call\tback", " http://127.0.0.1:5555/callback", "\x00http://127.0.0.1:5555/callback",
    "http://127.0.0.1:5555/callback\r\nSet-Cookie: x=1", "http://127.0.0.1:5555/callback\n",
    "http://127.0.0.1:5555/call back", "http://127.0.0.1:5555\\@evil.example/callback",
    "http://127.0.0.1:5555/callback\x7f", "http://127.0.0.1:5555/caf\u00e9", "http://127.0.0.1:5555/callback%",
]


@pytest.mark.parametrize("redirect_uri", CONTROL_CHARACTER_URIS, ids=repr)
async def test_a_redirect_uri_with_characters_outside_rfc3986_is_refused_before_matching(
        auth: AuthMesh, redirect_uri: str) -> None:
    """urlsplit would forgive each of these and match the registered loopback URI; the raw string would then be
    the redirect (RFC 9700 §4.1.3)."""
    valid = loopback()
    params = {"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": redirect_uri, "state": "s",
              "code_challenge": pkce.s256(pkce.new_verifier()), "code_challenge_method": "S256"}
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{urlencode(params)}",
                                allow_redirects=False) as page:
        assert page.status == 400 and "Location" not in page.headers
        assert "may not contain" in await page.text()
    # A form posted with the bad URI (a valid one was shown) issues no code either.
    token = csrf_token(await auth.login_page({**params, "redirect_uri": valid}))
    status, headers, html = await auth.post("/oauth2/authorize", {**params, "username": "alice",
                                                                  "password": ALICE_PASSWORD, "csrf_token": token})
    assert status == 400 and "Location" not in headers and "may not contain" in html


@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1:05555/callback", "http://127.0.0.1:0/callback",
                                          "http://127.0.0.1:65536/callback", "http://127.0.0.1:5555/callback/",
                                          "HTTP://127.0.0.1:5555/callback", "http://127.0.0.1:5555/Callback"])
async def test_loopback_matching_is_exact_but_for_a_valid_port(auth: AuthMesh, redirect_uri: str) -> None:
    query = urlencode({"response_type": "code", "client_id": "meshrun-cli", "redirect_uri": redirect_uri,
                       "code_challenge": pkce.s256(pkce.new_verifier()), "code_challenge_method": "S256"})
    async with auth.session.get(f"{auth.issuer}/oauth2/authorize?{query}", allow_redirects=False) as page:
        assert page.status == 400 and "Location" not in page.headers
        assert "is not registered" in await page.text()
