"""What a running service's code can reach: its settings, logger, publishing, an HTTP client, other services.

Built by the runtime for each service; services never construct transports or sessions themselves.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Sequence

import aiohttp

from meshrun.config import MeshConfig, ServiceConfig
from meshrun.errors import TransportStateError
from meshrun.events import Event, encode, transport_headers
from meshrun.service_state import ServiceState
from meshrun.state.base import StateSpace
from meshrun.transport.base import Headers, Record, RecordMetadata, Transport

if TYPE_CHECKING:
    from meshrun.auth.guard import BearerGuard


class ServiceContext:
    """One running service: configuration, logger, transport access and shared clients."""

    def __init__(self, config: ServiceConfig, mesh: MeshConfig, settings: Any, log: Any,
                 transport: Transport, store: StateSpace | None = None) -> None:
        self.name = config.name
        self.config = config
        self.mesh = mesh
        self.settings = settings
        self.log = log
        self.transport = transport
        self.state = ServiceState()  # what the service keeps between calls, by typed StateKey
        # What it keeps across restarts ([mesh] state); a context built outside a Mesh keeps it in memory.
        self.store = store if store is not None else _memory_space(config.name)
        self.guard: BearerGuard | None = None
        self._http: aiohttp.ClientSession | None = None

    async def publish(self, topic: str, event: Event | bytes, *, key: str | bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        """Publish an event (encoded once, here) or raw bytes; returns once the transport made it durable."""
        value, raw_key, headers = _record_of(event, key, headers)
        return await self.transport.publish(topic, value, key=raw_key, headers=headers)

    @property
    def http(self) -> aiohttp.ClientSession:
        """A keep-alive client session shared by this service's calls to other services."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10, connect=2),
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
            )
        return self._http

    def url_of(self, service: str) -> str:
        """Base URL of another service of this mesh, from services.toml (`settings.<service>_url` overrides)."""
        override = self.config.settings.get(f"{service}_url")
        if override:
            return str(override).rstrip("/")
        if service not in self.mesh.services or self.mesh.services[service].port is None:
            raise KeyError(f"service {service!r} has no port in {self.mesh.file}")
        return self.mesh.service_url(service)

    @property
    def issuer(self) -> str:
        """The authorization server's issuer URL: mesh.issuer, or the `auth` service's URL."""
        if self.mesh.issuer:
            return self.mesh.issuer.rstrip("/")
        return self.url_of("auth")

    async def close(self) -> None:
        if self._http is not None and not self._http.closed:
            await self._http.close()


def _memory_space(name: str) -> StateSpace:
    from meshrun.state.memory import MemoryStore

    return MemoryStore.space_of_its_own(name)


def _record_of(event: Event | bytes, key: str | bytes | None, headers: Headers) -> tuple[bytes, bytes | None, Headers]:
    if isinstance(event, Event):
        return encode(event), key.encode() if isinstance(key, str) else key, transport_headers(event) + headers
    return event, key.encode() if isinstance(key, str) else key, headers


def _retrieve(ack: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: a failed attempt's acks are dropped (the record is handled again), and asyncio would
    otherwise log every one of them as never retrieved."""
    if not ack.cancelled():
        ack.exception()


class EventContext:
    """The record being handled, and a logger bound with its topic, partition, offset, event id and trace id."""

    __slots__ = ("service", "record", "log", "acks", "finished")

    def __init__(self, service: ServiceContext, record: Record, log: Any) -> None:
        self.service = service
        self.record = record
        self.log = log
        self.acks: list[asyncio.Future[Any]] | None = None
        self.finished = False  # set by the runtime once the handler returned: its acks are collected then

    async def publish(self, topic: str, event: Event | bytes, *, key: str | bytes | None = None,
                      headers: Headers = (), wait: bool = False) -> RecordMetadata | None:
        """Publish an event from an event handler, in order with the handler's other publishes.

        By default this returns once the record is queued, without waiting for the broker: the next record of the
        partition is handled meanwhile, and the handled record's offset is committed only once every record its
        handler published is durable. A publish that fails makes the record be handled again (at least once).
        `wait=True` waits until this record is durable and returns where it landed, as `ServiceContext.publish`.
        """
        if wait:
            return await self.service.publish(topic, event, key=key, headers=headers)
        if self.finished:
            # Its record may be committed already, so nothing would wait for this acknowledgement.
            raise TransportStateError(
                "ctx.publish after the event handler returned: await it inside the handler, or use "
                "`await ctx.publish(..., wait=True)` / `ctx.service.publish(...)` from a background task")
        value, raw_key, headers = _record_of(event, key, headers)
        ack = await self.service.transport.send(topic, value, key=raw_key, headers=headers)
        if ack.done():
            ack.result()  # raises a publish that failed at once
            return None
        ack.add_done_callback(_retrieve)
        if self.acks is None:
            self.acks = [ack]
        else:
            self.acks.append(ack)
        return None


class BatchContext(EventContext):
    """The records of a batch handler's list of events (`service.subscribe(..., batch=N)`), in the list's order.

    `log` is bound with the topic, the partition and the range of offsets; `log_for(i)` with the topic, partition,
    offset, event id and trace id of the i-th event, as an EventContext's log. `publish` works as in an
    EventContext: the batch is committed once everything published while handling it is durable. `record` is the
    last record of the list.
    """

    __slots__ = ("records", "_bind")

    def __init__(self, service: ServiceContext, records: Sequence[Record], log: Any,
                 bind: Callable[[int], Any]) -> None:
        super().__init__(service, records[-1], log)
        self.records = records
        self._bind = bind

    def log_for(self, index: int) -> Any:
        """A logger bound with where the index-th event of the batch came from, and its event and trace ids."""
        return self._bind(index)
