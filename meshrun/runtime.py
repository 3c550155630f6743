"""The Mesh: starts the chosen services on one asyncio loop, reports readiness, and stops them gracefully.

Shutdown order, written once: stop accepting HTTP and drain requests, stop consuming (in-flight handlers finish,
offsets are committed), run stop hooks, stop the transport.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp
from aiohttp import web

from meshrun.config import MeshConfig, TopicConfig
from meshrun.context import ServiceContext
from meshrun.decoded_events import DecodedEvents
from meshrun.gc_tuning import tune_gc_for_serving
from meshrun.handler_adapters import batch_event_handler, event_handler
from meshrun.http.server import create_app
from meshrun.http.serving import serve_app
from meshrun.logs import (
    flush_logs,
    flush_logs_periodically,
    mesh_logger,
    service_logger,
)
from meshrun.registry import LoadedService, load_services
from meshrun.running import RunningService
from meshrun.state.base import Store, space_name
from meshrun.state.expiry import purge_expired_state
from meshrun.state.url import store_for
from meshrun.transport import create_transport
from meshrun.transport.base import (
    BatchHandler,
    Handler,
    ResetTarget,
    Transport,
)
from meshrun.transport.delivery import dead_letter_topic


def _session_of(ctx: ServiceContext) -> Callable[[], aiohttp.ClientSession]:
    """The service's shared HTTP session, looked up at each call (it is created on first use, again after a close)."""
    return lambda: ctx.http


class Mesh:
    """The services of one process, sharing one transport and one event loop."""

    def __init__(self, config: MeshConfig, names: list[str] | None = None,
                 transport: Transport | None = None, store: Store | None = None) -> None:
        self.config = config
        self.names = names if names is not None else list(config.services)
        # A transport handed in is shared with other meshes (tests, embedding): its owner stops it.
        self.owns_transport = transport is None
        self.transport = transport or create_transport(config)
        # A store handed in is shared with other meshes (two auth processes in a test): its owner closes it.
        self.owns_store = store is None
        self.store = store or store_for(config.state, config.base_dir)
        self._store_open = False
        self._purging: asyncio.Task[None] | None = None
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
        if self.owns_store:
            await self.store.open()
        self._store_open = True
        try:
            for ls in loaded:
                await self.store.open_space(space_name(ls.name))
            if self.owns_transport:
                await self.transport.start()
            self._transport_started = True
            needed = self.topics_needed(loaded)
            await self.transport.ensure_topics(needed)
            self.decoded.shared_topics = self.shared_topics(loaded)
            self.decoded.capacity = self.decode_cache_size(self.decoded.shared_topics)
            for ls in loaded:
                ctx = ServiceContext(ls.config, self.config, ls.settings, service_logger(ls.name), self.transport,
                                     self.store.space(ls.name))
                running = self.services[ls.name] = RunningService(ls, ctx)
                if any(r.authenticated for r in ls.service.routes):
                    from meshrun.auth.guard import BearerGuard

                    ctx.guard = BearerGuard(issuer=ctx.issuer, audience=ls.config.audience or ls.name,
                                            session=_session_of(ctx), allow_cleartext=self.config.trust_proxy_tls,
                                            token_typ=ls.config.token_typ)
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
            if self.owns_store:
                self._purging = asyncio.create_task(purge_expired_state(self.store, self.log))
        except BaseException:
            await self.stop()
            raise

    async def _start_http(self, running: RunningService) -> None:
        ls = running.loaded
        app = create_app(ls.service, running.ctx, running.problems)
        running.runner, running.port = await serve_app(ls.name, app, self.config.host, ls.config.port or 0,
                                                       grace_period=self.config.grace_period)

    async def _start_admin(self) -> None:
        from meshrun.http.admin import create_admin_app

        self._admin, _ = await serve_app("mesh admin", create_admin_app(self), self.config.host,
                                         self.config.admin_port or 0, grace_period=self.config.grace_period,
                                         key="mesh.admin_port")

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
        if self._purging is not None:
            self._purging.cancel()
            self._purging = None
        if self._store_open:
            self._store_open = False
            if self.owns_store:
                await self.store.close()

    async def run(self, stop: asyncio.Event, ready_timeout: float = 60.0) -> None:
        """Start, report readiness, wait for `stop` (set by a signal), then shut down gracefully."""
        flusher = asyncio.create_task(flush_logs_periodically())
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
