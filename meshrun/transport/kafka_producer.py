"""The Kafka transport's one idempotent producer, replaced by a new one when a failed batch leaves it unusable.

Not the partitioner or the topic checks (`kafka`): only sending, acknowledgements, and the producer's lifetime.

aiokafka's idempotent producer numbers each partition's batches. A batch that fails for good or expires (refused as
too large, no leader for too long, the broker away past the request timeout) keeps its number, so the broker refuses
every later batch to that partition as out of sequence, and aiokafka's sender then stops with
OutOfOrderSequenceNumber: every send of the process fails from then on (aiokafka issue 1017). Retrying cannot help;
a new producer (a new producer id, sequences from 0) can. So any batch that fails for good retires its producer:
sends wait for the new one, and the old one flushes what it can in the background. Records of the old producer that
fail follow their publisher's policy (a handler's record is handled again, the Order service answers 503).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any, Callable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from meshrun.errors import BrokerUnavailable, TransportStateError
from meshrun.transport.kafka_options import KafkaClientOptions, start_client

log = structlog.get_logger("meshrun.transport.kafka")

# Failures that say the producer's own state (its id, epoch or sequence numbers) is broken, not the record: a new
# producer fixes them, so they pass like an outage does.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced,
                         ProducerClosed)


class ReplaceableProducer:
    """Sends records through the current producer; replaces it after a failed batch (see the module docstring)."""

    def __init__(self, options: KafkaClientOptions, partitioner: Callable[..., int]) -> None:
        self.options = options
        self.partitioner = partitioner
        self.current: AIOKafkaProducer | None = None
        self.replacements = 0  # producers replaced so far (a test and the logs read it)
        self._replacing: asyncio.Task[None] | None = None
        # The acknowledgement callback of the current producer, made once per producer rather than once per send.
        self._on_ack: Callable[[asyncio.Future[Any]], None] = lambda ack: None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def _new(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.options.bootstrap_servers,
            client_id=f"{self.options.client_id}-producer",
            # Idempotence with acks from all in-sync replicas: a retried send is written once, and an
            # acknowledged record survives the loss of the partition leader.
            enable_idempotence=True,
            acks="all",
            partitioner=self.partitioner,
            **self.options.common,
            **self.options.producer,
        )

    async def start(self) -> None:
        producer = self._new()
        await start_client(producer, "producer", self.options)
        self.current, self._on_ack = producer, self._on_ack_of(producer)
        self._closed = False

    async def ready(self) -> AIOKafkaProducer:
        """The producer to send with: the current one, or the next one once a replacement has started."""
        replacing = self._replacing
        if replacing is not None:
            await asyncio.shield(replacing)
        if self.current is None:
            raise TransportStateError("the Kafka transport is not started: call `await transport.start()` first")
        return self.current

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]] | None,
                   partition: Callable[[AIOKafkaProducer, str, bytes | None], int | None]) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves with the broker's acknowledgement (or fails).

        Raises BrokerUnavailable when the record could not even be queued (the producer's buffer for the partition
        stayed full, the producer failed), and MessageSizeTooLargeError for a record that can never be sent."""
        producer = self.current if self._replacing is None else None
        if producer is None:
            producer = await self.ready()
        try:
            ack: asyncio.Future[Any] = await producer.send(topic, value, key=key, headers=headers,
                                                           partition=partition(producer, topic, key))
        except MessageSizeTooLargeError:
            raise
        except (KafkaError, ProducerClosed) as exc:
            if not isinstance(exc, KafkaTimeoutError):  # a full buffer is the broker away, not a broken producer
                self.failed(producer, exc)
            log.warning("kafka_publish_failed", topic=topic, error=repr(exc))
            raise BrokerUnavailable(self.options.bootstrap_servers, f"publish to {topic!r} not queued: {exc!r}",
                                    retry_after=self.options.publish_timeout) from exc
        ack.add_done_callback(self._on_ack if producer is self.current else self._on_ack_of(producer))
        return ack

    def _on_ack_of(self, producer: AIOKafkaProducer) -> Callable[[asyncio.Future[Any]], None]:
        return functools.partial(self._acknowledged, producer)

    def _acknowledged(self, producer: AIOKafkaProducer, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and ack.exception() is not None:
            self.failed(producer, ack.exception())

    def failed(self, producer: AIOKafkaProducer, error: BaseException | None) -> None:
        """A batch of `producer` failed for good: replace it, once."""
        if producer is not self.current or self._replacing is not None or self._closed:
            return
        log.warning("kafka_producer_replacing", reason=repr(error), replacements=self.replacements + 1)
        self._replacing = asyncio.create_task(self._replace(producer), name="kafka-producer-replace")

    async def _replace(self, old: AIOKafkaProducer) -> None:
        try:
            while not self._closed:
                new = self._new()
                try:
                    await start_client(new, "producer", self.options)
                except BrokerUnavailable as exc:  # still away after connect_timeout: keep trying
                    log.warning("kafka_producer_replacement_waiting", error=str(exc))
                    continue
                self.current, self._on_ack = new, self._on_ack_of(new)
                self.replacements += 1
                log.info("kafka_producer_replaced", replacements=self.replacements)
                break
        finally:
            self._replacing = None
        task = asyncio.create_task(self._close(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer: it sends what it still buffers first, for at most publish_timeout while the broker is
        away (the records it drops were not acknowledged, so their publishers retry or answer 503)."""
        try:
            async with asyncio.timeout(self.options.publish_timeout):
                await producer.stop()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("kafka_producer_stop_incomplete", error=repr(exc))

    async def stop(self) -> None:
        self._closed = True
        if self._replacing is not None:
            self._replacing.cancel()
            await asyncio.gather(self._replacing, return_exceptions=True)
        producer, self.current = self.current, None
        if producer is not None:
            await self._close(producer)
        if self._retiring:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._retiring, return_exceptions=True)
