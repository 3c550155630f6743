"""How a service's event handlers meet the transport: records decoded (once per process), the log bound to where
each came from, an EventContext or BatchContext, and the acknowledgements of what the handler published returned
to the transport. Not the retry policy (`meshrun.transport.delivery`)."""
from __future__ import annotations

from typing import Any, Sequence, cast

from meshrun.context import BatchContext, EventContext, ServiceContext
from meshrun.decoded_events import DecodedEvents
from meshrun.events import Event
from meshrun.service import BatchEventHandler, EventHandler, Subscriber
from meshrun.transport.base import Acks, BatchHandler, Handler, Record


def _payload(record: Record, event_type: type[Event] | None, decoded: DecodedEvents) -> Any:
    """What a handler receives: the decoded event, or the raw record for a subscriber without an event type."""
    return record if event_type is None else decoded.decode(record, event_type)


def _bound_log(base_log: Any, record: Record, payload: Any) -> Any:
    """A logger bound with where a record came from, and its event and trace ids."""
    if isinstance(payload, Event):
        event_id: str | None = payload.event_id
        trace_id: str | None = payload.trace_id
    else:
        raw_event_id = record.header("meshrun-event-id")
        raw_trace_id = record.header("meshrun-trace-id")
        event_id = raw_event_id.decode() if raw_event_id else None
        trace_id = raw_trace_id.decode() if raw_trace_id else None
    return base_log.bind(topic=record.topic, partition=record.partition, offset=record.offset, event_id=event_id,
                         trace_id=trace_id)


def event_handler(subscriber: Subscriber[Any], ctx: ServiceContext, decoded: DecodedEvents) -> Handler:
    """Adapt a service's handler to the transport: decode once, bind the log context, pass an EventContext."""
    handler = cast(EventHandler, subscriber.handler)
    event_type = subscriber.event
    base_log = ctx.log

    async def handle(record: Record) -> Acks | None:
        payload = _payload(record, event_type, decoded)
        event_ctx = EventContext(ctx, record, _bound_log(base_log, record, payload))
        try:
            await handler(payload, event_ctx)
        finally:
            event_ctx.finished = True
        return event_ctx.acks  # the transport commits this record once they resolve

    return handle


def batch_event_handler(subscriber: Subscriber[Any], ctx: ServiceContext, decoded: DecodedEvents) -> BatchHandler:
    """`event_handler` for a handler of lists of events: decode each, pass the list and one BatchContext. A record
    that does not decode fails the batch, and the transport hands its records over one at a time."""
    handler = cast(BatchEventHandler, subscriber.handler)
    event_type = subscriber.event
    base_log = ctx.log

    async def handle(records: Sequence[Record]) -> Acks | None:
        payloads = [_payload(record, event_type, decoded) for record in records]
        first, last = records[0], records[-1]
        log = base_log.bind(topic=first.topic, partition=first.partition,
                            offsets=f"{first.offset}-{last.offset}", events=len(records))
        batch_ctx = BatchContext(ctx, records, log, lambda i: _bound_log(base_log, records[i], payloads[i]))
        try:
            await handler(payloads, batch_ctx)
        finally:
            batch_ctx.finished = True
        return batch_ctx.acks

    return handle
