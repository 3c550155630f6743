"""One member of a Kafka consumer group: fetches in batches, hands each partition to its own worker, commits.

Not the retry policy (that is `delivery.deliver`) and not the producer (dead letters go through the transport's).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
)
from aiokafka.structs import ConsumerRecord

from meshrun.config import RetryConfig
from meshrun.transport.base import (
    BatchHandler,
    Handler,
    Headers,
    Record,
    StartFrom,
    Subscription,
    SubscriptionState,
)
from meshrun.transport.delivery import (
    split_handler,
    transient_error,
)
from meshrun.errors import BrokerUnavailable, TransportUnavailable
from meshrun.transport.kafka_fetch import FetchPacing
from meshrun.transport.kafka_options import KafkaClientOptions, start_client
from meshrun.transport.kafka_producer import PRODUCER_STATE_ERRORS
from meshrun.transport.partition_worker import Delivery, PartitionWorker, stop_workers
from meshrun.transport.stall import PartitionProgress, Stall, StallWatch

log = structlog.get_logger("meshrun.transport.kafka")

DeadLetter = Callable[[str, Record, Headers], Awaitable[None]]


def to_record(message: ConsumerRecord[bytes, bytes]) -> Record:
    headers = message.headers
    if type(headers) is not tuple:  # aiokafka hands a tuple; anything else is copied
        headers = tuple(headers)
    for _, value in headers:  # a plain loop: a generator per record costs more than the check
        if value is None:  # a header without a value (Kafka allows it) reads as empty
            headers = tuple((k, v if v is not None else b"") for k, v in headers)
            break
    return Record(message.topic, message.partition, message.offset, message.key,
                  message.value if message.value is not None else b"", headers, message.timestamp)


class _Fetched:
    """One assigned partition's fetched records waiting for its worker: the `RecordSource` of Kafka partitions.

    Fetching a partition pauses while `max_in_flight_per_partition` records wait here, and resumes once its worker
    has taken half of them, so memory stays bounded whatever the handler's speed."""

    def __init__(self, sub: "KafkaSubscription", partition: int, position: int) -> None:
        self.sub = sub
        self.tp = TopicPartition(sub.topic, partition)
        self.queue: deque[Record] = deque()
        self.fetched = position  # the offset after the last record fed here (what the stall watch reads)
        self.paused = False
        self._wakeup = asyncio.Event()

    def feed(self, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.queue.extend(map(to_record, messages))
        self.fetched = messages[-1].offset + 1
        self._wakeup.set()

    def take(self, limit: int) -> list[Record]:
        queue = self.queue
        if not queue:
            return []
        records = [queue.popleft()] if limit == 1 else [queue.popleft() for _ in range(min(limit, len(queue)))]
        if self.paused and len(queue) <= self.sub.options.max_in_flight_per_partition // 2:
            self.sub.resume(self)
        return records

    async def wait(self) -> None:
        self._wakeup.clear()
        await self._wakeup.wait()

    def wake(self) -> None:
        self._wakeup.set()

    def done(self, offset: int) -> None:
        """Kafka offsets are committed by the subscription every commit interval, from the worker's `done`."""


def transient_publish_error(error: BaseException) -> bool:
    """A publish failure that passes by itself: the broker unreachable or busy, or a batch refused after an earlier
    one failed (out of sequence: the transport replaces its producer); not one that is refused for good (too large,
    not authorised)."""
    return (isinstance(error, (KafkaTimeoutError, TransportUnavailable) + PRODUCER_STATE_ERRORS)
            or transient_error(error))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: "KafkaSubscription") -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sub.retire({tp.partition for tp in revoked if tp.topic == self.sub.topic},
                              self.sub.options.revoke_grace_period)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sub.take_over({tp.partition for tp in assigned if tp.topic == self.sub.topic})


