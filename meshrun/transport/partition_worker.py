"""One partition's consumer, for every transport: records handled in order, retried or dead-lettered, and counted
done only once what their handler published is durable.

Not how records arrive or how offsets are committed: each transport supplies a `RecordSource` (Kafka: the records
its fetch loop fed; memory: the partition's log) and commits `done` its own way.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import structlog

from meshrun.config import RetryConfig
from meshrun.transport.base import Acks, BatchHandler, Handler, Record
from meshrun.transport.delivery import DeadLetter, deliver, deliver_batch, deliver_each, first_error

log = structlog.get_logger("meshrun.transport")


class RecordSource(Protocol):
    """Where one partition's records come from, and what happens once they are done. Caller: the worker's task."""

    def take(self, limit: int) -> Sequence[Record]:
        """Up to `limit` consecutive records following those taken before, without waiting; empty when none."""

    async def wait(self) -> None:
        """Return once `take` may have records, or once `wake` was called."""

    def wake(self) -> None:
        """Make a pending `wait` return (a stop was requested)."""

    def done(self, offset: int) -> None:
        """Every record below `offset` is handled and what its handler published is durable."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a subscription's records are handed to its handler: what every partition worker of it shares."""

    group: str
    handler: Handler  # single records (every record when there is no batch handler; retries of a batch's records)
    batch_handler: BatchHandler | None
    max_batch: int
    retry: RetryConfig
    dead_letter: DeadLetter
    transient: Callable[[BaseException], bool]  # a publish failure that passes by itself (the broker away)
    max_unacked: int  # handled records whose publishes may await their acknowledgement at once


class PartitionWorker:
    """Handles one assigned partition's records in order; `done` is the offset up to which all are done.

    A handler's publishes are pipelined: the next record is handled while the broker still acknowledges what the
    previous ones published (sends keep their order, so a partition's output keeps its order too). A record counts
    as done only once its handler returned and its publishes were acknowledged, and every record before it is done:
    that is what the transport commits. A publish the broker refuses makes its record be handled again.
    """

    def __init__(self, topic: str, partition: int, position: int, delivery: Delivery, source: RecordSource,
                 *, transport: str) -> None:
        self.topic = topic
        self.partition = partition
        self.delivery = delivery
        self.source = source
        self.transport = transport
        # Handled records (a batch, or one), oldest first, with the acknowledgements they still wait for.
        self.unacked: deque[tuple[Sequence[Record], Acks]] = deque()
        self.unacked_records = 0  # records in `unacked`: what Delivery.max_unacked bounds
        self.done = position
        self.committed = position  # what the transport last committed for this partition
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"{delivery.group}:{topic}[{partition}]")

    def stop(self) -> None:
        self.stopping.set()
        self.source.wake()

    def _advance(self, offset: int) -> None:
        self.done = offset
        self.source.done(offset)

    async def _run(self) -> None:
        try:
            await self._handle_in_order()
            await self._settle(0, handle_again=False)  # stopping: keep what was acknowledged, leave the rest
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here would silently stall the partition: say so loudly
            log.exception("partition_worker_crashed", topic=self.topic, partition=self.partition,
                          group=self.delivery.group, transport=self.transport)

    async def _handle_in_order(self) -> None:
        d = self.delivery
        source, stopping = self.source, self.stopping
        while not stopping.is_set():
            records = source.take(d.max_batch)
            if not records:
                if self.unacked:
                    if not await self._settle(0):
                        return
                    continue
                await source.wait()
                continue
            acks: Acks | None
            if d.batch_handler is not None:
                acks = await deliver_batch(records, d.batch_handler, group=d.group, retry=d.retry,
                                           dead_letter=d.dead_letter, stopping=stopping, transient=d.transient)
            else:
                acks = await deliver(records[0], d.handler, group=d.group, retry=d.retry, dead_letter=d.dead_letter,
                                     stopping=stopping)
            if acks is None:
                return
            if acks or self.unacked:
                self.unacked.append((records, acks))
                self.unacked_records += len(records)
                if not await self._settle(d.max_unacked - 1):
                    return
            else:
                self._advance(records[-1].offset + 1)

    async def _settle(self, keep: int, *, handle_again: bool = True) -> bool:
        """Advance `done` past the oldest handled records whose publishes are all acknowledged, waiting for the
        oldest while more than `keep` are in flight. A record with a refused publish is handled again first
        (`handle_again`), or ends the advance. False if a stop was requested before that record was done."""
        unacked = self.unacked
        while unacked:
            records, acks = unacked[0]
            if not all(ack.done() for ack in acks):
                if self.unacked_records <= keep:
                    return True
                await asyncio.wait(acks)
            error = first_error(acks)
            if error is not None:
                if not handle_again or not await self._handle_again(records, error):
                    return False
            unacked.popleft()
            self.unacked_records -= len(records)
            self._advance(records[-1].offset + 1)
        return True

    async def _handle_again(self, records: Sequence[Record], error: BaseException) -> bool:
        """Handle records again, one at a time and their publishes awaited this time, under the retry policy:
        until they are acknowledged, or (refused for good) until they are dead-lettered. At least once: what the
        first attempt did may happen twice. False if a stop was requested first."""
        d = self.delivery
        if self.stopping.is_set():  # leave them uncommitted: the partition's next owner handles them
            return False
        log.warning("publish_not_acknowledged_handling_again", error=repr(error), offset=records[0].offset,
                    records=len(records), partition=self.partition, topic=self.topic, group=d.group)
        return await deliver_each(records, d.handler, transient=d.transient, group=d.group, retry=d.retry,
                                  dead_letter=d.dead_letter, stopping=self.stopping)


async def stop_workers(workers: Sequence[PartitionWorker], grace_period: float, **where: Any) -> None:
    """Stop partition workers (revoked, or the member is stopping): each in-flight handler may finish, up to
    `grace_period`; then it is cancelled, and its record is redelivered to the partition's next owner."""
    for worker in workers:
        worker.stop()
    tasks = [worker.task for worker in workers]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_period)
    for task in pending:
        log.warning("handler_cancelled_after_grace_period", grace_period=grace_period, task=task.get_name(),
                    **where)
        task.cancel()
    if pending:
        await asyncio.wait(pending)
