"""The event loop meshrun's processes run on: uvloop when it is installed, else asyncio's own.

For programs around the mesh (`meshrun up`, tools that drive it); not a scheduler and not tuned per service.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")


def run_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when it is installed (MESHRUN_UVLOOP=0 opts out), else on asyncio's loop."""
    if os.environ.get("MESHRUN_UVLOOP", "1") != "0":
        try:
            import uvloop

            return uvloop.run(main())
        except ImportError:
            pass
    return asyncio.run(main())
