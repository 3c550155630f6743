"""What every Store does, on every kind: keep once, take once, count once, expire, and keep spaces apart."""
from __future__ import annotations

import asyncio

import pytest

from meshrun.errors import StateError
from meshrun.state.base import Once, Store
from tests.state.stores import FakeClock


async def test_keep_once_keeps_a_key_the_first_time_and_returns_the_kept_value_after(store: Store) -> None:
    assert await store.keep_once("svc", [Once("seen", "a", b"first")]) == [None]
    assert await store.keep_once("svc", [Once("seen", "a", b"second")]) == [b"first"]
    assert await store.get("svc", "seen", "a") == b"first"


async def test_a_batch_adds_counts_only_for_the_records_kept_now(store: Store) -> None:
    await store.keep_once("svc", [Once("orders", "o1", counts={"orders": 1, "revenue": 10})])
    results = await store.keep_once("svc", [
        Once("orders", "o1", counts={"orders": 1, "revenue": 10}),  # a redelivery
        Once("orders", "o2", counts={"orders": 1, "revenue": 5}),
        Once("orders", "o2", counts={"orders": 1, "revenue": 5}),  # repeated within the batch
    ])
    assert results == [b"", None, b""]
    assert await store.counters("svc") == {"orders": 2, "revenue": 15}


async def test_spaces_and_collections_are_apart(store: Store) -> None:
    await store.keep_once("svc", [Once("a", "k", b"1"), Once("b", "k", b"2")])
    await store.keep_once("other", [Once("a", "k", b"3", counts={"n": 1})])
    assert await store.get("svc", "a", "k") == b"1"
    assert await store.get("svc", "b", "k") == b"2"
    assert await store.get("other", "a", "k") == b"3"
    assert await store.counters("svc") == {}


async def test_records_expire_after_their_ttl_and_can_be_kept_again(store: Store, clock: FakeClock) -> None:
    await store.keep_once("svc", [Once("codes", "c", b"v", ttl=60)])
    clock.advance(59)
    assert await store.get("svc", "codes", "c") == b"v"
    clock.advance(2)
    assert await store.get("svc", "codes", "c") is None
    assert await store.count("svc", "codes") == 0
    assert await store.keep_once("svc", [Once("codes", "c", b"new", ttl=60)]) == [None]
    assert await store.get("svc", "codes", "c") == b"new"


async def test_purge_removes_expired_records_only(store: Store, clock: FakeClock) -> None:
    await store.keep_once("svc", [Once("k", f"short{i}", ttl=10) for i in range(5)] + [Once("k", "forever", ttl=None)])
    clock.advance(11)
    assert await store.purge_expired(limit=3) == 3
    assert await store.purge_expired() == 2
    assert await store.purge_expired() == 0
    assert [k.key for k in await store.scan("svc", "k")] == ["forever"]


async def test_take_hands_a_value_to_one_caller_only(store: Store) -> None:
    await store.put("svc", "codes", "c", b"grant", None)
    taken = await asyncio.gather(*(store.take("svc", "codes", "c") for _ in range(10)))
    assert sorted(taken, key=lambda v: v is None) == [b"grant"] + [None] * 9
    assert await store.get("svc", "codes", "c") is None


async def test_take_does_not_hand_out_an_expired_value(store: Store, clock: FakeClock) -> None:
    await store.put("svc", "codes", "c", b"grant", 5)
    clock.advance(6)
    assert await store.take("svc", "codes", "c") is None


async def test_put_replaces_and_delete_removes(store: Store) -> None:
    await store.put("svc", "families", "f", b"1", None)
    await store.put("svc", "families", "f", b"2", None)
    assert await store.get("svc", "families", "f") == b"2"
    assert await store.count("svc", "families") == 1
    assert await store.delete("svc", "families", ["f", "missing"]) == 1
    assert await store.get("svc", "families", "f") is None


async def test_add_is_atomic_under_concurrent_callers(store: Store) -> None:
    await asyncio.gather(*(store.add("svc", {"hits": 1, "bytes": 10}) for _ in range(50)))
    assert await store.add("svc", {"hits": 1}) == {"hits": 51}
    assert await store.counters("svc", prefix="b") == {"bytes": 500}


async def test_scan_lists_records_in_the_order_they_were_kept(store: Store) -> None:
    await store.keep_once("svc", [Once("notes", f"n{i}", str(i).encode()) for i in range(5)])
    await store.put("svc", "notes", "n1", b"changed", None)  # a replaced record keeps its place
    first = await store.scan("svc", "notes", limit=2)
    assert [k.key for k in first] == ["n0", "n1"]
    assert first[1].value == b"changed"
    rest = await store.scan("svc", "notes", after=first[-1].seq)
    assert [k.key for k in rest] == ["n2", "n3", "n4"]


async def test_a_bad_collection_name_is_refused_with_its_name(store: Store) -> None:
    with pytest.raises(StateError, match="Bad Name"):
        await store.keep_once("svc", [Once("Bad Name", "k")])


async def test_many_concurrent_batches_keep_every_key_once(store: Store) -> None:
    async def batch(start: int) -> list[bytes | None]:
        return await store.keep_once("svc", [Once("seen", f"k{i}", counts={"n": 1}) for i in range(start, start + 20)])

    results = await asyncio.gather(*(batch(s) for s in range(0, 200, 10)))  # half of each overlaps the next
    kept_now = sum(r is None for rs in results for r in rs)
    assert kept_now == 210
    assert await store.counters("svc") == {"n": 210}
