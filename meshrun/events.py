"""The event envelope and the event types of the mesh: frozen dataclasses, encoded once to JSON.

Envelope: {"event_id", "type", "version", "occurred_at", "trace_id", "payload": {...}}. Not a schema registry:
a decoder rejects a type or version it does not know, clearly, and the record goes to the dead-letter topic.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any, ClassVar, TypeVar

import orjson

E = TypeVar("E", bound="Event")
CONTENT_TYPE = b"application/json"


class EventDecodeError(ValueError):
    """A record's value is not an event this version of meshrun understands."""


def _reseed() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(int.from_bytes(os.urandom(4)))


_id_prefix = ""
_id_counter = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked worker must not repeat its parent's ids


def new_id() -> str:
    """A unique id of 32 hex characters (the shape of a W3C trace id): 64 random bits drawn once per process, then
    a counter. Unique, not secret; a system call per id (os.urandom) showed in the profile of a busy mesh."""
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_second = -1
_second_iso = ""


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds; the date and time of day are formatted once per second."""
    global _second, _second_iso
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_iso = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_iso}.{int((now - second) * 1000):03d}Z"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: the envelope fields. Subclasses add payload fields and set TYPE and VERSION."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    event_id: str = dataclasses.field(default_factory=new_id)
    occurred_at: str = dataclasses.field(default_factory=now_iso)
    trace_id: str = dataclasses.field(default_factory=new_id)

    def payload(self) -> dict[str, Any]:
        """The payload fields; nested dataclasses stay objects (orjson serialises them natively)."""
        names = _PAYLOAD_FIELDS.get(type(self))
        if names is None:
            names = _PAYLOAD_FIELDS[type(self)] = tuple(
                f.name for f in dataclasses.fields(self) if f.name not in _ENVELOPE)
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_payload(cls: type[E], payload: dict[str, Any], **envelope: Any) -> E:
        """Build the event from a decoded payload; subclasses with nested values override this."""
        return cls(**payload, **envelope)


_ENVELOPE = frozenset({"event_id", "occurred_at", "trace_id"})
_PAYLOAD_FIELDS: dict[type, tuple[str, ...]] = {}
EVENT_TYPES: dict[str, type[Event]] = {}


def register(cls: type[E]) -> type[E]:
    """Class decorator: make an event type known to `decode`."""
    EVENT_TYPES[cls.TYPE] = cls
    return cls


def encode(event: Event) -> bytes:
    return orjson.dumps({
        "event_id": event.event_id,
        "type": event.TYPE,
        "version": event.VERSION,
        "occurred_at": event.occurred_at,
        "trace_id": event.trace_id,
        "payload": event.payload(),
    })


def transport_headers(event: Event) -> tuple[tuple[str, bytes], ...]:
    """Headers that let a consumer route and trace a record without decoding its value."""
    return (
        ("meshrun-event-type", event.TYPE.encode()),
        ("meshrun-event-id", event.event_id.encode()),
        ("meshrun-trace-id", event.trace_id.encode()),
        ("content-type", CONTENT_TYPE),
    )


def decode(value: bytes, expected: type[E] | None = None) -> Event:
    """Decode one record value; raises EventDecodeError naming what is wrong."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventDecodeError("not a JSON object")
    missing = [k for k in ("event_id", "type", "version", "occurred_at", "trace_id", "payload") if k not in data]
    if missing:
        raise EventDecodeError(f"envelope is missing {', '.join(missing)}")
    type_name = data["type"]
    cls = EVENT_TYPES.get(type_name) if expected is None or expected.TYPE != type_name else expected
    if cls is None:
        raise EventDecodeError(f"unknown event type {type_name!r}")
    if expected is not None and cls is not expected:
        raise EventDecodeError(f"expected {expected.TYPE!r}, got {type_name!r}")
    if data["version"] != cls.VERSION:
        raise EventDecodeError(
            f"{type_name!r} version {data['version']!r} is not supported (this build reads version {cls.VERSION})"
        )
    payload = data["payload"]
    if not isinstance(payload, dict):
        raise EventDecodeError("payload is not a JSON object")
    try:
        return cls.from_payload(payload, event_id=str(data["event_id"]), occurred_at=str(data["occurred_at"]),
                                trace_id=str(data["trace_id"]))
    except (TypeError, ValueError, KeyError) as exc:
        raise EventDecodeError(f"{type_name!r} payload is invalid: {exc}") from None
