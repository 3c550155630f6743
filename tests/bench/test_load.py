"""The load generator against the framework-free pipeline in this process: nothing lost, doubles are seen,
open loop measures from the due time. No timing is asserted."""
from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from meshrun_bench import load, probes
from meshrun_bench.raw import Users, order_app, users_app
from meshrun_bench.raw_pipeline import QueuePipeline

TOKEN = "user-token"


@pytest.fixture
async def raw_target(ports) -> AsyncIterator[load.Target]:
    users = Users("machine-token")
    target = load.Target(f"http://127.0.0.1:{ports['orders']}", f"http://127.0.0.1:{ports['users']}")
    pipeline = QueuePipeline(target.users_url, "machine-token")
    runners = [web.AppRunner(users_app(users)), web.AppRunner(order_app(pipeline, {f"Bearer {TOKEN}": {"sub": "a"}}))]
    for runner, port in zip(runners, (ports["users"], ports["orders"])):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await pipeline.start()
    yield target
    for runner in runners:
        await runner.cleanup()
    await pipeline.stop()


async def drive(target: load.Target, run: load.OrderRun, **kwargs) -> load.PipelineFigures:
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as poll:
        return await load.drive(http, poll, target, load.BearerHeader(TOKEN), run, **kwargs)


async def test_closed_loop_follows_every_order_to_its_notification(raw_target):
    figures = await drive(raw_target, load.OrderRun("t1", 200, "closed"), concurrency=8)
    assert (figures.sent, figures.accepted, figures.notified, figures.lost, figures.doubled) == (200, 200, 200, 0, 0)
    assert figures.latency_ms is not None and figures.latency_ms.samples == 200
    assert figures.latency_from == "send"


async def test_open_loop_counts_latency_from_the_due_time(raw_target):
    run = load.OrderRun("t2", 40, "open")
    figures = await drive(raw_target, run, rate=200.0)
    assert figures.notified == 40 and figures.latency_from == "due"
    assert [round(s - run.start[0], 6) for s in run.start[:3]] == [0.0, 0.005, 0.01]


async def test_orders_of_another_run_are_not_counted(raw_target):
    await drive(raw_target, load.OrderRun("before", 20, "closed"), concurrency=4)
    figures = await drive(raw_target, load.OrderRun("after", 10, "closed"), concurrency=4)
    assert figures.notified == 10 and figures.lost == 0


async def test_rejected_orders_are_not_lost(raw_target):
    run = load.OrderRun("t3", 5, "closed")
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as poll:
        figures = await load.drive(http, poll, raw_target, load.BearerHeader("wrong"), run, concurrency=2)
    assert figures.rejected == {"401": 5} and figures.accepted == 0 and figures.lost == 0


def test_an_order_listed_twice_by_the_user_service_is_doubled_and_one_never_listed_is_lost():
    run = load.OrderRun("t4", 3, "closed")
    run.status = [202, 202, 202]
    run.seen = bytearray([1, 2, 0])
    run.notified_at = [time.time()] * 3
    stats = {"orders_notified_more_than_once": 0, "duplicates_absorbed": 0}
    figures = run.figures("x", stats, {**stats, "orders_notified_more_than_once": 1})
    assert (figures.lost, figures.doubled, figures.doubled_in_records, figures.doubled_from_stats) == (1, 1, 1, 1)


def test_memory_and_listening_pids_come_from_proc():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert probes.pids_listening({port}) == {os.getpid(): [port]}
    rss = probes.rss_mb(os.getpid())
    assert rss is not None and rss > 0
