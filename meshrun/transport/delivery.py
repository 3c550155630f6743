"""One retry policy for every transport: retry a failing handler with backoff, then dead-letter.

Not a consumer loop: each transport fetches and commits its own way and calls `deliver` once per record, or
`deliver_batch` once per batch of records.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Sequence, cast

import structlog

from meshrun.config import RetryConfig
from meshrun.errors import PoisonEvent, PublishRefused, RetryLater, StateUnavailable, TransportUnavailable
from meshrun.transport.base import Acks, BatchHandler, Handler, Headers, Record

log = structlog.get_logger("meshrun.delivery")

__all__ = ["PoisonEvent", "PublishRefused", "RetryLater", "deliver", "deliver_batch", "deliver_each"]

DeadLetter = Callable[[str, Record, Headers], Awaitable[None]]
MAX_BATCH = 10_000  # records handed to one batch handler at most


def first_error(acks: Acks) -> BaseException | None:
    """The first failure among resolved acknowledgements (a cancelled one counts as failed)."""
    for ack in acks:
        if ack.cancelled():
            return asyncio.CancelledError()
        error = ack.exception()
        if error is not None:
            return error
    return None


def waits_without_limit(error: BaseException) -> bool:
    """A failure that makes a record wait rather than count an attempt: the handler said a dependency is down
    (RetryLater), or a publish could not be made durable because the transport is away or backed up (an outage
    must make work wait, never dead-letter it), or the state store cannot be written now."""
    return isinstance(error, (RetryLater, TransportUnavailable, StateUnavailable))


def transient_error(error: BaseException) -> bool:
    """A failure that passes by itself: a timeout, a lost connection, or one its library marks as retriable."""
    return isinstance(error, (TimeoutError, ConnectionError)) or bool(getattr(error, "retriable", False))


def awaiting_acks(handler: Handler, transient: Callable[[BaseException], bool]) -> Handler:
    """`handler`, finishing only once what it published is acknowledged: a publish that failed makes it raise, as
    RetryLater when `transient` says the failure passes (the broker is unreachable), else as PublishRefused, so a
    record whose output is refused for good follows the retry policy to the dead-letter topic."""

    async def handle(record: Record) -> Acks | None:
        acks = _acks_of(await handler(record))
        if acks:
            await asyncio.wait(acks)
            error = first_error(acks)
            if error is not None:
                if transient(error):
                    raise RetryLater(f"publish not acknowledged: {error!r}") from error
                raise PublishRefused(f"publish refused: {error!r}") from error
        return ()

    return handle


def _acks_of(result: object) -> Acks:
    """A handler's result: its list of pending acknowledgements, or nothing (a plain handler may return anything)."""
    if isinstance(result, list) and all(asyncio.isfuture(ack) for ack in result):
        return result
    return ()


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def dead_letter_headers(record: Record, group: str, error: BaseException, attempts: int) -> Headers:
    reason = f"{type(error).__name__}: {error}"[:1000]
    return record.headers + (
        ("meshrun-dlq-group", group.encode()),
        ("meshrun-dlq-error", reason.encode()),
        ("meshrun-dlq-attempts", str(attempts).encode()),
        ("meshrun-dlq-topic", record.topic.encode()),
        ("meshrun-dlq-partition", str(record.partition).encode()),
        ("meshrun-dlq-offset", str(record.offset).encode()),
    )


