"""The partitioner both transports share must hash exactly as Kafka's Java client does, or a key would land on a
different partition in memory than on Kafka (and than producers written in other languages)."""
from __future__ import annotations

import itertools
import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from meshrun.transport.partitioner import murmur2, partition_for


@pytest.mark.parametrize(("key", "java"), [
    # Expected values from Kafka's own UtilsTest (signed 32-bit, as Java prints them).
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_kafkas_java_client(key: bytes, java: int) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF


def test_murmur2_matches_aiokafka_for_every_length_and_byte_value() -> None:
    rng = random.Random(7)
    for length in range(0, 70):
        for _ in range(30):
            key = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_keys_choose_a_partition_and_keyless_records_go_round_robin() -> None:
    counter = itertools.count()
    assert partition_for(b"order-1", 3, counter) == (aiokafka_murmur2(b"order-1") & 0x7FFFFFFF) % 3
    assert [partition_for(None, 3, counter) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