class KafkaSubscription(Subscription):
    """A member of `group` on `topic`; one aiokafka consumer, one worker task per assigned partition."""

    def __init__(self, options: KafkaClientOptions, topic: str, group: str, handler: Handler | BatchHandler,
                 retry: RetryConfig, start_from: StartFrom, member: str, dead_letter: DeadLetter,
                 max_batch: int = 1) -> None:
        self.options = options
        self.topic = topic
        self.group = group
        self.member = member
        single, batch = split_handler(handler, max_batch)
        self.delivery = Delivery(group, single, batch, max_batch, retry, dead_letter, transient_publish_error,
                                 options.max_unacked_per_partition)
        self.start_from = start_from
        self.consumer = self._new_consumer()
        self._state = SubscriptionState.JOINING
        self._joined = asyncio.Event()
        self._problem: str | None = None
        self._workers: dict[int, PartitionWorker] = {}
        self._fetched: dict[int, _Fetched] = {}
        self._commit_lock = asyncio.Lock()
        self._last_commit = 0.0
        self._fetch_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._pacing = self._new_pacing()
        self._stalls = StallWatch(options.stall_timeout)
        self._where = dict(topic=topic, group=group, member=member)

    def _new_consumer(self) -> AIOKafkaConsumer:
        options = self.options
        return AIOKafkaConsumer(
            bootstrap_servers=options.bootstrap_servers, group_id=self.group,
            client_id=f"{options.client_id}-{self.member}", enable_auto_commit=False,
            auto_offset_reset=self.start_from, **options.common, **options.consumer)

    def _new_pacing(self) -> FetchPacing:
        return FetchPacing(self.consumer, self.options.consumer["fetch_min_bytes"],
                           self.options.consumer["fetch_max_wait_ms"], enabled=self.options.idle_long_poll)

    @property
    def assigned_partitions(self) -> frozenset[int]:
        return frozenset(self._workers)

    async def start(self) -> None:
        await self._start_consumer()
        self._watch_task = asyncio.create_task(self._watch(), name=f"{self.group}:{self.topic}:watch")

    async def _start_consumer(self) -> None:
        await start_client(self.consumer, f"consumer {self.member}", self.options)
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._fetch_task = asyncio.create_task(self._fetch(), name=f"{self.group}:{self.topic}:fetch")

    async def _stop_fetching(self) -> None:
        if self._fetch_task is not None:
            # Cancelling is safe at any await of the loop: records are handed to workers without awaiting.
            # The loop also checks the state, in case a library call swallows the cancellation.
            self._fetch_task.cancel()
            await asyncio.gather(self._fetch_task, return_exceptions=True)

    async def stop(self, grace_period: float) -> None:
        if self._state in (SubscriptionState.STOPPING, SubscriptionState.STOPPED):
            return
        self._state = SubscriptionState.STOPPING
        if self._watch_task is not None and self._watch_task is not asyncio.current_task():
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        await self._stop_fetching()
        await self.retire(set(self._workers), grace_period)
        await self._close_consumer(self.consumer)  # leaves the group, so the others take over at once
        for worker in self._workers.values():  # assigned by a rebalance that raced with this stop: never ran
            worker.stop()
        self._workers.clear()
        self._fetched.clear()
        self._state = SubscriptionState.STOPPED
        log.debug("kafka_member_stopped", **self._where)

    # --- the fetch loop ---------------------------------------------------------------------------------------------

    async def _fetch(self) -> None:
        """Fetch batches, feed each partition's worker, and commit what the workers finished every interval.

        Nothing but a stop ends this loop: a failed fetch or commit, a bad reply, or a bug in a log call once ended it
        silently after a broker restart, and the member then held its partitions without fetching for good. Each
        failure is logged and the loop goes on after a backoff (the stall watch catches what still goes wrong)."""
        backoff = 0.1
        while self._state not in (SubscriptionState.STOPPING, SubscriptionState.STOPPED):
            try:
                await self._fetch_once()
                backoff = 0.1
                continue
            except ConsumerStoppedError:
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._state in (SubscriptionState.STOPPING, SubscriptionState.STOPPED) or (
                        task is not None and task.cancelling()):
                    raise
                # A cancellation this task was not asked for: a library call cancelled a future of its own.
                log.warning("kafka_fetch_failed_retrying", error="CancelledError inside aiokafka", retry_in=backoff,
                            **self._where)
            except KafkaError as exc:  # aiokafka reconnects by itself: fetch again after a pause
                log.warning("kafka_fetch_failed_retrying", error=repr(exc), retry_in=backoff, **self._where)
            except Exception:  # noqa: BLE001 - a consumer must outlive a broker restart or a bad reply
                log.exception("kafka_fetch_loop_error", retry_in=backoff, **self._where)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _fetch_once(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=max(1, int(self.options.commit_interval * 1000)))
        self._pacing.fetched(sum(len(messages) for messages in batch.values()), time.monotonic())
        for tp, messages in batch.items():
            fetched = self._fetched.get(tp.partition) or self._add_worker(tp.partition, messages[0].offset)
            fetched.feed(messages)
            if not fetched.paused and len(fetched.queue) >= self.options.max_in_flight_per_partition:
                self._pause(fetched)
        if time.monotonic() - self._last_commit >= self.options.commit_interval:
            await self.commit()

    # --- stalls -----------------------------------------------------------------------------------------------------

    @property
    def problem(self) -> str | None:
        return self._problem

    async def _watch(self) -> None:
        """Every few seconds: is a partition of this member behind with nothing fetched (see `StallWatch`), or did
        the fetch loop end? Then log `partition_stalled`, report it through readiness, and rejoin the group with a
        new consumer."""
        interval = max(0.5, min(5.0, self.options.stall_timeout / 4))
        while self._state not in (SubscriptionState.STOPPING, SubscriptionState.STOPPED):
            await asyncio.sleep(interval)
            try:
                stalls = await self._find_stalls()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker away: nothing to compare with this round
                log.debug("kafka_stall_check_failed", error=repr(exc), **self._where)
                continue
            if stalls is None:
                continue
            fetch_ended = self._fetch_task is not None and self._fetch_task.done()
            if not stalls and not fetch_ended:
                continue
            reason = ("the fetch loop ended" if fetch_ended and not stalls
                      else "; ".join(stall.describe() for stall in stalls))
            self._problem = f"consumer of {self.topic} in {self.group} stalled ({reason}): rejoining the group"
            log.error("partition_stalled", reason=reason, partitions=[st.partition for st in stalls],
                      stall_timeout=self.options.stall_timeout, **self._where)
            await self._rejoin()

    async def _find_stalls(self) -> list[Stall] | None:
        fetched = [self._fetched[p] for p, w in self._workers.items() if not w.task.done() and p in self._fetched]
        if self._state is not SubscriptionState.ASSIGNED or not fetched:
            self._stalls.reset()
            return [] if self._state is SubscriptionState.ASSIGNED else None
        async with asyncio.timeout(min(self.options.connect_timeout, 10.0)):
            ends = await self.consumer.end_offsets([f.tp for f in fetched])
        progress = [PartitionProgress(f.tp.partition, f.fetched, ends.get(f.tp, 0), bool(f.queue) or f.paused)
                    for f in fetched if f.tp.partition in self._workers]
        return self._stalls.observe(progress, time.monotonic())

    async def _rejoin(self) -> None:
        """Leave the group and join again with a new consumer: what is done is committed, the rest is fetched again
        from the committed offsets (at least once). Readiness reports the member as joining until it is assigned."""
        self._state = SubscriptionState.JOINING
        self._joined.clear()
        self._stalls.reset()
        await self._stop_fetching()
        await self.retire(set(self._workers), self.options.revoke_grace_period)
        old, self.consumer = self.consumer, self._new_consumer()
        self._pacing = self._new_pacing()
        await self._close_consumer(old)
        while self._state is SubscriptionState.JOINING:
            try:
                await self._start_consumer()
                log.info("kafka_member_rejoining", **self._where)
                return
            except BrokerUnavailable as exc:  # start_client gave up for now: the broker is still away
                log.warning("kafka_rejoin_failed_retrying", error=str(exc), **self._where)
                self.consumer = self._new_consumer()
                self._pacing = self._new_pacing()

    async def _close_consumer(self, consumer: AIOKafkaConsumer) -> None:
        """Stop a consumer (it leaves its group), without waiting for long for a broker that is away."""
        try:
            async with asyncio.timeout(min(self.options.connect_timeout, 10.0)):
                await consumer.stop()
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("kafka_consumer_stop_failed", error=repr(exc), **self._where)

    def _add_worker(self, partition: int, position: int) -> _Fetched:
        fetched = self._fetched[partition] = _Fetched(self, partition, position)
        self._workers[partition] = PartitionWorker(self.topic, partition, position, self.delivery, fetched,
                                                   transport="kafka")
        return fetched

    def _pause(self, fetched: _Fetched) -> None:
        """Stop fetching a partition whose handler is behind, so memory stays bounded."""
        with contextlib.suppress(IllegalStateError):  # revoked meanwhile
            self.consumer.pause(fetched.tp)
            fetched.paused = True

    def resume(self, fetched: _Fetched) -> None:
        with contextlib.suppress(IllegalStateError):  # revoked meanwhile
            self.consumer.resume(fetched.tp)
        fetched.paused = False

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit, per partition, the offset below which every record's handler has finished.

        Handlers of one partition run in order, so that offset is simply the one after the last finished record.
        """
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            workers = [w for p, w in self._workers.items() if partitions is None or p in partitions]
            offsets = {TopicPartition(self.topic, w.partition): w.done for w in workers if w.done > w.committed}
            if not offsets:
                return
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that arrives as the
                # commit completes, and stop() would then wait for a fetch loop that never ends.
                async with asyncio.timeout(min(self.options.connect_timeout, 10.0)):
                    await self.consumer.commit(offsets)
            except CommitFailedError:
                # The group rebalanced first: another member redelivers these records (at least once).
                log.warning("kafka_commit_rejected_after_rebalance", offsets=_show(offsets), **self._where)
                return
            except (KafkaError, IllegalStateError, TimeoutError) as exc:
                log.warning("kafka_commit_failed", error=repr(exc), offsets=_show(offsets), **self._where)
                return
            for worker in workers:
                committed = offsets.get(TopicPartition(self.topic, worker.partition))
                if committed is not None:
                    worker.committed = max(worker.committed, committed)

    # --- rebalances ---------------------------------------------------------------------------------------------

    async def retire(self, partitions: set[int], grace_period: float) -> None:
        """Stop the workers of partitions this member gives up: the in-flight handler may finish (up to
        `grace_period`, then it is cancelled), what is done is committed, queued records are left for the new owner.
        """
        workers = [self._workers[p] for p in partitions if p in self._workers]
        if not workers:
            return
        await stop_workers(workers, grace_period, **self._where)
        await self.commit({w.partition for w in workers})
        for worker in workers:
            self._workers.pop(worker.partition, None)
            self._fetched.pop(worker.partition, None)

    async def take_over(self, partitions: set[int]) -> None:
        """Start workers for newly assigned partitions at their committed offsets.

        A partition the group never committed starts where `start_from` says; that position is committed at once,
        as the in-memory transport does, so a record published after `wait_joined` is never skipped by a later
        reset to "latest". Fetching stays paused until then, so no record arrives before its worker's position.
        """
        if self._state in (SubscriptionState.STOPPING, SubscriptionState.STOPPED):
            return
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        if tps:
            self.consumer.pause(*tps)
            try:
                # Bounded: a rebalance callback that never returns would hold the whole group's rebalance.
                async with asyncio.timeout(min(self.options.connect_timeout, 10.0)):
                    positions = await asyncio.gather(*(self.consumer.position(tp) for tp in tps))
                    async with self._commit_lock:
                        await self.consumer.commit(dict(zip(tps, positions, strict=True)))
                for tp, position in zip(tps, positions, strict=True):
                    if tp.partition not in self._workers:
                        self._add_worker(tp.partition, position)
            except (KafkaError, IllegalStateError, TimeoutError) as exc:
                # Fetching resumes from the committed offsets anyway; workers then start at the first record.
                log.warning("kafka_start_positions_not_committed", error=repr(exc), **self._where)
            finally:
                with contextlib.suppress(IllegalStateError):  # already revoked again
                    self.consumer.resume(*tps)
        self._problem = None
        log.info("kafka_partitions_assigned", partitions=sorted(partitions), **self._where)
        self._state = SubscriptionState.ASSIGNED if self._state is SubscriptionState.JOINING else self._state
        self._joined.set()


def _show(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {str(tp.partition): offset for tp, offset in offsets.items()}
