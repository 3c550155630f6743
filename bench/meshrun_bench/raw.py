"""The floor under `meshrun bench`: the order pipeline written without meshrun, run as its own process and ports.

aiohttp in and out, plain asyncio queues (or aiokafka) between stages (`raw_pipeline`, `raw_kafka`), a dict lookup
for tokens, no logging; of meshrun only billing's invoice id, so both pipelines issue the same invoices. A yardstick
to divide meshrun's figures by, not an example of how to write a service: it has no retries to speak of, no
readiness beyond "consumers started", no shutdown grace.

    python -m meshrun_bench.raw --transport memory --orders-port 18081 --users-port 18084
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from meshrun_bench.raw_kafka import KafkaPipeline
from meshrun_bench.raw_pipeline import Pipeline, QueuePipeline

DEFAULT_ITEMS = [{"sku": "DEMO-WIDGET", "quantity": 1, "unit_price": 1999}]


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Users:
    """The bare notification recorder, answering the same GET /notifications and /stats as the User service."""

    def __init__(self, machine_token: str) -> None:
        self.allowed = {f"Bearer {machine_token}"}
        self.store: dict[str, dict[str, Any]] = {}
        self.listed: list[dict[str, Any]] = []
        self.per_order: dict[str, int] = {}
        self.duplicates = 0

    async def notify(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") not in self.allowed:
            return _json({"error": "invalid_token"}, 401)
        data = orjson.loads(await request.read())
        key = request.headers.get("Idempotency-Key") or data["invoice_id"]
        if key in self.store:
            self.duplicates += 1
            return _json({"status": "duplicate"}, 200)
        note = {"invoice_id": data["invoice_id"], "order_id": data["order_id"], "user": data["user"],
                "received_at": time.time(), "seq": len(self.listed) + 1}
        self.store[key] = note
        self.listed.append(note)
        self.per_order[note["order_id"]] = self.per_order.get(note["order_id"], 0) + 1
        return _json({"status": "notified"}, 201)

    async def notifications(self, request: web.Request) -> web.Response:
        notes = self.listed[int(request.query.get("since", "0")):]
        return _json({"count": len(notes), "notifications": notes}, 200)

    async def stats(self, request: web.Request) -> web.Response:
        return _json({"notifications": len(self.listed), "orders": len(self.per_order),
                      "orders_notified_more_than_once": sum(1 for c in self.per_order.values() if c > 1),
                      "duplicates_absorbed": self.duplicates}, 200)




def order_app(pipeline: Pipeline, user_tokens: dict[str, dict[str, Any]]) -> web.Application:
    async def place(request: web.Request) -> web.Response:
        claims = user_tokens.get(request.headers.get("Authorization", ""))
        if claims is None:
            return _json({"error": "invalid_token"}, 401)
        order_id = request.match_info["order_id"]
        body = await request.read()
        data = orjson.loads(body) if body else {}
        order = {"event_id": uuid.uuid4().hex, "order_id": order_id, "customer": claims["sub"],
                 "items": data.get("items", DEFAULT_ITEMS), "currency": data.get("currency", "EUR")}
        await pipeline.publish_order(orjson.dumps(order), order_id.encode())
        return _json({"order_id": order_id, "event_id": order["event_id"], "status": "accepted"}, 202)

    async def ready(request: web.Request) -> web.Response:
        return _json({"status": "ready"}, 200)

    app = web.Application()
    app.router.add_post("/orders/{order_id}", place)
    app.router.add_get("/ready", ready)
    return app


def users_app(users: Users) -> web.Application:
    app = web.Application()
    app.router.add_post("/notify-user", users.notify)
    app.router.add_get("/notifications", users.notifications)
    app.router.add_get("/notifications/stats", users.stats)
    app.router.add_get("/ready", users.stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    user_token = os.environ.get("MESHRUN_RAW_USER_TOKEN") or uuid.uuid4().hex
    machine_token = uuid.uuid4().hex
    users = Users(machine_token)
    users_url = f"http://{args.host}:{args.users_port}"
    pipeline: Pipeline
    if args.transport == "kafka":
        pipeline = KafkaPipeline(users_url, machine_token, args.bootstrap)
    else:
        pipeline = QueuePipeline(users_url, machine_token)
    runners = [web.AppRunner(users_app(users), access_log=None),
               web.AppRunner(order_app(pipeline, {f"Bearer {user_token}": {"sub": "alice"}}), access_log=None)]
    started = time.perf_counter()
    for runner, port in zip(runners, (args.users_port, args.orders_port)):
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
    await pipeline.start()
    sys.stdout.write(orjson.dumps({"event": "raw_ready", "seconds": round(time.perf_counter() - started, 3),
                                   "transport": args.transport}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in reversed(runners):
        await runner.cleanup()
    await pipeline.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("memory", "kafka"), default="memory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--orders-port", type=int, required=True)
    parser.add_argument("--users-port", type=int, required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    if os.environ.get("MESHRUN_UVLOOP", "1") != "0":  # the same event loop as `meshrun up`
        try:
            import uvloop

            uvloop.run(serve(args))
            return
        except ImportError:
            pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
