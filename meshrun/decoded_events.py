"""The decoded events a process shares between its consumer groups, so that a record several groups read is
decoded once. Not a store: bounded, in memory, and a miss only costs a decode."""
from __future__ import annotations

from collections import OrderedDict

from meshrun.errors import PoisonEvent
from meshrun.events import Event, EventDecodeError, decode
from meshrun.transport.base import Record


class DecodedEvents:
    """The last few thousand decoded events of this process, so that the consumer groups that read one record
    (Inventory, Email, Analytics and Billing all read each OrderPlaced) decode it once, not once each.

    Keyed by where the record lives and when it was written; events are frozen, so sharing them is safe. Only
    topics that several groups of this process read are kept. Bounded: groups read a record at nearly the same
    time, and a miss only costs a decode.
    """

    def __init__(self, capacity: int = 4096, shared_topics: frozenset[str] | None = None) -> None:
        self.capacity = capacity
        self.shared_topics = shared_topics  # None: every topic
        # An OrderedDict: popping the oldest of a plain dict gets slower as deleted slots pile up at its front.
        self._events: OrderedDict[tuple[str, int, int, int], Event] = OrderedDict()

    def decode(self, record: Record, event_type: type[Event]) -> Event:
        shared = self.shared_topics is None or record.topic in self.shared_topics
        if shared:
            key = (record.topic, record.partition, record.offset, record.timestamp_ms)
            event = self._events.get(key)
            if type(event) is event_type:
                return event
        try:
            event = decode(record.value, event_type)
        except EventDecodeError as exc:
            raise PoisonEvent(str(exc)) from None
        if shared:
            if len(self._events) >= self.capacity:
                self._events.popitem(last=False)
            self._events[key] = event
        return event
