"""The Mesh: starts the chosen services on one asyncio loop, reports readiness, and stops them gracefully.

Shutdown order, written once: stop accepting HTTP and drain requests, stop consuming (in-flight handlers finish,
offsets are committed), run stop hooks, stop the transport.
"""
from __future__ import annotations

import asyncio
import errno
import gc
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, cast

import aiohttp
from aiohttp import web

from meshrun.config import MeshConfig, TopicConfig
from meshrun.context import BatchContext, EventContext, ServiceContext
from meshrun.errors import PortInUse
from meshrun.events import Event, EventDecodeError, decode
from meshrun.http.server import create_app
from meshrun.logs import flush_logs, mesh_logger, service_logger
from meshrun.registry import LoadedService, load_services
from meshrun.service import BatchEventHandler, EventHandler, Subscriber
from meshrun.transport import create_transport
from meshrun.transport.base import (
    Acks,
    BatchHandler,
    Handler,
    Record,
    ResetTarget,
    Subscription,
    SubscriptionState,
    Transport,
)
from meshrun.transport.delivery import PoisonEvent, dead_letter_topic


class DecodedEvents:
    """The last few thousand decoded events of this process, so that the consumer groups that read one record
    (Inventory, Email, Analytics and Billing all read each OrderPlaced) decode it once, not once each.

    Keyed by where the record lives and when it was written; events are frozen, so sharing them is safe. Only
    topics that several groups of this process read are kept. Bounded: groups read a record at nearly the same
    time, and a miss only costs a decode.
    """

    def __init__(self, capacity: int = 4096, shared_topics: frozenset[str] | None = None) -> None:
        self.capacity = capacity
        self.shared_topics = shared_topics  # None: every topic
        # An OrderedDict: popping the oldest of a plain dict gets slower as deleted slots pile up at its front.
        self._events: OrderedDict[tuple[str, int, int, int], Event] = OrderedDict()

    def decode(self, record: Record, event_type: type[Event]) -> Event:
        shared = self.shared_topics is None or record.topic in self.shared_topics
        if shared:
            key = (record.topic, record.partition, record.offset, record.timestamp_ms)
            event = self._events.get(key)
            if type(event) is event_type:
                return event
        try:
            event = decode(record.value, event_type)
        except EventDecodeError as exc:
            raise PoisonEvent(str(exc)) from None
        if shared:
            if len(self._events) >= self.capacity:
                self._events.popitem(last=False)
            self._events[key] = event
        return event


def tune_gc_for_serving() -> None:
    """Once a process serves: freeze what start-up allocated (modules, configuration, services: alive for the whole
    run, so the collector need not scan them again) and run the youngest generation's collection less often.

    A busy mesh allocates short-lived containers by the hundred thousand per second, nearly all freed by reference
    counting; at the default threshold (700) the collector ran thousands of times a second and took about 5 % of the
    CPU at 100,000 orders. MESHRUN_GC=default keeps Python's defaults.
    """
    if os.environ.get("MESHRUN_GC", "tuned") == "default":
        return
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(50_000, second, third)


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


def _session_of(ctx: ServiceContext) -> Callable[[], aiohttp.ClientSession]:
    """The service's shared HTTP session, looked up at each call (it is created on first use, again after a close)."""
    return lambda: ctx.http


@dataclass
class RunningService:
    loaded: LoadedService
    ctx: ServiceContext
    runner: web.AppRunner | None = None
    port: int | None = None
    subscriptions: list[Subscription] = field(default_factory=list)

    async def problems(self) -> list[str]:
        found = [s.problem or f"consumer of {s.topic} has not joined {s.group}" for s in self.subscriptions
                 if s.state is not SubscriptionState.ASSIGNED or s.problem]
        if self.ctx.guard is not None:
            problem = await self.ctx.guard.ready()
            if problem:
                found.append(problem)
        for check in self.loaded.service.ready_checks:
            try:
                problem = await check(self.ctx)
            except Exception as exc:  # a failing check means not ready, not a crash
                problem = f"{check.__name__}: {type(exc).__name__}: {exc}"
            if problem:
                found.append(problem)
        return found


