"""Helpers for end-to-end tests: tokens the way clients get them, polling, HTTP shortcuts."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import aiohttp

from meshrun.auth.login import client_credentials, user_login


async def user_token(issuer: str, username: str = "alice", password: str = "alice-password") -> str:
    return str((await user_login(issuer, username, password))["access_token"])


async def machine_token(issuer: str, scope: str = "users.notify") -> str:
    return str((await client_credentials(issuer, "notification-service", "notification-secret", scope))
               ["access_token"])


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns a truthy value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def post_order(http: aiohttp.ClientSession, base: str, order_id: str, token: str | None,
                     body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    data = kwargs.pop("data", None)
    async with http.post(f"{base}/orders/{order_id}", json=body, data=data, headers=headers) as response:
        return response.status, await response.json()
