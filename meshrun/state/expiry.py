"""The background purge of expired records (idempotency keys, codes): small batches, so no handler waits long.

Not what decides expiry: every read ignores an expired record whether or not it was purged yet.
"""
from __future__ import annotations

import asyncio
from typing import Any

from meshrun.errors import StateError
from meshrun.state.base import Store

PURGE_EVERY = 60.0  # seconds between purges
PURGE_BATCH = 1000  # records removed per transaction


async def purge_expired_state(store: Store, log: Any, every: float = PURGE_EVERY, batch: int = PURGE_BATCH) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            purged = 0
            while True:
                gone = await store.purge_expired(batch)
                purged += gone
                if gone < batch:
                    break
                await asyncio.sleep(0.01)  # the writes of handlers go between two batches
            if purged:
                log.info("state_purged", records=purged, state=store.url)
        except StateError as exc:
            log.warning("state_purge_failed", error=str(exc), state=store.url)
