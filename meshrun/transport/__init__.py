"""Transports: one interface (`base.Transport`), an in-memory and a Kafka implementation, and a factory."""
from __future__ import annotations

from meshrun.config import MeshConfig
from meshrun.transport.base import Record, RecordMetadata, Subscription, Transport
from meshrun.transport.delivery import PoisonEvent, RetryLater
from meshrun.transport.registry import transport_class


def create_transport(config: MeshConfig) -> Transport:
    """The transport named by `mesh.transport` (or --transport), found among the installed transports
    (`meshrun.transport.registry`) and configured from services.toml."""
    return transport_class(config.transport).from_config(config)


__all__ = ["Record", "RecordMetadata", "Subscription", "Transport", "PoisonEvent", "RetryLater", "create_transport"]
