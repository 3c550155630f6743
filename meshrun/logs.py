"""Logging set-up: structlog, human-readable console lines or one JSON object per line.

Configured once per process for speed (cached loggers, orjson, no frame inspection); not a logging facade.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from typing import Any

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


class _UtcTimestamp:
    """ISO 8601 UTC timestamps with microseconds; the date and time of day are formatted once per second
    (structlog's TimeStamper builds a datetime per line, a measurable share of a busy mesh's CPU), the microseconds
    from two table lookups (0.36 instead of 0.58 us per line with a format string, timeit)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        second, micros = divmod(int(time.time() * 1_000_000), 1_000_000)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        event["timestamp"] = self._prefix + _THREE_DIGITS[micros // 1000] + _THREE_DIGITS[micros % 1000] + "Z"
        return event


_LEVEL_NAMES = {"warn": "warning", "exception": "error", "failure": "error", "err": "error", "fatal": "critical"}


def _json_line_of_anything(event: dict[str, Any]) -> bytes:
    """A line for fields orjson refuses by default: a log call must never raise into the code that logs, which is
    often a fetch or retry loop (offsets by partition once ended a Kafka consumer's fetch loop that way). Non-string
    keys become strings (not the default: that option costs every line half as much again); what still fails is
    written as text."""
    try:
        return orjson.dumps(event, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return orjson.dumps({str(k): v if isinstance(v, (str, float, bool)) else str(v) for k, v in event.items()},
                            option=orjson.OPT_APPEND_NEWLINE)


class _JsonLine:
    """structlog's add_log_level, the timestamp, format_exc_info and the JSON renderer in one processor: a busy mesh
    writes several lines per order, and each processor in the chain is one more call per line."""

    def __init__(self) -> None:
        self._timestamp = _UtcTimestamp()

    def __call__(self, logger: Any, method_name: str, event: dict[str, Any]) -> bytes:
        event["level"] = _LEVEL_NAMES.get(method_name, method_name)
        self._timestamp(logger, method_name, event)
        if "exc_info" in event:
            event = dict(structlog.processors.format_exc_info(logger, method_name, event))
        try:
            return orjson.dumps(event, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            return _json_line_of_anything(event)


class _LineWriter:
    """Writes JSON log lines to a binary stream. On a terminal every line is flushed; otherwise the stream's
    buffer is flushed by `flush_logs` (the runtime calls it every 100 ms, and at exit) instead of a system
    call per line."""

    def __init__(self, stream: Any, flush_each_line: bool) -> None:
        self._stream = stream
        self._flush_each_line = flush_each_line

    def msg(self, message: bytes) -> None:
        self._stream.write(message)  # the renderer appended the newline
        if self._flush_each_line:
            self._stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg

    def flush(self) -> None:
        self._stream.flush()


class JsonServiceLogger:
    """A service's logger when lines are JSON: what structlog's filtering bound logger does for the methods services
    use (bind, debug, info, warning, error, exception), the same lines, without its general machinery. A busy mesh
    writes several lines per order; structlog's bookkeeping was 1.5 us of the 3.6 us a line cost (timeit).
    Everything else (the runtime, the transports, libraries) logs through structlog."""

    __slots__ = ("_context", "_level", "_render", "_writer")

    def __init__(self, context: dict[str, Any], level: int, render: "_JsonLine", writer: "_LineWriter") -> None:
        self._context = context
        self._level = level
        self._render = render
        self._writer = writer

    def bind(self, **values: Any) -> "JsonServiceLogger":
        return JsonServiceLogger({**self._context, **values}, self._level, self._render, self._writer)

    def _write(self, method: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        line = {**self._context, **kw}  # bound values first, then the call's: the order structlog writes them in
        line["event"] = event % args if args else event
        self._writer.msg(self._render(None, method, line))

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        if self._level <= logging.DEBUG:
            self._write("debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        if self._level <= logging.INFO:
            self._write("info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        if self._level <= logging.WARNING:
            self._write("warning", event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        if self._level <= logging.ERROR:
            self._write("error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self.error(event, *args, **kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> None:
        self._write("critical", event, args, kw)


_writers: list[_LineWriter] = []


def flush_logs() -> None:
    """Push buffered log lines out (the runtime calls this periodically and at shutdown)."""
    for writer in _writers:
        try:
            writer.flush()
        except (OSError, ValueError):  # the reader went away; nothing useful to do with the lines
            pass


atexit.register(flush_logs)


_level = [logging.INFO]  # the configured level, for mesh_logger
_json: list[tuple[_JsonLine, _LineWriter]] = []  # the JSON renderer and writer, when lines are JSON


def configure_logging(log_format: str = "console", level: str = "info") -> None:
    """Configure structlog for this process: `console` (default) or `json` (one object per line on stdout)."""
    _level[0] = LEVELS[level]
    shared: list[Any] = [structlog.processors.add_log_level, _UtcTimestamp()]
    if log_format == "json":
        render = _JsonLine()
        processors: list[Any] = [render]
        # A 1 MiB buffer: off a terminal the lines leave in a few large writes per flush, not one per ~27 lines.
        stream = sys.stdout.buffer if sys.stdout.isatty() else open(sys.stdout.fileno(), "wb", buffering=1 << 20,
                                                                    closefd=False)
        writer = _LineWriter(stream, flush_each_line=sys.stdout.isatty())
        _writers[:] = [writer]
        _json[:] = [(render, writer)]
        factory: Any = lambda *_: writer  # noqa: E731 - one shared writer for every logger
    else:
        _json.clear()
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


def mesh_logger() -> Any:
    """The runtime's own logger: its lifecycle lines (mesh_ready, mesh_stopping, mesh_stopped) are written at INFO
    even when the log level is higher, since tools and operators wait for them; everything else follows the level."""
    level = min(_level[0], logging.INFO)
    return _named(structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(level)), "mesh")


def service_logger(service: str) -> Any:
    """The logger of one service: every line it writes carries the service name (and the worker number of
    `meshrun up --workers N`)."""
    if _json:
        render, writer = _json[0]
        return _named(JsonServiceLogger({}, _level[0], render, writer), service)
    return _named(structlog.get_logger("meshrun"), service)


def _named(log: Any, service: str) -> Any:
    worker = os.environ.get("MESHRUN_WORKER")
    log = log.bind(service=service)
    return log.bind(worker=int(worker)) if worker else log


async def flush_logs_periodically(interval: float = 0.1) -> None:
    """Flush the buffered log lines every `interval` seconds, until cancelled (the mesh runs it while it serves)."""
    while True:
        await asyncio.sleep(interval)
        flush_logs()
