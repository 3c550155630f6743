"""Brute force over real HTTP: failed logins and client authentications past a few are answered 429 with
Retry-After, never at the real user's expense from another address; a full hash queue answers 503."""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshrun.auth.hashing import hash_secret
from meshrun.auth.issuer.client_address import client_address
from meshrun.auth.issuer.failures import MemoryFailureStore
from tests.auth.conftest import (
    ALICE_PASSWORD,
    NOTIFY_SECRET,
    AuthMesh,
    Clock,
    StartMesh,
    authorization_params,
    basic,
    csrf_token,
    session_from,
)


async def test_wrong_passwords_past_the_free_ones_are_answered_429_with_retry_after(auth: AuthMesh) -> None:
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    for _ in range(5):
        status, _, page = await auth.sign_in(params, "alice", "wrong", token=token)
        assert status == 200 and "Wrong username or password." in page
    status, headers, page = await auth.sign_in(params, "alice", "wrong", token=token)
    assert status == 429 and int(headers["Retry-After"]) >= 1 and "Location" not in headers
    assert "Too many failed sign-ins" in page and "Try again in" in page and 'name="password"' in page
    status, _, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=token)
    assert status == 429, "while it must wait, not even the right password is checked"


async def test_150_concurrent_guesses_reach_the_hash_five_times_and_the_real_user_elsewhere_signs_in(
        auth: AuthMesh) -> None:
    attacker = session_from("127.0.0.2")
    try:
        params = authorization_params()
        token = csrf_token(await auth.login_page(params, attacker))
        answers = await asyncio.gather(*(auth.sign_in(params, "alice", f"guess-{i}", session=attacker, token=token)
                                         for i in range(150)))
        statuses = Counter(status for status, _, _ in answers)
        assert statuses[200] <= 5 and statuses[429] >= 145, statuses
        assert all("Retry-After" in headers for status, headers, _ in answers if status == 429)
    finally:
        await attacker.close()
    status, headers, _ = await auth.sign_in(authorization_params(), "alice", ALICE_PASSWORD)  # from 127.0.0.1
    assert status == 302 and "code=" in headers["Location"]


async def test_delays_double_with_each_failure_past_the_free_ones(auth: AuthMesh) -> None:
    clock = auth.server.clock = Clock()
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    for _ in range(5):
        assert (await auth.sign_in(params, "bob", "wrong", token=token))[0] == 200
    waits = []
    for _ in range(4):
        status, headers, _ = await auth.sign_in(params, "bob", "wrong", token=token)
        assert status == 429
        waits.append(int(headers["Retry-After"]))
        clock.advance(waits[-1])
        status, _, page = await auth.sign_in(params, "bob", "wrong", token=token)  # one more real try: it fails
        assert status == 200 and "wait" in page
    assert waits == [1, 2, 4, 8]
    clock.advance(3600 + 1)  # forget_after without a failure: bob starts afresh
    assert (await auth.sign_in(params, "bob", "wrong", token=token))[0] == 200


