"""A third transport, installed the way any other distribution would add one: by a `meshrun.transports` entry
point (see conftest.py). It keeps topics in memory like the in-memory transport, but every record crosses a wire
format on its way in, as a network transport's would: the contract must hold for it too, found by name only.
"""
from __future__ import annotations

import struct
from typing import Any

from meshrun.config import MemoryTransportConfig, MeshConfig
from meshrun.transport.base import Headers, RecordMetadata
from meshrun.transport.memory import InMemoryTransport


def to_wire(key: bytes | None, value: bytes, headers: Headers) -> bytes:
    """Length-prefixed fields: the key (-1 for none), the value, then each header's name and value."""
    parts = [struct.pack(">i", -1 if key is None else len(key)), key or b"", struct.pack(">I", len(value)), value,
             struct.pack(">H", len(headers))]
    for name, data in headers:
        encoded = name.encode()
        parts += [struct.pack(">H", len(encoded)), encoded, struct.pack(">I", len(data)), data]
    return b"".join(parts)


def from_wire(frame: bytes) -> tuple[bytes | None, bytes, Headers]:
    at = 0

    def take(fmt: str) -> Any:
        nonlocal at
        (value,) = struct.unpack_from(fmt, frame, at)
        at += struct.calcsize(fmt)
        return value

    def chunk(size: int) -> bytes:
        nonlocal at
        at += size
        return frame[at - size:at]

    key_size = take(">i")
    key = None if key_size < 0 else chunk(key_size)
    value = chunk(take(">I"))
    headers = tuple((chunk(take(">H")).decode(), chunk(take(">I"))) for _ in range(take(">H")))
    return key, value, headers


class LoopbackTransport(InMemoryTransport):
    name = "loopback"

    @classmethod
    def from_config(cls, config: MeshConfig) -> "LoopbackTransport":
        table = config.transport_tables.get("loopback", {})
        return cls(MemoryTransportConfig(retention=int(table.get("retention", 2_000))))

    async def publish(self, topic: str, value: bytes, *, key: bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        key, value, headers = from_wire(to_wire(key, value, headers))
        return await super().publish(topic, value, key=key, headers=headers)