async def _wait_or_stop(stopping: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True if a stop was requested meanwhile."""
    if stopping.is_set():
        return True
    try:
        await asyncio.wait_for(stopping.wait(), delay)
        return True
    except TimeoutError:
        return False


async def deliver(
    record: Record,
    handler: Handler,
    *,
    group: str,
    retry: RetryConfig,
    dead_letter: DeadLetter,
    stopping: asyncio.Event,
) -> Acks | None:
    """Hand `record` to `handler` until it succeeds or is dead-lettered.

    Returns the acknowledgements the handler's publishes still wait for (empty when none): once they resolve, the
    record is done and its offset may be committed. None when a stop was requested before it was done (the
    offset stays uncommitted, so the record is redelivered later).
    """
    try:
        return _acks_of(await handler(record))
    except asyncio.CancelledError:
        raise
    except BaseException as first_error:  # noqa: BLE001 - every handler failure is retried or dead-lettered
        error: BaseException = first_error
    attempts = 1
    transient = 0
    delay = retry.backoff_initial
    while True:
        where = dict(topic=record.topic, partition=record.partition, offset=record.offset, group=group)
        waiting = waits_without_limit(error)
        if isinstance(error, PoisonEvent) or (not waiting and attempts >= retry.max_attempts):
            if not retry.dead_letter:
                log.error("handler_failed_no_dead_letter", error=repr(error), attempts=attempts, **where)
            else:
                target = dead_letter_topic(record.topic)
                headers = dead_letter_headers(record, group, error, attempts)
                while True:
                    try:
                        await dead_letter(target, record, headers)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # the dead-letter topic itself is unreachable: keep the record
                        log.warning("dead_letter_publish_failed", error=repr(exc), **where)
                        if await _wait_or_stop(stopping, retry.backoff_max):
                            return None
                log.error("event_dead_lettered", dead_letter_topic=target, error=repr(error), attempts=attempts,
                          **where)
                return ()
            # Without a dead-letter topic the record is retried forever rather than dropped.
        if waiting:
            transient += 1
            if transient == 1 or transient % 20 == 0:
                log.warning("handler_waiting_for_dependency", error=str(error), retries=transient, **where)
        else:
            log.warning("handler_failed_will_retry", error=repr(error), attempt=attempts,
                        max_attempts=retry.max_attempts, **where)
        if await _wait_or_stop(stopping, delay):
            return None
        delay = min(delay * 2, retry.backoff_max)
        try:
            acks = _acks_of(await handler(record))
            if transient:
                log.info("handler_recovered", retries=transient + attempts - 1, **where)
            return acks
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001
            error = exc
            if not waits_without_limit(exc):
                attempts += 1


def one_at_a_time(handler: BatchHandler) -> Handler:
    """A batch handler as a handler of single records (batches of one)."""

    async def handle(record: Record) -> Acks | None:
        return await handler((record,))

    return handle


def split_handler(handler: Handler | BatchHandler, max_batch: int) -> tuple[Handler, BatchHandler | None]:
    """What a subscription calls: a handler of single records (for retries, and every record when `max_batch` is
    1), and the batch handler when there is one."""
    check_max_batch(max_batch)
    if max_batch > 1:
        batch = cast(BatchHandler, handler)
        return one_at_a_time(batch), batch
    return cast(Handler, handler), None


async def deliver_batch(
    records: Sequence[Record],
    handler: BatchHandler,
    *,
    group: str,
    retry: RetryConfig,
    dead_letter: DeadLetter,
    stopping: asyncio.Event,
    transient: Callable[[BaseException], bool],
) -> Acks | None:
    """Hand consecutive records of one partition to a batch handler at once; what `deliver` is for one record.

    RetryLater (a dependency is down) retries the batch as it is, without limit: split into one call per record it
    would multiply the load on a dependency that is already failing. Any other failure hands each record to the
    handler again on its own (`deliver_each`), so one bad record is retried and dead-lettered alone while the others
    go through, each of them possibly twice (at least once, as after any failure). Returns the acknowledgements the
    batch's publishes still wait for; None when a stop was requested first (nothing of the batch is committed then,
    and all of it is redelivered later).
    """
    single = one_at_a_time(handler)
    if len(records) == 1:
        return await deliver(records[0], single, group=group, retry=retry, dead_letter=dead_letter,
                             stopping=stopping)
    waits = 0
    delay = retry.backoff_initial
    while True:
        try:
            acks = _acks_of(await handler(records))
            if waits:
                log.info("handler_recovered", retries=waits, **_where_batch(records, group))
            return acks
        except asyncio.CancelledError:
            raise
        except (RetryLater, TransportUnavailable, StateUnavailable) as exc:
            waits += 1
            if waits == 1 or waits % 20 == 0:
                log.warning("handler_waiting_for_dependency", error=str(exc), retries=waits,
                            **_where_batch(records, group))
            if await _wait_or_stop(stopping, delay):
                return None
            delay = min(delay * 2, retry.backoff_max)
        except BaseException as exc:  # noqa: BLE001 - handled again one record at a time
            log.warning("batch_failed_handling_one_at_a_time", error=repr(exc), **_where_batch(records, group))
            break
    done = await deliver_each(records, single, transient=transient, group=group, retry=retry,
                              dead_letter=dead_letter, stopping=stopping)
    return () if done else None


def _where_batch(records: Sequence[Record], group: str) -> dict[str, object]:
    return dict(topic=records[0].topic, partition=records[0].partition,
                offsets=f"{records[0].offset}-{records[-1].offset}", group=group)


async def deliver_each(
    records: Sequence[Record],
    handler: Handler,
    *,
    transient: Callable[[BaseException], bool],
    group: str,
    retry: RetryConfig,
    dead_letter: DeadLetter,
    stopping: asyncio.Event,
) -> bool:
    """Deliver records one at a time, each finished before the next: handled, or dead-lettered, and what it
    published acknowledged (a failed publish follows the retry policy, see `awaiting_acks`). Once this returns, no
    record is handled again because another one's publish failed. False if a stop was requested first."""
    awaited = awaiting_acks(handler, transient)
    for record in records:
        if await deliver(record, awaited, group=group, retry=retry, dead_letter=dead_letter,
                         stopping=stopping) is None:
            return False
    return True


def check_max_batch(max_batch: int) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be an integer from 1 to {MAX_BATCH}, got {max_batch!r}")
