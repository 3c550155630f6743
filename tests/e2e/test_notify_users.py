"""The User service's POST /notify-users over real HTTP with real tokens: a list recorded once per invoice id, checked
whole before any of it is recorded, bounded, and only for a machine token with users.notify."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from meshrun.auth.login import user_login
from meshrun.runtime import Mesh
from meshrun.services.users import MAX_NOTIFICATIONS_PER_REQUEST
from tests.conftest import make_config, pipeline_data
from tests.e2e.helpers import get_json, machine_token


def note(i: int | str, **overrides: Any) -> dict[str, Any]:
    return {"invoice_id": f"INV-{i}", "order_id": f"o-{i}", "user": "alice", "total": 1250, "currency": "EUR",
            "trace_id": f"{i:0>32}", **overrides}


class Users:
    def __init__(self, http: aiohttp.ClientSession, ports: Any, token: str) -> None:
        self.http, self.token = http, token
        self.base = f"http://127.0.0.1:{ports['users']}"
        self.issuer = f"http://127.0.0.1:{ports['auth']}"

    async def post(self, body: Any = None, *, path: str = "/notify-users", token: str | None = "machine",
                   data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'machine' else token}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.post(self.base + path, json=body if data is None else None, data=data,
                                  headers=headers) as response:
            return response.status, await response.json()

    async def stats(self) -> dict[str, Any]:
        return await get_json(self.http, f"{self.base}/notifications/stats")  # type: ignore[no-any-return]

    async def listed(self) -> list[dict[str, Any]]:
        return (await get_json(self.http, f"{self.base}/notifications"))["notifications"]  # type: ignore[no-any-return]


@pytest.fixture
async def users(tmp_path, ports) -> AsyncIterator[Users]:
    """The auth and users services of the shipped services.toml; the CLI client may also get tokens for `users`
    (its users.notify-less tokens are what a person could present there)."""
    data = pipeline_data(tmp_path, ports)
    [cli] = [c for c in data["services"]["auth"]["settings"]["clients"] if c["client_id"] == "meshrun-cli"]
    cli["audiences"] = ["orders", "users"]
    mesh = Mesh(make_config(data), ["auth", "users"])
    await mesh.start()
    try:
        await mesh.wait_ready(15)
        async with aiohttp.ClientSession() as http:
            yield Users(http, ports, await machine_token(f"http://127.0.0.1:{ports['auth']}"))
    finally:
        await mesh.stop()


async def test_a_list_is_recorded_once_and_posting_it_again_records_nothing(users: Users):
    notes = [note(i) for i in range(3)]
    status, answer = await users.post({"notifications": notes})
    assert status == 200, answer
    assert answer == {"notified": 3, "duplicates": 0,
                      "results": [{"status": "notified", "invoice_id": f"INV-{i}"} for i in range(3)]}
    listed = await users.listed()
    assert [(n["invoice_id"], n["order_id"], n["user"], n["total"], n["currency"], n["trace_id"], n["notified_by"])
            for n in listed] == [(n["invoice_id"], n["order_id"], "alice", 1250, "EUR", n["trace_id"],
                                  "notification-service") for n in notes]
    assert (await users.stats())["notifications"] == 3

    status, again = await users.post({"notifications": notes})
    assert status == 200, again
    assert again == {"notified": 0, "duplicates": 3,
                     "results": [{"status": "duplicate", "invoice_id": f"INV-{i}"} for i in range(3)]}
    stats = await users.stats()
    assert stats["notifications"] == 3 and stats["orders"] == 3 and stats["duplicates_absorbed"] == 3
    assert stats["orders_notified_more_than_once"] == 0
    assert len(await users.listed()) == 3


async def test_a_duplicate_inside_one_list_is_reported_as_a_duplicate(users: Users):
    status, answer = await users.post({"notifications": [note("a"), note("b"), note("a")]})
    assert status == 200, answer
    assert answer["notified"] == 2 and answer["duplicates"] == 1
    assert [r["status"] for r in answer["results"]] == ["notified", "notified", "duplicate"]
    assert [r["invoice_id"] for r in answer["results"]] == ["INV-a", "INV-b", "INV-a"]
    stats = await users.stats()
    assert stats["notifications"] == 2 and stats["orders_notified_more_than_once"] == 0


async def test_one_invoice_id_is_one_notification_whichever_endpoint_carries_it(users: Users):
    # What Notification relies on when it falls back from one endpoint to the other, or retries on the other.
    status, _ = await users.post(note("single"), path="/notify-user", headers={"Idempotency-Key": "INV-single"})
    assert status == 201
    status, answer = await users.post({"notifications": [note("single"), note("listed")]})
    assert status == 200 and [r["status"] for r in answer["results"]] == ["duplicate", "notified"]
    status, answer = await users.post(note("listed"), path="/notify-user", headers={"Idempotency-Key": "INV-listed"})
    assert status == 200 and answer == {"status": "duplicate", "invoice_id": "INV-listed"}
    stats = await users.stats()
    assert stats["notifications"] == 2 and stats["duplicates_absorbed"] == 2


def _with_second(**changes: Any) -> dict[str, Any]:
    """Three notifications, the second one changed (a None value removes the field)."""
    second = {k: v for k, v in {**note(1), **changes}.items() if v is not None}
    return {"notifications": [note(0), second, note(2)]}


@pytest.mark.parametrize("body, field", [
    (_with_second(user=None), "notifications[1].user"),
    (_with_second(user="al ice"), "notifications[1].user"),
    (_with_second(invoice_id=""), "notifications[1].invoice_id"),
    (_with_second(total="1250"), "notifications[1].total"),
    (_with_second(total=True), "notifications[1].total"),
    (_with_second(coupon="FREE"), "notifications[1].coupon"),
    ({"notifications": [note(0), "INV-1", note(2)]}, "notifications[1]"),
    ({"notifications": [note(0), note(1), note(2), {"order_id": "o-3", "user": "alice"}]},
     "notifications[3].invoice_id"),
    ({"notifications": []}, "notifications"),
    ({"notifications": [note(i) for i in range(MAX_NOTIFICATIONS_PER_REQUEST + 1)]}, "notifications"),
    ({"notifications": note(0)}, "notifications"),
    ({}, "notifications"),
    ({"notifications": [note(0)], "extra": 1}, "extra"),
    ([note(0)], "body"),
], ids=["missing user", "bad user", "empty invoice id", "total as text", "total as bool", "unknown field",
        "not an object", "last one invalid", "empty list", "over 500", "not a list", "no list", "unknown key",
        "bare list"])
async def test_a_list_with_anything_wrong_is_refused_whole_and_records_nothing(users: Users, body, field):
    status, answer = await users.post(body)
    assert status == 400, answer
    assert answer["error"] == "invalid_notification" and answer["field"] == field
    assert answer["message"].startswith(f"{field}: ")
    assert (await users.stats())["notifications"] == 0 and await users.listed() == []


async def test_a_body_that_is_not_json_is_refused(users: Users):
    status, answer = await users.post(data=b'{"notifications": [')
    assert status == 400 and answer["error"] == "invalid_notification" and answer["field"] == "body"


async def test_a_full_list_of_500_is_taken(users: Users):
    notes = [note(i) for i in range(MAX_NOTIFICATIONS_PER_REQUEST)]
    status, answer = await users.post({"notifications": notes})
    assert status == 200, answer
    assert answer["notified"] == 500 and answer["duplicates"] == 0 and len(answer["results"]) == 500
    assert (await users.stats())["notifications"] == 500


async def test_only_a_token_with_users_notify_for_the_users_audience_may_post_a_list(users: Users):
    body = {"notifications": [note(0)]}
    status, answer = await users.post(body, token=None)
    assert status == 401 and answer["error"] == "invalid_token"

    # alice, signed in through the CLI client for the users audience: a valid token here, without users.notify.
    alice = (await user_login(users.issuer, "alice", "alice-password", resources=("users",)))["access_token"]
    status, answer = await users.post(body, token=alice)
    assert status == 403, answer
    assert answer["error"] == "insufficient_scope" and answer["scope"] == "users.notify"

    # A token of hers for the orders audience only is not a token of this service at all.
    alice_orders = (await user_login(users.issuer, "alice", "alice-password", resources=("orders",))
                    )["access_token"]
    status, answer = await users.post(body, token=alice_orders)
    assert status == 401 and answer["error"] == "invalid_token"

    assert (await users.stats())["notifications"] == 0
