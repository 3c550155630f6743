"""Backs off aiokafka's metadata refreshes while the cluster is unreachable, so an outage costs little CPU.

Not a retry policy for records (that is `delivery`): only how often a client asks an absent cluster for metadata.

aiokafka refreshes metadata in one background task per client. While a broker is away, its producer's sender
(a partition without a known leader) and its consumers' fetchers (invalid metadata) ask for a refresh, wait for it,
and ask again at once; a refresh against a refused connection fails in microseconds, so each client loops without
pause (measured: 85,000 connection attempts and 84,000 failed refreshes in a 10 s outage of one broker, a core
busy). Here a failed refresh returns only after a delay that doubles per failure in a row, from RETRY_FIRST up to
RETRY_MAX seconds; every waiting caller is paced by it, and the first refresh that succeeds resets it. So a client
asks at most once a RETRY_MAX seconds during a long outage and notices a returning broker within that time.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

RETRY_FIRST = 0.05
RETRY_MAX = 1.0
_PACED = "_meshrun_paced_metadata"


def pace_metadata_refresh(client: Any) -> bool:
    """Wrap an aiokafka client's metadata refresh (the AIOKafkaClient of a producer, consumer or admin client).
    Returns False, changing nothing, when this aiokafka has no such method (its hot loop then stays)."""
    inner = _kafka_client_of(client)
    update: Callable[..., Awaitable[bool]] | None = getattr(inner, "_metadata_update", None)
    if inner is None or update is None or getattr(inner, _PACED, False):
        return getattr(inner, _PACED, False)
    failures = 0

    async def paced_update(cluster_metadata: Any, topics: Any) -> bool:
        nonlocal failures
        ok = await update(cluster_metadata, topics)
        if ok:
            failures = 0
        else:
            failures += 1
            await asyncio.sleep(min(RETRY_FIRST * 2 ** min(failures - 1, 10), RETRY_MAX))
        return ok

    inner._metadata_update = paced_update
    setattr(inner, _PACED, True)
    return True


def _kafka_client_of(client: Any) -> Any:
    """The AIOKafkaClient inside a producer (`client`), a consumer or an admin client (`_client`)."""
    for name in ("_client", "client"):
        inner = getattr(client, name, None)
        if inner is not None and hasattr(inner, "_metadata_update"):
            return inner
    return client if hasattr(client, "_metadata_update") else None
