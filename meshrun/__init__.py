"""meshrun: one asyncio runtime for event-driven services, on an in-memory transport or on Kafka."""
from meshrun.context import BatchContext, EventContext, ServiceContext
from meshrun.events import Event
from meshrun.service import Service
from meshrun.errors import PoisonEvent, RetryLater

__all__ = ["BatchContext", "Event", "EventContext", "PoisonEvent", "RetryLater", "Service", "ServiceContext"]
__version__ = "0.1.0"
