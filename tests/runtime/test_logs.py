"""A service's JSON logger writes exactly the lines structlog would, through the same renderer and writer."""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest
import structlog

from meshrun import logs


@pytest.fixture
def writer() -> Iterator[logs._LineWriter]:
    yield logs._LineWriter(io.BytesIO(), flush_each_line=False)
    logs.configure_logging("console", "warning")  # the session's configuration (tests/conftest.py)


def _lines_of(writer: logs._LineWriter) -> bytes:
    data = writer._stream.getvalue()
    writer._stream.seek(0)
    writer._stream.truncate()
    return re.sub(rb'"timestamp":"[^"]+"', b'"timestamp":"T"', data)


def _log_a_little(log: object) -> None:
    log.bind(topic="order-events", offset=3).info("invoice_issued", total=5, items={"a": 1})  # type: ignore[attr-defined]
    log.info("formatted %s-%d", "a", 2, k=1)  # type: ignore[attr-defined]
    log.debug("below the level")  # type: ignore[attr-defined]
    log.warning("warned", x=None)  # type: ignore[attr-defined]
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("failed", y=2)  # type: ignore[attr-defined]
    log.error("err")  # type: ignore[attr-defined]


def test_the_json_service_logger_writes_what_structlog_writes(writer: logs._LineWriter) -> None:
    render = logs._JsonLine()
    structlog.configure(processors=[render], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        logger_factory=lambda *_: writer, cache_logger_on_first_use=False)
    _log_a_little(structlog.get_logger("meshrun").bind(service="billing"))
    expected = _lines_of(writer)
    _log_a_little(logs.JsonServiceLogger({}, logging.INFO, render, writer).bind(service="billing"))
    written = _lines_of(writer)
    assert written == expected
    events = [orjson.loads(line) for line in written.splitlines()]
    assert [e["event"] for e in events] == ["invoice_issued", "formatted a-2", "warned", "failed", "err"]
    assert "ZeroDivisionError" in events[3]["exception"] and events[3]["level"] == "error"


def test_services_get_the_json_logger_only_when_lines_are_json(writer: logs._LineWriter) -> None:
    assert not isinstance(logs.service_logger("billing"), logs.JsonServiceLogger)
    logs.configure_logging("json", "warning")
    log = logs.service_logger("billing")
    assert isinstance(log, logs.JsonServiceLogger)
    assert log._context == {"service": "billing"} and log._level == logging.WARNING


def test_timestamps_are_utc_with_microseconds_and_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = logs._UtcTimestamp()
    for now, expected in [(1_796_162_686.000_001, "2026-12-01T22:04:46.000001Z"),
                          (1_796_162_686.705_193, "2026-12-01T22:04:46.705193Z"),
                          (1_796_162_686.999_999, "2026-12-01T22:04:46.999999Z"),
                          (1_796_162_687.042_000, "2026-12-01T22:04:47.042000Z")]:
        monkeypatch.setattr(logs.time, "time", lambda now=now: now)
        assert stamp(None, "info", {})["timestamp"] == expected


def test_a_json_line_with_fields_orjson_refuses_is_still_written() -> None:
    """Offsets by partition (integer keys) once made the JSON renderer raise TypeError inside a Kafka consumer's
    fetch loop, which ended the loop silently: a log call must never raise."""
    render = logs._JsonLine()
    line = orjson.loads(render(None, "warning", {"event": "kafka_commit_failed", "offsets": {0: 12, 2: 7}}))
    assert line["offsets"] == {"0": 12, "2": 7} and line["level"] == "warning"
    huge = orjson.loads(render(None, "info", {"event": "big", "n": 2**70, "k": {(1, 2): "tuple key"}}))
    assert huge["event"] == "big" and huge["n"] == str(2**70) and "tuple key" in huge["k"]
