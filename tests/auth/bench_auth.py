"""Measure what auth costs: token verification per request (cached and not) and token endpoint throughput.

    .venv/bin/python -m tests.auth.bench_auth            # prints one line per measurement

Not collected by pytest (test_performance.py holds the assertions); the numbers in docs/auth.md come from here.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import make_mocked_request

from meshrun.auth.guard import BearerGuard
from meshrun.auth.hashing import hash_secret
from meshrun.auth.keys import SigningKey, generate_key
from meshrun.auth.verify import keys_from_jwks

ISSUER = "http://127.0.0.1:9000"


def token_for(key: SigningKey, jti: str = "j") -> str:
    now = int(time.time())
    return key.sign({"typ": "at+jwt"}, {"iss": ISSUER, "sub": "alice", "aud": "orders", "exp": now + 300,
                                        "iat": now, "jti": jti, "client_id": "meshrun-cli",
                                        "scope": "orders.write orders.read"})


def guard_with(key: SigningKey) -> BearerGuard:
    guard = BearerGuard(ISSUER, "orders", session=lambda: None)  # type: ignore[arg-type,return-value]
    guard.verifier.set_keys(keys_from_jwks({"keys": [key.public_jwk()]})[0])
    return guard


def per_call(work: Callable[[], Any], seconds: float = 0.5) -> float:
    """Mean seconds per call of `work`, over at least `seconds` of repeated calls."""
    work()
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            work()
        calls += 1000
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / calls


async def per_await(work: Callable[[], Awaitable[Any]], calls: int = 100_000) -> float:
    await work()
    started = time.perf_counter()
    for _ in range(calls):
        await work()
    return (time.perf_counter() - started) / calls


def verification_costs() -> dict[str, float]:
    """Seconds per verification: from the cache, and a full check (signature included) per algorithm."""
    costs: dict[str, float] = {}
    for alg in ("RS256", "ES256"):
        key = generate_key(alg, time.time())
        guard, token = guard_with(key), token_for(key)
        def cached(g: BearerGuard = guard, t: str = token) -> None:
            g.verify(t, "orders.write")

        costs[f"verify cached ({alg} token)"] = per_call(cached)

        def uncached(g: BearerGuard = guard, t: str = token) -> None:
            g.verifier.forget()
            g.verify(t, "orders.write")

        costs[f"verify uncached ({alg})"] = per_call(uncached)
    key = generate_key("RS256", time.time())
    guard, token = guard_with(key), token_for(key)
    request = make_mocked_request("POST", "/orders", headers={"Authorization": f"Bearer {token}"})
    costs["authorize cached (aiohttp request, header to claims)"] = asyncio.run(
        per_await(lambda: guard.authorize(request, "orders.write")))
    return costs


async def token_endpoint_throughput(alg: str, requests: int = 3000, concurrency: int = 32) -> float:
    """client_credentials tokens per second from an auth service running in its own process."""
    from tests.auth.conftest import NOTIFY_SECRET, basic, free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "services.toml"
        secret_hash = hash_secret(NOTIFY_SECRET)  # the shipped cost (scrypt N=2**14): hashed once, then cached
        config.write_text(f"""
[mesh]
issuer = "http://127.0.0.1:{port}"
log_level = "warning"
[services.auth]
module = "meshrun.services.auth"
port = {port}
[services.auth.settings]
keys_dir = "keys"
signing_alg = "{alg}"
[[services.auth.settings.clients]]
client_id = "notification-service"
secret_hash = "{secret_hash}"
grant_types = ["client_credentials"]
scopes = ["users.notify"]
audiences = ["users"]
""")
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from meshrun.cli import main; main()", "up", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            headers = {"Authorization": basic("notification-service", NOTIFY_SECRET)}
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(400):
                    try:
                        async with session.get(url + "/ready") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)
                form = {"grant_type": "client_credentials"}

                async def one() -> None:
                    async with session.post(url + "/oauth2/token", data=form, headers=headers) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                await asyncio.gather(*(one() for _ in range(100)))  # warm up (and fill the credentials cache)
                remaining = requests

                async def worker() -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        await one()

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return requests / (time.perf_counter() - started)
        finally:
            server.terminate()
            await server.wait()


def main() -> None:
    os.environ.setdefault("MESHRUN_UVLOOP", "1")
    for name, seconds in verification_costs().items():
        print(f"{name:<58} {seconds * 1e6:8.2f} µs")
    for alg in ("RS256", "ES256"):
        rate = asyncio.run(token_endpoint_throughput(alg))
        print(f"{'token endpoint, client_credentials (' + alg + ')':<58} {rate:8.0f} tokens/s")


if __name__ == "__main__":
    main()
