"""A topic handler annotated for lists without `batch=N`, or for one event with it, is refused when its module is
imported, with a sentence that says what to change; it would otherwise fail on every record and dead-letter it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from meshrun import BatchContext, EventContext, Service
from meshrun.errors import HandlerMismatch, MeshrunError
from meshrun.examples.greeter import Greeted
from meshrun.transport.base import Record


def test_a_handler_of_lists_without_batch_is_refused_with_what_to_change() -> None:
    service = Service("shape")
    with pytest.raises(HandlerMismatch, match=r"takes a list \(list\[Greeted\]\) but subscribes to 'greetings' "
                                              r"without batch=N.*add batch=N"):
        @service.subscribe("greetings", event=Greeted)
        async def greet_all(events: list[Greeted], ctx: BatchContext) -> None: ...
    assert service.subscribers == []


def test_a_handler_of_one_event_with_batch_is_refused_with_what_to_change() -> None:
    service = Service("shape")
    with pytest.raises(HandlerMismatch, match=r"takes one Greeted but subscribes to 'greetings' with batch=20.*"
                                              r"take list\[Greeted\] and a BatchContext, or drop batch"):
        @service.subscribe("greetings", event=Greeted, batch=20)
        async def greet(event: Greeted, ctx: EventContext) -> None: ...
    with pytest.raises(HandlerMismatch, match="takes one Record"):
        @service.subscribe("greetings", batch=20)
        async def raw(record: Record, ctx: EventContext) -> None: ...


def test_matching_and_unannotated_handlers_register() -> None:
    service = Service("shape")

    @service.subscribe("greetings", event=Greeted)
    async def greet(event: Greeted, ctx: EventContext) -> None: ...

    @service.subscribe("greetings", event=Greeted, batch=20)
    async def greet_all(events: Sequence[Greeted], ctx: BatchContext) -> None: ...

    @service.subscribe("greetings", batch=5)
    async def raw_all(records: list[Record], ctx: BatchContext) -> None: ...

    async def untyped(payload, ctx):  # type: ignore[no-untyped-def]
        ...

    service.subscribe("greetings", event=Greeted, batch=3)(untyped)
    service.subscribe("greetings", event=Greeted)(untyped)

    async def anything(payload: Any, ctx: Any) -> None: ...

    service.subscribe("greetings", event=Greeted, batch=3)(anything)
    assert [s.handler for s in service.subscribers] == [greet, greet_all, raw_all, untyped, untyped, anything]


def test_the_refusal_is_an_error_meant_for_users() -> None:
    assert issubclass(HandlerMismatch, MeshrunError) and issubclass(HandlerMismatch, TypeError)
