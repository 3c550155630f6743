"""The framework-free floor on Kafka: the stages of `raw_pipeline` connected by aiokafka instead of asyncio queues.

One idempotent producer (acks=all) and one group consumer per stage, each committing after every fetched batch;
topics and groups are new for every run and the topics are deleted at the end. Not a pattern for services.
"""
from __future__ import annotations

import asyncio
import functools
import sys
import uuid
from typing import Any

from meshrun_bench.raw_pipeline import GROUPS, PARTITIONS, Handle, Pipeline


class KafkaPipeline(Pipeline):
    """aiokafka: one idempotent producer (acks=all), one group consumer per stage committing after each batch."""

    def __init__(self, users_url: str, machine_token: str, bootstrap: str) -> None:
        super().__init__(users_url, machine_token)
        self.bootstrap = bootstrap
        run = uuid.uuid4().hex[:8]
        self.order_topic, self.invoice_topic = f"bench-raw-{run}-orders", f"bench-raw-{run}-invoices"
        self.groups = {f"bench-raw-{run}-{g}": (self.order_topic, g) for g in GROUPS}
        self.groups[f"bench-raw-{run}-notification"] = (self.invoice_topic, "notification")
        self.consumers: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def publish_order(self, value: bytes, key: bytes) -> None:
        await self.producer.send_and_wait(self.order_topic, value, key=key)

    async def publish_invoice(self, value: bytes, key: bytes) -> None:
        await self.producer.send_and_wait(self.invoice_topic, value, key=key)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        await super().start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (self.order_topic, self.invoice_topic)])
        finally:
            await admin.close()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                         linger_ms=0)
        await self.producer.start()
        for group, (topic, stage) in self.groups.items():
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=group,
                                        enable_auto_commit=False, auto_offset_reset="earliest")
            await consumer.start()
            self.consumers.append(consumer)
            handle: Handle = (self.on_invoice if stage == "notification"
                              else functools.partial(self.on_order, stage))
            self.tasks.append(asyncio.create_task(self._consume(consumer, handle)))
        while not all(len(c.assignment()) == PARTITIONS for c in self.consumers):
            await asyncio.sleep(0.05)

    async def _consume(self, consumer: Any, handle: Handle) -> None:
        async def partition(records: list[Any]) -> None:
            for record in records:
                await handle(record.value)

        while True:
            batches = await consumer.getmany(timeout_ms=100)
            if batches:
                await asyncio.gather(*(partition(records) for records in batches.values()))
                await consumer.commit()

    async def stop(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self.consumers), return_exceptions=True)
        await self.producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            await admin.start()
            await admin.delete_topics([self.order_topic, self.invoice_topic])
        except Exception as exc:  # noqa: BLE001 - leftover topics are harmless; the measurement is done
            print(f"raw: could not delete {self.order_topic}, {self.invoice_topic}: {exc!r}", file=sys.stderr)
        finally:
            await admin.close()
        await super().stop()
