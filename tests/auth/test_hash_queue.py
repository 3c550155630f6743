"""The slow-hash queue of the issuer: bounded, and a check with no failure behind it goes before suspects'."""
from __future__ import annotations

import asyncio

import pytest

from meshrun.auth.hashing import HashQueueFull, SecretChecker, hash_secret

SLOW = hash_secret("right", log2_n=14)  # tens of milliseconds a check: long enough to line up behind


async def test_a_full_queue_refuses_at_once_and_suspects_hold_at_most_half() -> None:
    checker = SecretChecker(workers=1, max_pending=4)
    try:
        suspects = [asyncio.ensure_future(checker.matches(SLOW, "guess", suspect=True)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(HashQueueFull) as full:
            await checker.matches(SLOW, "guess", suspect=True)
        assert full.value.retry_after >= 1
        clean = [asyncio.ensure_future(checker.matches(SLOW, "right")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(HashQueueFull):
            await checker.matches(SLOW, "right")
        assert await asyncio.gather(*suspects, *clean) == [False, False, True, True]
        assert checker.pending == 0 and checker.suspect_pending == 0
    finally:
        checker.close()


async def test_a_clean_check_overtakes_the_suspects_waiting_for_a_worker() -> None:
    checker = SecretChecker(workers=1, max_pending=16)
    finished: list[str] = []

    async def check(name: str, suspect: bool) -> None:
        await checker.matches(SLOW, "x", suspect=suspect)
        finished.append(name)

    try:
        tasks = [asyncio.ensure_future(check(f"suspect-{i}", True)) for i in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(check("real user", False)))
        await asyncio.gather(*tasks)
        assert finished.index("real user") <= 1, finished  # after the guess already in the thread, at most
    finally:
        checker.close()


async def test_a_request_that_goes_away_while_waiting_gives_its_place_back() -> None:
    checker = SecretChecker(workers=1, max_pending=3)
    try:
        running = asyncio.ensure_future(checker.matches(SLOW, "x"))
        waiting = asyncio.ensure_future(checker.matches(SLOW, "x"))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert checker.pending == 1
        assert await checker.matches(SLOW, "right") is True and await running is False
        assert checker.pending == 0
    finally:
        checker.close()
