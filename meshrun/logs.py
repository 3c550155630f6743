"""Logging set-up: structlog, human-readable console lines or one JSON object per line.

Configured once per process for speed (cached loggers, orjson, no frame inspection); not a logging facade.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _orjson_dumps(event: dict[str, Any], **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog for this process: `console` (default) or `json` (one object per line on stdout)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        processors = shared + [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(_orjson_dumps)]
        factory: Any = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        processors = shared + [structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())]
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that log through the standard library (aiohttp, aiokafka) print warnings and errors only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def service_logger(service: str) -> Any:
    """The logger of one service: every line it writes carries the service name (and the worker number of
    `meshrun up --workers N`)."""
    worker = os.environ.get("MESHRUN_WORKER")
    log = structlog.get_logger("meshrun").bind(service=service)
    return log.bind(worker=int(worker)) if worker else log
