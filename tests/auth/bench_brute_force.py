"""Measure what a brute-force attack costs a real user: the latency of real sign-ins while wrong guesses arrive at a
steady rate, against an auth service in its own process with passwords hashed at the shipped cost.

    .venv/bin/python -m tests.auth.bench_brute_force                 # 200 guesses/s, 15 s per scenario
    .venv/bin/python -m tests.auth.bench_brute_force --rate 200 --seconds 30

Not collected by pytest: it prints figures, it asserts nothing. The real user signs in from 127.0.0.1 (GET the
form, POST it: the whole sign-in, as timed below); the attacker sends from 127.0.0.2, a trusted proxy whose
X-Forwarded-For plays the many addresses of a botnet. The numbers in docs/auth.md come from here.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from meshrun.auth.hashing import hash_secret
from tests.auth.conftest import ALICE_PASSWORD, authorization_params, cookie_jar, csrf_token
from tests.conftest import free_port

ATTACKER_ADDRESS = "127.0.0.2"


@dataclass
class Scenario:
    name: str
    guess: Callable[[int], tuple[str, str | None]]  # guess number -> (user name, X-Forwarded-For or None)
    throttle: dict[str, int] = field(default_factory=dict)


SCENARIOS = [
    Scenario("no attack", lambda i: ("", None)),
    Scenario("guesses for alice from one address", lambda i: ("alice", None)),
    Scenario("guesses for random names from one address", lambda i: (f"user-{i}", None)),
    Scenario("guesses for alice from 20 addresses", lambda i: ("alice", f"203.0.113.{i % 20}")),
    Scenario("guesses for alice, each from a new address", lambda i: ("alice", f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                                                                               f"{i & 255}")),
    Scenario("guesses for alice from one address, throttle off", lambda i: ("alice", None),
             {"free_failures": 10**9, "address_free_failures": 10**9, "account_free_failures": 10**9}),
]


def config_text(port: int, throttle: dict[str, int]) -> str:
    password_hash = hash_secret(ALICE_PASSWORD)  # the shipped cost, scrypt N=2**14
    table = "".join(f"{k} = {v}\n" for k, v in throttle.items())
    return f"""
[mesh]
issuer = "http://127.0.0.1:{port}"
log_level = "error"
[services.auth]
module = "meshrun.services.auth"
port = {port}
[services.auth.settings]
keys_dir = "keys"
trusted_proxies = ["{ATTACKER_ADDRESS}"]
[services.auth.settings.throttle]
{table}
[[services.auth.settings.users]]
username = "alice"
password_hash = "{password_hash}"
[[services.auth.settings.clients]]
client_id = "meshrun-cli"
grant_types = ["authorization_code"]
scopes = ["orders.write"]
audiences = ["orders"]
redirect_uris = ["http://127.0.0.1/callback"]
"""


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(600):
        try:
            async with session.get(url + "/ready") as ready:
                if ready.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"the auth service at {url} never became ready")


async def sign_in(session: aiohttp.ClientSession, issuer: str, username: str, password: str,
                  headers: dict[str, str], form: tuple[dict[str, str], str] | None = None) -> int:
    """GET the form (unless `form` holds one already loaded) and POST it; the POST's status."""
    if form is None:
        params = authorization_params()
        async with session.get(f"{issuer}/oauth2/authorize?{urlencode(params)}") as page:
            token = csrf_token(await page.text())
    else:
        params, token = form
    data = {**params, "username": username, "password": password, "csrf_token": token}
    async with session.post(f"{issuer}/oauth2/authorize", data=data, headers=headers,
                            allow_redirects=False) as response:
        await response.read()
        return response.status


async def run(scenario: Scenario, rate: float, seconds: float, every: float) -> dict[str, object]:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "services.toml"
        config.write_text(config_text(port, scenario.throttle))
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from meshrun.cli import main; main()", "up", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "MESHRUN_UVLOOP": os.environ.get("MESHRUN_UVLOOP", "1")})
        attacker = aiohttp.ClientSession(cookie_jar=cookie_jar(), connector=aiohttp.TCPConnector(
            limit=0, local_addr=(ATTACKER_ADDRESS, 0)))
        user = aiohttp.ClientSession(cookie_jar=cookie_jar())
        try:
            await wait_ready(user, issuer)
            await sign_in(user, issuer, "alice", ALICE_PASSWORD, {})  # warm up
            params = authorization_params()
            async with attacker.get(f"{issuer}/oauth2/authorize?{urlencode(params)}") as page:
                form = (params, csrf_token(await page.text()))
            guesses: Counter[int] = Counter()
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()

            async def one_guess(i: int) -> None:
                name, forwarded = scenario.guess(i)
                headers = {"X-Forwarded-For": forwarded} if forwarded else {}
                try:
                    guesses[await sign_in(attacker, issuer, name, f"guess-{i}", headers, form)] += 1
                except aiohttp.ClientError:
                    guesses[0] += 1

            async def attack() -> None:
                if not scenario.guess(0)[0]:
                    return
                for i in itertools.count():
                    due = started + i / rate
                    if due > started + seconds:
                        return
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    task = asyncio.create_task(one_guess(i))  # open loop: the next guess does not wait
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            latencies: list[float] = []
            outcomes: Counter[int] = Counter()

            async def real_user() -> None:
                await asyncio.sleep(min(1.0, seconds / 10))  # the attack is under way
                while time.monotonic() < started + seconds:
                    began = time.perf_counter()
                    outcomes[await sign_in(user, issuer, "alice", ALICE_PASSWORD, {})] += 1
                    latencies.append(time.perf_counter() - began)
                    await asyncio.sleep(max(0.0, every - (time.perf_counter() - began)))

            await asyncio.gather(attack(), real_user())
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await attacker.close()
            await user.close()
            server.terminate()
            await server.wait()
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"scenario": scenario.name, "logins": len(latencies), "ok": outcomes[302],
            "p50": statistics.median(ordered) * 1000, "p95": pct(0.95), "p99": pct(0.99), "max": ordered[-1] * 1000,
            "refused": {s: n for s, n in outcomes.items() if s != 302}, "guesses": dict(sorted(guesses.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="wrong guesses per second (default 200)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per scenario (default 15)")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between the real user's sign-ins")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {args.rate:.0f} guesses/s, "
          f"{args.seconds:.0f} s per scenario; real sign-ins (GET + POST) every {args.every} s")
    print(f"{'scenario':<52}{'logins':>7}{'ok':>5}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}  "
          "real user refused / guesses answered, by status")
    for scenario in SCENARIOS:
        r = asyncio.run(run(scenario, args.rate, args.seconds, args.every))
        print(f"{r['scenario']!s:<52}{r['logins']:>7}{r['ok']:>5}{r['p50']:>8.0f}{r['p95']:>8.0f}{r['p99']:>8.0f}"
              f"{r['max']:>8.0f}  {r['refused'] or '-'} / {r['guesses'] or '-'}", flush=True)


if __name__ == "__main__":
    main()
