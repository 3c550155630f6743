"""Throttling failed logins and client authentications: a few failures are free, then each costs a growing wait,
answered 429 with Retry-After before any slow hash is spent on the attempt.

Three counts per attempt: the name (user name or client id) from this address, this address whatever the name,
and the name from every address. The last one only holds back addresses that failed for the name themselves, so
an attacker elsewhere can slow his own guesses down but never lock the real user out. Policy only: the counts
live in a `FailureStore`, the HTTP answer is the service's.
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from meshrun.auth.issuer.failures import Failures, FailureStore
from meshrun.auth.issuer.settings import ThrottleSettings
from meshrun.errors import AuthError

log = structlog.get_logger("meshrun.auth.throttle")


class Throttled(AuthError):
    """Too many failures: the attempt is refused unchecked; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int, reason: str) -> None:
        self.retry_after = retry_after
        self.reason = reason
        super().__init__(f"{reason}; try again in {retry_after} s")


def address_key(address: str) -> str:
    """The unit an address is counted in: one IPv4 address, or an IPv6 /64 (what one customer usually gets)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _digest(name: str) -> str:
    # Fixed-size keys, whatever was typed in the user name field.
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Keys:
    pair: str
    address: str
    name: str

    def all(self) -> tuple[str, str, str]:
        return self.pair, self.address, self.name


class Attempt:
    """One admitted attempt; report how it went exactly once: `failed`, `succeeded` or `abandoned`."""

    def __init__(self, throttle: Throttle, keys: _Keys, name: str, address: str, suspect: bool) -> None:
        self._throttle = throttle
        self._keys = keys
        self.name = name
        self.address = address
        self.suspect = suspect  # this name or address has failed before (or is being checked): it waits its turn
        self._open = True

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._throttle.release(self._keys.pair)

    async def failed(self) -> int:
        """Count the failure; the seconds the next attempt of this name from this address must wait (0: none)."""
        self._close()
        return await self._throttle.record_failure(self._keys, self.name, self.address)

    async def succeeded(self) -> None:
        """The secret was right: this name from this address starts afresh (the other counts stay)."""
        self._close()
        await self._throttle.store.clear(self._keys.pair)

    def abandoned(self) -> None:
        """Nothing was checked (the hash queue was full): the attempt counts for nothing."""
        self._close()


class Throttle:
    """Decides whether an attempt may go on to the slow check, and counts how it went. `kind` keeps logins and
    client authentications apart in a shared store."""

    def __init__(self, store: FailureStore, settings: ThrottleSettings, kind: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.kind = kind
        self.clock = clock
        # Attempts of one name from one address being checked right now: 150 guesses sent at once must not all
        # reach the hash before the first failure is counted. Per process, as the checks themselves are.
        self._checking: Counter[str] = Counter()

    def _keys(self, name: str, address: str) -> _Keys:
        where, who = address_key(address), _digest(name)
        return _Keys(f"{self.kind}:pair:{who}:{where}", f"{self.kind}:address:{where}", f"{self.kind}:name:{who}")

    def delay(self, failures_past_free: int) -> float:
        s = self.settings
        return min(s.first_delay * 2.0 ** min(failures_past_free, 40), s.max_delay)

    def _wait(self, failures: Failures | None, free: int, now: float) -> float:
        if failures is None or failures.count < free:
            return 0.0
        return max(0.0, failures.last_at + self.delay(failures.count - free) - now)

    async def admit(self, name: str, address: str) -> Attempt:
        """An Attempt to report back on, or Throttled (nothing counted: refused attempts test no secret)."""
        s, now, keys = self.settings, self.clock(), self._keys(name, address)
        pair, by_address, by_name = await self.store.get(keys.all(), now)
        checking = self._checking[keys.pair]
        waits = [(self._wait(pair, s.free_failures, now), "too many failed attempts for this name from your address"),
                 (self._wait(by_address, s.address_free_failures, now), "too many failed attempts from your address")]
        failed_here = (pair.count if pair else 0) + checking
        if failed_here > 0:
            waits.append((self._wait(by_name, s.account_free_failures, now),
                          "too many failed attempts for this name from many addresses"))
        if waits[0][0] == 0 and checking >= max(1, s.free_failures - (pair.count if pair else 0)):
            waits.append((s.first_delay, "earlier attempts for this name from your address are still being checked"))
        wait, reason = max(waits)
        if wait > 0:
            raise Throttled(max(1, math.ceil(wait)), reason)
        self._checking[keys.pair] += 1
        suspect = failed_here > 0 or (by_address is not None and by_address.count > 0)
        return Attempt(self, keys, name, address, suspect)

    def release(self, pair_key: str) -> None:
        self._checking[pair_key] -= 1
        if self._checking[pair_key] <= 0:
            del self._checking[pair_key]

    async def record_failure(self, keys: _Keys, name: str, address: str) -> int:
        s, now = self.settings, self.clock()
        pair, by_address, by_name = await self.store.add(keys.all(), now)
        for which, failures, free in (("name_from_address", pair, s.free_failures),
                                      ("address", by_address, s.address_free_failures),
                                      ("name", by_name, s.account_free_failures)):
            if failures.count == free:  # logged once, when the delays start, not for every refused attempt
                log.warning("throttle_engaged", kind=self.kind, counted=which, name=name[:64], address=address,
                            failures=failures.count)
        wait = max(self._wait(pair, s.free_failures, now), self._wait(by_address, s.address_free_failures, now),
                   self._wait(by_name, s.account_free_failures, now))
        return math.ceil(wait)
