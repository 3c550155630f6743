"""Salted slow hashes of client secrets and user passwords (scrypt, in the PHC string format), checked off the loop.

Not a credential store: the issuer's clients and users hold the hashes; this module only makes and checks them.
The checks wait in a bounded queue: past it, `HashQueueFull` says when to come back instead of queueing forever.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import math
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from meshrun.errors import AuthError

# scrypt with N = 2**14, r = 8 (16 MiB, ~50 ms on a laptop core): OWASP's minimum for scrypt is N = 2**17 with
# p = 1 or N = 2**14 with more passes; client secrets are long random strings, so brute force is not the threat.
DEFAULT_LOG2_N = 14
_PHC = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
_MAX_MEMORY = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SecretHash:
    """A parsed `$scrypt$ln=14,r=8,p=1$<salt>$<hash>` string (unpadded standard base64, as PHC strings use)."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> SecretHash:
        """Raises ValueError saying what a valid hash looks like and how to make one."""
        match = _PHC.fullmatch(text)
        if match is None:
            raise ValueError("not an scrypt hash like $scrypt$ln=14,r=8,p=1$<salt>$<hash> "
                             "(make one with `meshrun hash-secret`)")
        log2_n, r, p = (int(match[i]) for i in (1, 2, 3))
        if not 10 <= log2_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * r * (2 ** log2_n) > _MAX_MEMORY:
            raise ValueError(f"scrypt cost ln={log2_n},r={r},p={p} is outside 10<=ln<=20, r<=32, p<=16, 256 MiB")
        salt, digest = _unb64(match[4]), _unb64(match[5])
        if len(salt) < 16 or len(digest) < 32:
            raise ValueError("scrypt hash needs a salt of at least 16 bytes and a digest of at least 32 bytes")
        return cls(log2_n, r, p, salt, digest)

    def __str__(self) -> str:
        return f"$scrypt$ln={self.log2_n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"

    @property
    def cost(self) -> tuple[int, int, int]:
        """(log2 N, r, p): hashes of equal cost take equally long to check."""
        return self.log2_n, self.r, self.p

    def matches(self, secret: str) -> bool:
        """Slow on purpose (tens of ms): call it through `SecretChecker`, never on the event loop."""
        computed = _scrypt(secret, self.salt, self.log2_n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def _scrypt(secret: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2 ** log2_n, r=r, p=p, maxmem=_MAX_MEMORY,
                          dklen=length)


def hash_secret(secret: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = 8, p: int = 1) -> SecretHash:
    """A new salted hash of `secret` (blocking: tens of milliseconds)."""
    salt = os.urandom(16)
    return SecretHash(log2_n, r, p, salt, _scrypt(secret, salt, log2_n, r, p, 32))


@functools.cache
def decoy(cost: tuple[int, int, int] = (DEFAULT_LOG2_N, 8, 1)) -> SecretHash:
    """Checked when a user name is unknown, so a wrong name costs as long as a wrong password: give it the cost
    of the configured users' hashes (the settings refuse users of different costs)."""
    log2_n, r, p = cost
    return hash_secret(base64.b64encode(os.urandom(32)).decode(), log2_n=log2_n, r=r, p=p)


class HashQueueFull(AuthError):
    """More slow hash checks are waiting than the queue holds: answer 503 with `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the password hashing queue is full; retry after {retry_after} s")


class SecretChecker:
    """Runs slow hash checks in a small thread pool of its own: the event loop, which carries other services'
    requests, never waits for scrypt (hashlib releases the GIL while it hashes).

    At most `max_pending` checks run or wait at once; one more raises HashQueueFull at once, so a flood of guesses
    costs everyone a bounded wait instead of an unbounded one. Checks marked `suspect` (a name or address that has
    failed already) may hold at most half of the queue, and a free worker takes the others first: a real user who
    has not failed is not kept waiting behind an attacker's guesses. A check holds its place until its thread is
    done with it, even when the request that asked for it is gone.
    """

    def __init__(self, workers: int | None = None, max_pending: int = 16) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.max_pending = max_pending
        self.max_suspect = max(1, max_pending // 2)
        self.pending = 0
        self.suspect_pending = 0
        self._running = 0
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {False: deque(), True: deque()}
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="meshrun-secret-hash")

    async def matches(self, hashed: SecretHash, secret: str, *, suspect: bool = False) -> bool:
        if self.pending >= self.max_pending or (suspect and self.suspect_pending >= self.max_suspect):
            # Long enough for the queue ahead to drain: pending checks over workers, ~50 ms each at the shipped cost.
            raise HashQueueFull(max(1, math.ceil(self.pending / self.workers * 0.05)))
        self.pending += 1
        self.suspect_pending += suspect
        try:
            await self._turn(suspect)
        except BaseException:
            self._left(suspect)
            raise
        loop = asyncio.get_running_loop()
        job: Future[bool] = self._pool.submit(hashed.matches, secret)

        def done(_: Future[bool]) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, suspect)
            except RuntimeError:  # the loop is closed: nobody counts any more
                pass

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    async def hash(self, secret: str) -> SecretHash:
        """Startup work (a secret from the environment): not bounded, nobody is waiting on the other side."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, hash_secret, secret)

    async def _turn(self, suspect: bool) -> None:
        """Wait for a free worker: at once if one is free and nobody waits, else in line (clean checks first)."""
        if self._running < self.workers and not (self._waiting[False] or self._waiting[True]):
            self._running += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[suspect].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():
                self._waiting[suspect].remove(turn)
            else:  # the worker was handed over just as the request went away: hand it on
                self._running -= 1
                self._hand_over()
            raise

    def _hand_over(self) -> None:
        while self._running < self.workers:
            lane = self._waiting[False] or self._waiting[True]
            if not lane:
                return
            self._running += 1
            lane.popleft().set_result(None)

    def _left(self, suspect: bool) -> None:
        self.pending -= 1
        self.suspect_pending -= suspect

    def _finished(self, suspect: bool) -> None:
        self._left(suspect)
        self._running -= 1
        self._hand_over()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
