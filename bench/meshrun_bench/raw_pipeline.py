"""The framework-free pipeline's stages: orders in, invoices out, notifications posted, over asyncio queues.

What carries records between the stages is a subclass's business (`QueuePipeline` here, `raw_kafka` on Kafka); the
HTTP ends and the process are `raw`'s. A yardstick, not an example of how to write a service.
"""
from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from meshrun.services.billing import invoice_id_for

PARTITIONS = 3
GROUPS = ("inventory", "email", "analytics", "billing")
Handle = Callable[[bytes], Awaitable[None]]


def invoice_of(order: dict[str, Any]) -> bytes:
    """Billing's arithmetic: line amounts, subtotal, no tax, total; billing's own deterministic invoice id."""
    amounts = [i["quantity"] * i["unit_price"] for i in order["items"]]
    subtotal = sum(amounts)
    return orjson.dumps({"invoice_id": invoice_id_for(order["order_id"]),
                         "order_id": order["order_id"], "customer": order["customer"],
                         "currency": order["currency"], "subtotal": subtotal, "total": subtotal})


class Pipeline:
    """Orders in, invoices out, notifications posted: the stages, whatever carries records between them."""

    def __init__(self, users_url: str, machine_token: str) -> None:
        self.notify_url = f"{users_url}/notify-user"
        self.machine_header = f"Bearer {machine_token}"
        self.http: aiohttp.ClientSession | None = None
        self.counted = {"orders": 0, "revenue": 0}

    async def on_order(self, group: str, value: bytes) -> None:
        order = orjson.loads(value)
        if group == "billing":
            await self.publish_invoice(invoice_of(order), order["order_id"].encode())
        elif group == "analytics":
            self.counted["orders"] += 1
            self.counted["revenue"] += sum(i["quantity"] * i["unit_price"] for i in order["items"])

    async def on_invoice(self, value: bytes) -> None:
        invoice = orjson.loads(value)
        body = orjson.dumps({"invoice_id": invoice["invoice_id"], "order_id": invoice["order_id"],
                             "user": invoice["customer"], "total": invoice["total"],
                             "currency": invoice["currency"]})
        headers = {"Authorization": self.machine_header, "Content-Type": "application/json",
                   "Idempotency-Key": invoice["invoice_id"]}
        assert self.http is not None
        while True:
            try:
                async with self.http.post(self.notify_url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)

    async def publish_order(self, value: bytes, key: bytes) -> None:
        raise NotImplementedError

    async def publish_invoice(self, value: bytes, key: bytes) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30))

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()


class QueuePipeline(Pipeline):
    """Plain asyncio queues: per group and per partition one queue and one consumer task, like a group member."""

    def __init__(self, users_url: str, machine_token: str, maxsize: int = 10_000) -> None:
        super().__init__(users_url, machine_token)
        self.orders = {g: [asyncio.Queue[bytes](maxsize) for _ in range(PARTITIONS)] for g in GROUPS}
        self.invoices = [asyncio.Queue[bytes](maxsize) for _ in range(PARTITIONS)]
        self.tasks: list[asyncio.Task[None]] = []

    async def publish_order(self, value: bytes, key: bytes) -> None:
        p = zlib.crc32(key) % PARTITIONS
        for queues in self.orders.values():
            await queues[p].put(value)

    async def publish_invoice(self, value: bytes, key: bytes) -> None:
        await self.invoices[zlib.crc32(key) % PARTITIONS].put(value)

    async def start(self) -> None:
        await super().start()

        async def consume(queue: asyncio.Queue[bytes], handle: Handle) -> None:
            while True:
                await handle(await queue.get())

        for group, queues in self.orders.items():
            for q in queues:
                self.tasks.append(asyncio.create_task(consume(q, functools.partial(self.on_order, group))))
        for q in self.invoices:
            self.tasks.append(asyncio.create_task(consume(q, self.on_invoice)))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await super().stop()
