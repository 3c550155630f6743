"""Transports: one interface (`base.Transport`), an in-memory and a Kafka implementation, and a factory."""
from __future__ import annotations

from meshrun.config import MeshConfig
from meshrun.transport.base import Record, RecordMetadata, Subscription, Transport
from meshrun.transport.delivery import PoisonEvent, RetryLater


def create_transport(config: MeshConfig) -> Transport:
    """The transport named by `mesh.transport` (or --transport), configured from services.toml."""
    if config.transport == "memory":
        from meshrun.transport.memory import InMemoryTransport

        return InMemoryTransport(config.memory)
    if config.transport == "kafka":
        from meshrun.transport.kafka import KafkaTransport

        return KafkaTransport(config.kafka)
    raise ValueError(f"unknown transport {config.transport!r} (expected memory or kafka)")


__all__ = ["Record", "RecordMetadata", "Subscription", "Transport", "PoisonEvent", "RetryLater", "create_transport"]
