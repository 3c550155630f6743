"""Waiting for a condition in tests: poll with a short, growing delay; fail naming what never happened."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


async def eventually(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` (sync or async) until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
