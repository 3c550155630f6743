"""Errors a meshrun user can hit, each with a message that says what to do.

Tracebacks are for meshrun's own bugs; everything raised from here is caught by the CLI and printed plainly.
"""
from __future__ import annotations


class MeshrunError(Exception):
    """Base class of every error meant to be shown to a user without a traceback."""


class ConfigError(MeshrunError):
    """services.toml (or a file it names) is invalid; holds every problem found, each naming file and key."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{file}: {len(problems)} problem(s)\n{lines}")


class PortInUse(MeshrunError):
    def __init__(self, service: str, host: str, port: int, key: str | None = None) -> None:
        super().__init__(
            f"service {service!r} cannot listen on {host}:{port}: the port is already in use "
            f"(is another meshrun running? change {key or f'services.{service}.port'} or stop the other process)"
        )


class UnknownTopic(MeshrunError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"unknown topic {topic!r}: declare it under [topics.{topic}] in services.toml")


class TransportStateError(MeshrunError):
    """A transport was used in the wrong lifecycle state (e.g. publish before start)."""


class GroupHasLiveMembers(MeshrunError):
    def __init__(self, group: str, members: int) -> None:
        super().__init__(
            f"consumer group {group!r} has {members} live member(s): stop the services of that group "
            "before resetting its offsets"
        )


class HandlerControl(MeshrunError):
    """Raised by an event handler (or around one) to steer its delivery: retry it later, dead-letter it at once.
    The retry policy (`meshrun.transport.delivery`) catches these; they are never a crash."""


class RetryLater(HandlerControl):
    """Raised by a handler for a transient failure (a dependency is down): retried without limit, never
    dead-lettered, so the event waits until the dependency is back."""


class PoisonEvent(HandlerControl):
    """Raised for a record that can never be handled (it cannot be decoded): dead-lettered at once."""


class PublishRefused(HandlerControl):
    """What a handler published was refused for good (say, too large for the topic): retried, then dead-lettered."""


class AuthError(MeshrunError):
    """A token, a key set or a request of the authorization server was refused or could not be checked; each
    subclass (in meshrun.auth) carries the status and OAuth error its HTTP answer needs."""


class TransportUnavailable(MeshrunError):
    """A publish could not be made durable in time, for a reason that passes by itself: the broker is away, or (in
    memory) consumers are too far behind. Nothing was accepted; retry after `retry_after` seconds. A handler that
    hits it waits and is handled again, without limit and never dead-lettered (see `delivery.deliver`)."""

    retry_after: float = 1.0


class StateError(MeshrunError):
    """The state store (`[mesh] state`) cannot be used as configured: says which URL and what to do."""


class StateUnavailable(StateError):
    """The state store cannot be read or written now (database down, file locked or read-only). What a handler
    was doing is retried without limit, never dead-lettered; an HTTP route answers 503 with Retry-After."""

    def __init__(self, url: str, detail: str, retry_after: float = 1.0) -> None:
        self.url = url
        self.retry_after = retry_after
        super().__init__(f"state store {url} is unavailable ({detail})")


class Backpressure(TransportUnavailable):
    """A publish waited too long for slow consumers to make room in a bounded in-memory partition."""


class SettingsError(MeshrunError):
    """A service's own [services.NAME.settings] table is invalid; each problem names its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class KeyStoreError(MeshrunError):
    """The signing keys directory cannot be used (unreadable, a broken key file, wrong permissions)."""


class TokenRequestFailed(MeshrunError):
    """The authorization server refused a token request, or could not be reached; says which and why."""

    def __init__(self, message: str, *, error: str | None = None, description: str | None = None,
                 status: int | None = None) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(message)


class TopicPartitionMismatch(TransportStateError):
    """A topic exists on the broker with another partition count than services.toml declares."""

    def __init__(self, topic: str, existing: int, configured: int) -> None:
        self.topic = topic
        self.existing = existing
        self.configured = configured
        super().__init__(
            f"topic {topic!r} exists with {existing} partitions, configured with {configured}: set "
            f"[topics.{topic}] partitions = {existing} in services.toml, or recreate the topic (Kafka cannot "
            "shrink a topic, and growing one moves keys to other partitions)"
        )


class BrokerUnavailable(TransportUnavailable):
    """The Kafka cluster could not be reached (or did not answer) within the configured time."""

    def __init__(self, bootstrap_servers: str, detail: str, retry_after: float = 1.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.retry_after = retry_after
        super().__init__(
            f"cannot reach Kafka at {bootstrap_servers} ({detail}): start a local broker with `scripts/kafka start`, "
            "or point [transport.kafka] bootstrap_servers (env MESHRUN_KAFKA_BOOTSTRAP_SERVERS) at your cluster"
        )


class HandlerMismatch(MeshrunError, TypeError):
    """A topic handler's first parameter does not take what `subscribe` would hand it (a list, or one event)."""