class Mesh:
    """The services of one process, sharing one transport and one event loop."""

    def __init__(self, config: MeshConfig, names: list[str] | None = None,
                 transport: Transport | None = None) -> None:
        self.config = config
        self.names = names if names is not None else list(config.services)
        # A transport handed in is shared with other meshes (tests, embedding): its owner stops it.
        self.owns_transport = transport is None
        self.transport = transport or create_transport(config)
        self.services: dict[str, RunningService] = {}
        self.decoded = DecodedEvents()
        self.log = mesh_logger()
        self.started_at = 0.0
        self._transport_started = False
        self._admin: web.AppRunner | None = None

    def port_of(self, name: str) -> int:
        port = self.services[name].port
        if port is None:
            raise KeyError(f"service {name!r} has no HTTP port")
        return port

    def topics_needed(self, loaded: list[LoadedService]) -> list[TopicConfig]:
        needed: dict[str, TopicConfig] = {}
        for ls in loaded:
            for topic in ls.topics + sorted(ls.service.publishes):
                needed[topic] = self.config.topics[topic]
            for topic in ls.topics:
                if ls.config.retry.dead_letter:
                    source = self.config.topics[topic]
                    dlq = dead_letter_topic(topic)
                    needed[dlq] = self.config.topics.get(dlq) or TopicConfig(dlq, source.partitions,
                                                                             source.replication_factor)
        return list(needed.values())

    @staticmethod
    def shared_topics(loaded: list[LoadedService]) -> frozenset[str]:
        """Topics that more than one consumer group of this process reads."""
        readers: dict[str, int] = {}
        for ls in loaded:
            for topic in ls.topics:
                readers[topic] = readers.get(topic, 0) + 1
        return frozenset(t for t, n in readers.items() if n > 1)

    def decode_cache_size(self, shared: frozenset[str]) -> int:
        """Enough decoded events to cover how far apart this process's groups of one topic can be (what the
        transport lets one group get ahead of another on a partition)."""
        spread = self.transport.records_ahead_per_partition
        return max(4096, sum(self.config.topics[t].partitions for t in shared) * spread * 5 // 4)

    async def start(self) -> None:
        """Start the transport, then every service: HTTP first (others depend on it), then its consumers."""
        self.started_at = time.perf_counter()
        loaded = load_services(self.config, self.names)
        if self.owns_transport:
            await self.transport.start()
        self._transport_started = True
        needed = self.topics_needed(loaded)
        await self.transport.ensure_topics(needed)
        self.decoded.shared_topics = self.shared_topics(loaded)
        self.decoded.capacity = self.decode_cache_size(self.decoded.shared_topics)
        try:
            for ls in loaded:
                ctx = ServiceContext(ls.config, self.config, ls.settings, service_logger(ls.name), self.transport)
                running = self.services[ls.name] = RunningService(ls, ctx)
                if any(r.authenticated for r in ls.service.routes):
                    from meshrun.auth.guard import BearerGuard

                    ctx.guard = BearerGuard(issuer=ctx.issuer, audience=ls.config.audience or ls.name,
                                            session=_session_of(ctx))
                for hook in ls.service.on_start:
                    await hook(ctx)
                if ls.config.port is not None:
                    await self._start_http(running)
            for running in self.services.values():
                await self._start_consumers(running)
            # The admin endpoint serves a transport whose topics live in this process (in memory); one that crosses
            # processes (Kafka) is asked directly by `meshrun topics`, and its processes would all claim the port.
            # A process holding no topic has nothing to show or replay, so it leaves the port to the one that
            # does: `meshrun up --only users` runs next to `meshrun up --except users`.
            if self.config.admin_port is not None and self.transport.in_process and needed:
                await self._start_admin()
        except BaseException:
            await self.stop()
            raise

    async def _serve(self, name: str, app: web.Application, port: int,
                     key: str | None = None) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.grace_period,
                               handle_signals=False)
        await runner.setup()
        # `meshrun up --workers N` starts N processes that share each port; the kernel spreads connections.
        site = web.TCPSite(runner, self.config.host, port, reuse_address=True,
                           reuse_port=os.environ.get("MESHRUN_REUSE_PORT") == "1")
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(name, self.config.host, port, key) from None
            raise
        sockets = getattr(site._server, "sockets", None) or []
        return runner, sockets[0].getsockname()[1] if sockets else port

    async def _start_http(self, running: RunningService) -> None:
        ls = running.loaded
        app = create_app(ls.service, running.ctx, running.problems)
        running.runner, running.port = await self._serve(ls.name, app, ls.config.port or 0)

    async def _start_admin(self) -> None:
        from meshrun.http.admin import create_admin_app

        self._admin, _ = await self._serve("mesh admin", create_admin_app(self), self.config.admin_port or 0,
                                     "mesh.admin_port")

    async def _start_consumers(self, running: RunningService, topic: str | None = None) -> None:
        ls = running.loaded
        for subscriber in ls.service.subscribers:
            if topic is not None and subscriber.topic != topic:
                continue
            handler: Handler | BatchHandler
            if subscriber.batch > 1:
                handler = batch_event_handler(subscriber, running.ctx, self.decoded)
            else:
                handler = event_handler(subscriber, running.ctx, self.decoded)
            for replica in range(ls.config.replicas):
                sub = await self.transport.subscribe(
                    subscriber.topic, ls.config.group or ls.name, handler, retry=ls.config.retry,
                    start_from=ls.config.start_from,
                    member=f"{ls.name}-{replica + 1}", max_batch=subscriber.batch,
                )
                running.subscriptions.append(sub)

    async def replay(self, group: str, topic: str, to: ResetTarget) -> dict[int, int]:
        """Re-read `topic` in `group`: stop this process's members of the group, move its offsets, restart them.

        On Kafka the reset is refused while members in other processes are still live.
        """
        owners = [rs for rs in self.services.values()
                  if rs.loaded.config.group == group and topic in rs.loaded.topics]
        for rs in owners:
            leaving = [s for s in rs.subscriptions if s.topic == topic]
            await asyncio.gather(*(s.stop(self.config.grace_period) for s in leaving))
            rs.subscriptions = [s for s in rs.subscriptions if s.topic != topic]
        try:
            offsets = await self.transport.reset_offsets(group, topic, to)
        finally:
            for rs in owners:
                await self._start_consumers(rs, topic)
        self.log.info("group_replayed", group=group, topic=topic, to=str(to), offsets=offsets)
        return offsets

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until every service reports ready; returns seconds since start. Raises TimeoutError naming why."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            problems = {name: await rs.problems() for name, rs in self.services.items()}
            problems = {n: p for n, p in problems.items() if p}
            if not problems:
                return time.perf_counter() - self.started_at
            if time.monotonic() > deadline:
                detail = "; ".join(f"{n}: {', '.join(p)}" for n, p in problems.items())
                raise TimeoutError(f"mesh not ready after {timeout:.0f}s: {detail}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def stop(self) -> None:
        grace = self.config.grace_period
        runners = [rs.runner for rs in self.services.values() if rs.runner is not None]
        if self._admin is not None:
            runners.append(self._admin)
            self._admin = None
        await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
        await asyncio.gather(*(sub.stop(grace) for rs in self.services.values() for sub in rs.subscriptions),
                             return_exceptions=True)
        for rs in self.services.values():
            rs.runner = None
            for hook in rs.loaded.service.on_stop:
                try:
                    await hook(rs.ctx)
                except Exception:
                    rs.ctx.log.exception("stop_hook_failed", hook=hook.__name__)
            if rs.ctx.guard is not None:
                await rs.ctx.guard.close()
            await rs.ctx.close()
        if self._transport_started:
            self._transport_started = False
            if self.owns_transport:
                await self.transport.stop()

    async def run(self, stop: asyncio.Event, ready_timeout: float = 60.0) -> None:
        """Start, report readiness, wait for `stop` (set by a signal), then shut down gracefully."""
        flusher = asyncio.create_task(self._flush_logs_periodically())
        await self.start()
        try:
            elapsed = await self.wait_ready(ready_timeout)
            self.log.info("mesh_ready", seconds=round(elapsed, 3), services=list(self.services),
                          transport=self.transport.name)
            tune_gc_for_serving()
            await stop.wait()
            self.log.info("mesh_stopping")
        finally:
            await self.stop()
            flusher.cancel()
        self.log.info("mesh_stopped")
        flush_logs()

    @staticmethod
    async def _flush_logs_periodically(interval: float = 0.1) -> None:
        while True:
            await asyncio.sleep(interval)
            flush_logs()
