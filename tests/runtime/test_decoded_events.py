"""The groups of one process that read the same record share one decoded event; the cache stays bounded."""
from __future__ import annotations

import pytest

from meshrun.events import encode
from meshrun.decoded_events import DecodedEvents
from meshrun.services.events import LineItem, OrderPlaced
from meshrun.transport.base import Record
from meshrun.transport.delivery import PoisonEvent


def record(topic: str, offset: int, order_id: str = "o-1") -> Record:
    event = OrderPlaced(order_id=order_id, customer="alice", currency="EUR", items=(LineItem("A", 1, 100),))
    return Record(topic, 0, offset, order_id.encode(), encode(event), (), 1_000 + offset)


def test_groups_reading_one_record_share_one_decoded_event() -> None:
    cache = DecodedEvents(capacity=10, shared_topics=frozenset({"order-events"}))
    r = record("order-events", 0)
    first = cache.decode(r, OrderPlaced)
    assert cache.decode(r, OrderPlaced) is first
    assert first.order_id == "o-1"


def test_topics_read_by_one_group_are_decoded_without_being_kept() -> None:
    cache = DecodedEvents(capacity=10, shared_topics=frozenset({"order-events"}))
    r = record("invoice-like", 0)
    assert cache.decode(r, OrderPlaced) is not cache.decode(r, OrderPlaced)


def test_the_cache_keeps_the_newest_events_up_to_its_capacity() -> None:
    cache = DecodedEvents(capacity=3)
    records = [record("order-events", i, f"o-{i}") for i in range(5)]
    decoded = [cache.decode(r, OrderPlaced) for r in records]
    assert cache.decode(records[4], OrderPlaced) is decoded[4]
    assert cache.decode(records[0], OrderPlaced) is not decoded[0]  # evicted, decoded again
    assert len(cache._events) == 3


def test_an_undecodable_record_is_a_poison_event() -> None:
    cache = DecodedEvents()
    with pytest.raises(PoisonEvent):
        cache.decode(Record("order-events", 0, 0, None, b"not json"), OrderPlaced)
