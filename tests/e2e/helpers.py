"""Helpers for end-to-end tests: tokens the way clients get them, polling, HTTP shortcuts."""
from __future__ import annotations

from typing import Any

import aiohttp

from meshrun.auth.login import client_credentials, user_login
from tests.polling import eventually

__all__ = ["eventually", "get_json", "machine_token", "post_order", "user_token"]


async def user_token(issuer: str, username: str = "alice", password: str = "alice-password") -> str:
    return str((await user_login(issuer, username, password))["access_token"])


async def machine_token(issuer: str, scope: str = "users.notify") -> str:
    return str((await client_credentials(issuer, "notification-service", "notification-secret", scope))
               ["access_token"])


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