async def test_guesses_spread_over_addresses_hold_back_only_addresses_that_failed_for_the_name(
        start_mesh: StartMesh) -> None:
    auth = await start_mesh(trusted_proxies=["127.0.0.1"], throttle={"account_free_failures": 10})
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))

    def sent_from(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    for i in range(10):  # a botnet: one guess per address
        status, _, _ = await auth.sign_in(params, "alice", "wrong", token=token, headers=sent_from(f"203.0.113.{i}"))
        assert status == 200
    status, headers, page = await auth.sign_in(params, "alice", "wrong", token=token,
                                               headers=sent_from("203.0.113.3"))
    assert status == 429 and "many addresses" in page, "an address that failed for alice waits"
    status, _, _ = await auth.sign_in(params, "alice", ALICE_PASSWORD, token=token,
                                      headers=sent_from("198.51.100.7"))
    assert status == 302, "the real user, who has not failed, is not locked out"


async def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(auth: AuthMesh) -> None:
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    for i in range(5):
        await auth.sign_in(params, "alice", "wrong", token=token, headers={"X-Forwarded-For": f"203.0.113.{i}"})
    status, _, _ = await auth.sign_in(params, "alice", "wrong", token=token,
                                      headers={"X-Forwarded-For": "203.0.113.99"})
    assert status == 429, "a made-up X-Forwarded-For does not buy new free failures"


def test_the_client_address_behind_trusted_proxies_is_the_last_untrusted_hop() -> None:
    import ipaddress

    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("10.0.0.5", "1.1.1.1, 203.0.113.9, 10.0.0.7", proxies) == "203.0.113.9"
    assert client_address("198.51.100.1", "203.0.113.9", proxies) == "198.51.100.1"
    assert client_address("10.0.0.5", None, proxies) == "10.0.0.5"


async def test_failed_client_authentications_are_throttled_but_a_client_with_verified_credentials_is_not(
        auth: AuthMesh) -> None:
    neighbour = session_from("127.0.0.2")  # the attacker shares the real client's address
    try:
        async def token_request(secret: str) -> tuple[int, Any, Any]:
            async with neighbour.post(auth.issuer + "/oauth2/token", data={"grant_type": "client_credentials"},
                                      headers={"Authorization": basic("notification-service", secret)}) as r:
                return r.status, r.headers, await r.json()

        assert (await token_request(NOTIFY_SECRET))[0] == 200  # the real client, verified once
        for _ in range(5):
            status, _, body = await token_request("guess")
            assert status == 401 and body["error"] == "invalid_client"
        status, headers, body = await token_request("guess")
        assert status == 429 and int(headers["Retry-After"]) >= 1 and headers["Cache-Control"] == "no-store"
        assert body["error"] == "temporarily_unavailable" and "retry after" in body["error_description"]
        status, _, _ = await token_request(NOTIFY_SECRET)
        assert status == 200, "credentials verified before cost no hash and are not held back"
    finally:
        await neighbour.close()


async def test_a_full_hash_queue_answers_503_with_retry_after_instead_of_queueing(start_mesh: StartMesh,
                                                                                 tmp_path: Path) -> None:
    slow = str(hash_secret(ALICE_PASSWORD, log2_n=15))  # ~0.1 s a check: the queue of one stays busy
    auth = await start_mesh(users=[{"username": "alice", "password_hash": slow}], trusted_proxies=["127.0.0.1"],
                            throttle={"hash_queue": 1})
    params = authorization_params()
    token = csrf_token(await auth.login_page(params))
    answers = await asyncio.gather(*(auth.sign_in(params, f"user-{i}", "guess", token=token,
                                                  headers={"X-Forwarded-For": f"203.0.113.{i}"})
                                     for i in range(8)))
    busy = [(headers, page) for status, headers, page in answers if status == 503]
    assert busy and all(int(headers["Retry-After"]) >= 1 and "The server is busy" in page for headers, page in busy)
    assert {status for status, _, _ in answers} <= {200, 503}


async def test_a_flood_of_made_up_names_keeps_the_failure_store_bounded() -> None:
    store = MemoryFailureStore(forget_after=3600.0, max_keys=100)
    await store.add(["alice@attacker"], 0.0)
    for i in range(1000):
        await store.add([f"name-{i}@elsewhere"], 1.0 + i)
        await store.add(["alice@attacker"], 1.0 + i)  # the key under attack keeps failing: it is kept
    assert len(store) <= 100
    (alice,) = await store.get(["alice@attacker"], 1000.0)
    assert alice is not None and alice.count == 1001


@pytest.mark.parametrize("throttle, problem", [
    ({"free_failures": 0}, "throttle.free_failures: must be a positive number"),
    ({"first_delay": 10.0, "max_delay": 5.0}, "throttle.first_delay: is longer than max_delay"),
    ({"forget_after": 60.0}, "throttle.forget_after: is shorter than max_delay"),
    ({"lockout": True}, "throttle.lockout: unknown key"),
])
def test_throttle_settings_name_their_problems(throttle: dict[str, Any], problem: str) -> None:
    from meshrun.auth.issuer.settings import parse_settings
    from meshrun.errors import SettingsError

    with pytest.raises(SettingsError) as failure:
        parse_settings({"throttle": throttle}, "services.auth.settings")
    assert any(p.startswith(f"services.auth.settings.{problem}") for p in failure.value.problems), \
        failure.value.problems
