"""Salted slow hashes of client secrets and user passwords (scrypt, in the PHC string format), checked off the loop.

Not a credential store: the issuer's clients and users hold the hashes; this module only makes and checks them.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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

    def matches(self, secret: str) -> bool:
        """Slow on purpose (tens of ms): call it through `SecretChecker`, never on the event loop."""
        computed = _scrypt(secret, self.salt, self.log2_n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def _scrypt(secret: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2 ** log2_n, r=r, p=p, maxmem=_MAX_MEMORY,
                          dklen=length)


def hash_secret(secret: str, *, log2_n: int = DEFAULT_LOG2_N) -> SecretHash:
    """A new salted hash of `secret` (blocking: tens of milliseconds)."""
    salt = os.urandom(16)
    return SecretHash(log2_n, 8, 1, salt, _scrypt(secret, salt, log2_n, 8, 1, 32))


@functools.cache
def decoy() -> SecretHash:
    """Checked when a user name is unknown, so a wrong name costs as long as a wrong password."""
    return hash_secret(base64.b64encode(os.urandom(32)).decode())


class SecretChecker:
    """Runs slow hash checks in a small thread pool of its own: the event loop, which carries other services'
    requests, never waits for scrypt (hashlib releases the GIL while it hashes)."""

    def __init__(self, workers: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="meshrun-secret-hash")

    async def matches(self, hashed: SecretHash, secret: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, hashed.matches, secret)

    async def hash(self, secret: str) -> SecretHash:
        return await asyncio.get_running_loop().run_in_executor(self._pool, hash_secret, secret)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
