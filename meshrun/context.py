"""What a running service's code can reach: its settings, logger, publishing, an HTTP client, other services.

Built by the runtime for each service; services never construct transports or sessions themselves.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from meshrun.config import MeshConfig, ServiceConfig
from meshrun.events import Event, encode, transport_headers
from meshrun.transport.base import Headers, Record, RecordMetadata, Transport

if TYPE_CHECKING:
    from meshrun.auth.guard import BearerGuard


class ServiceContext:
    """One running service: configuration, logger, transport access and shared clients."""

    def __init__(self, config: ServiceConfig, mesh: MeshConfig, settings: Any, log: Any,
                 transport: Transport) -> None:
        self.name = config.name
        self.config = config
        self.mesh = mesh
        self.settings = settings
        self.log = log
        self.transport = transport
        self.state: dict[str, Any] = {}
        self.guard: BearerGuard | None = None
        self._http: aiohttp.ClientSession | None = None

    async def publish(self, topic: str, event: Event | bytes, *, key: str | bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        """Publish an event (encoded once, here) or raw bytes; returns once the transport made it durable."""
        if isinstance(event, Event):
            value = encode(event)
            headers = transport_headers(event) + headers
        else:
            value = event
        raw_key = key.encode() if isinstance(key, str) else key
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


class EventContext:
    """The record being handled, and a logger bound with its topic, partition, offset, event id and trace id."""

    __slots__ = ("service", "record", "log")

    def __init__(self, service: ServiceContext, record: Record, log: Any) -> None:
        self.service = service
        self.record = record
        self.log = log

    async def publish(self, topic: str, event: Event | bytes, *, key: str | bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        return await self.service.publish(topic, event, key=key, headers=headers)
