"""Login CSRF over real HTTP: the form's token is bound to an HttpOnly, SameSite cookie; a submission without a
valid token, or from another site, shows the form again and never issues a code."""
from __future__ import annotations

import aiohttp

from tests.auth.conftest import (
    ALICE_PASSWORD,
    AuthMesh,
    authorization_params,
    cookie_jar,
    csrf_token,
)

REFUSED = "sign-in page, so nothing was checked"


async def test_the_login_form_sets_an_httponly_samesite_cookie_and_carries_a_token_bound_to_it(
        auth: AuthMesh) -> None:
    params = authorization_params()
    async with aiohttp.ClientSession(cookie_jar=cookie_jar()) as browser:
        async with browser.get(f"{auth.issuer}/oauth2/authorize", params=params) as page:
            set_cookie = page.headers["Set-Cookie"]
            token = csrf_token(await page.text())
        assert set_cookie.startswith("meshrun_csrf=") and "HttpOnly" in set_cookie
        assert "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
        status, headers, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, session=browser, token=token)
        assert status == 302 and "code=" in headers["Location"]
        # A second tab keeps the cookie, so both forms stay valid.
        assert csrf_token(await auth.login_page(params, browser)) == token


async def test_a_submission_without_the_token_shows_the_form_again_and_issues_no_code(auth: AuthMesh) -> None:
    params = authorization_params()
    await auth.login_page(params)  # the cookie is there, the token is not sent
    async with auth.session.post(f"{auth.issuer}/oauth2/authorize", allow_redirects=False,
                                 data={**params, "username": "alice", "password": ALICE_PASSWORD}) as response:
        page = await response.text()
        assert response.status == 403 and "Location" not in response.headers
    assert REFUSED in page and 'name="password"' in page
    status, headers, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=csrf_token(page))
    assert status == 302, "the form shown again carries a valid token"


async def test_a_token_of_another_browser_is_refused(auth: AuthMesh) -> None:
    params = authorization_params()
    async with aiohttp.ClientSession(cookie_jar=cookie_jar()) as attacker:
        planted = csrf_token(await auth.login_page(params, attacker))  # valid, but for the attacker's cookie
    await auth.login_page(params)  # the victim's browser has a cookie of its own
    status, headers, page = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=planted)
    assert status == 403 and "Location" not in headers and REFUSED in page
    status, _, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, token="made-up")
    assert status == 403


async def test_a_submission_with_no_earlier_visit_has_no_cookie_and_is_refused(auth: AuthMesh) -> None:
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    async with aiohttp.ClientSession() as stranger:  # no cookie at all: the form did not come from here
        async with stranger.post(f"{auth.issuer}/oauth2/authorize", allow_redirects=False,
                                 data={**params, "username": "alice", "password": ALICE_PASSWORD,
                                       "csrf_token": token}) as response:
            assert response.status == 403 and "Location" not in response.headers


async def test_a_cross_site_submission_is_refused_even_with_a_valid_token(auth: AuthMesh) -> None:
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        status, answer, page = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=token, headers=headers)
        assert status == 403 and "Location" not in answer and REFUSED in page, headers
    status, answer, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=token,
                                           headers={"Origin": auth.issuer, "Sec-Fetch-Site": "same-origin"})
    assert status == 302, "the issuer's own page, as a browser sends it"


async def test_refused_submissions_check_no_password_and_count_no_failure(auth: AuthMesh) -> None:
    params = authorization_params()
    await auth.login_page(params)
    for _ in range(20):
        status, _, _ = await auth.sign_in(params, "alice", "wrong", token="forged")
        assert status == 403
    status, _, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD)
    assert status == 302, "twenty refused forms did not throttle alice"
