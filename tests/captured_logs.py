"""Log lines of loggers made inside a `with captured_logs():` block, as event dicts, at INFO and above.

The runtime binds each service's logger when the mesh starts, so a mesh started inside the block logs here; the
session's console configuration (tests/conftest.py) is put back on leaving it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog
from structlog.testing import LogCapture

from meshrun.logs import configure_logging


@contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    capture = LogCapture()
    # Not cached: a module-level logger first used inside the block must not keep writing here after it.
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        configure_logging("console", "warning")
