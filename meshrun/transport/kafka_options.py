"""How `[transport.kafka]` options become aiokafka arguments: which client gets which option, TLS, and connecting.

Not a second configuration layer: `meshrun.config` validates the keys; this module only routes them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from meshrun.config import KafkaTransportConfig
from meshrun.errors import BrokerUnavailable, MeshrunError
from meshrun.transport.kafka_settings import KAFKA_OPTIONS, Goes, options_going_to
from meshrun.transport.kafka_backoff import pace_metadata_refresh

log = structlog.get_logger("meshrun.transport.kafka")

# Records fetched ahead of a partition's handler before that partition stops fetching, by default.
MAX_IN_FLIGHT_PER_PARTITION = 1000

# Which client takes which option: read from the one declaration of the options (kafka_settings).
_COMMON = options_going_to(Goes.EVERY_CLIENT)
_SSL_FILES = options_going_to(Goes.TLS_FILE)
_PRODUCER = options_going_to(Goes.PRODUCER)
_CONSUMER = options_going_to(Goes.CONSUMER)
_MESHRUN = options_going_to(Goes.MESHRUN)
KNOWN_OPTIONS = frozenset(option.name for option in KAFKA_OPTIONS if option.goes is not Goes.CONNECTION)


@dataclass(frozen=True)
class KafkaClientOptions:
    """The keyword arguments of each aiokafka client, and meshrun's own consumer tuning."""

    bootstrap_servers: str
    client_id: str
    common: dict[str, Any]
    producer: dict[str, Any]
    consumer: dict[str, Any]
    # How often a consumer commits the offsets its handlers finished (also the longest a fetch waits).
    commit_interval: float
    # Records fetched ahead of a partition's handler before that partition stops fetching.
    max_in_flight_per_partition: int
    # Handled records of a partition whose publishes may await the broker's acknowledgement at once.
    max_unacked_per_partition: int
    # How long a revoked partition's in-flight handler may run on before it is cancelled (and redelivered).
    revoke_grace_period: float
    # Idle consumers long-poll (see kafka_fetch); off when the configuration sets the fetch options itself.
    idle_long_poll: bool = True
    # Seconds a publish waits for its acknowledgement before failing as unavailable (BrokerUnavailable).
    publish_timeout: float = 10.0
    # Seconds a member may leave a partition's newer records unfetched before it is declared stalled and rejoins.
    stall_timeout: float = 30.0

    @property
    def connect_timeout(self) -> float:
        """How long start-up keeps retrying an unreachable cluster before giving up."""
        return float(self.common.get("request_timeout_ms", 40_000)) / 1000

    @classmethod
    def from_config(cls, config: KafkaTransportConfig) -> "KafkaClientOptions":
        options = dict(config.options)
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise MeshrunError(f"transport.kafka: unknown option(s) {', '.join(unknown)} "
                               f"(known: {', '.join(sorted(KNOWN_OPTIONS))})")
        common = {k: options[k] for k in _COMMON if k in options}
        context = _ssl_context(options)
        if context is not None:
            common["ssl_context"] = context
        consumer = {k: options[k] for k in _CONSUMER if k in options}
        consumer.setdefault("max_poll_records", 500)
        # Fetch at most 256 KiB per partition (aiokafka's default is 1 MiB): measured on a backlog of 60,000 orders,
        # a whole mesh grew to 320-620 MB RSS with 1 MiB fetches and stayed at 107 MB with 256 KiB.
        consumer.setdefault("max_partition_fetch_bytes", 256 * 1024)
        # A fetch is answered once 64 KiB are there or after a short wait, not as soon as one record is: measured with
        # `meshrun bench --transport kafka`, answering at once had the broker spend 0.48 ms of CPU per order on
        # fetches of one or two records (1,700 orders/s end to end); with 64 KiB / 10 ms it spent 0.07 ms, the
        # handlers got batches, and the mesh moved 3,150/s. Since heavy traffic waits longer anyway (25 ms, see
        # meshrun.transport.kafka_fetch), light traffic waits 5 ms rather than 10: p99 at a paced 300 orders/s fell
        # from 35-41 to 26-27 ms end to end, at 2.45 instead of 2.07 ms of CPU per order at that rate (the mesh then
        # uses 0.7 of a core instead of 0.58). Not fetch_max_wait_ms = 0: consumers then poll without pause, a core's
        # worth. Idle, a consumer long-polls instead.
        idle_long_poll = "fetch_min_bytes" not in consumer and "fetch_max_wait_ms" not in consumer
        consumer.setdefault("fetch_min_bytes", 64 * 1024)
        consumer.setdefault("fetch_max_wait_ms", 5)
        # A rebalance waits for each member's in-flight handlers (up to the revoke grace period): give members
        # time to rejoin after that instead of the session timeout aiokafka defaults to.
        consumer.setdefault("rebalance_timeout_ms", 60_000)
        return cls(
            bootstrap_servers=config.bootstrap_servers,
            client_id=str(options.get("client_id", "meshrun")),
            common=common,
            producer={"linger_ms": 0, **{k: options[k] for k in _PRODUCER if k in options}},
            consumer=consumer,
            commit_interval=int(options.get("commit_interval_ms", 100)) / 1000,
            max_in_flight_per_partition=int(options.get("max_in_flight_per_partition", MAX_IN_FLIGHT_PER_PARTITION)),
            max_unacked_per_partition=max(1, int(options.get("max_unacked_per_partition", 256))),
            revoke_grace_period=consumer["rebalance_timeout_ms"] / 2000,
            idle_long_poll=idle_long_poll,
            publish_timeout=float(options.get("publish_timeout", 10.0)),
            stall_timeout=float(options.get("stall_timeout", 30.0)),
        )


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext | None:
    """A TLS context when TLS is asked for, by protocol or by certificate files; None for plaintext."""
    files = {k: options[k] for k in _SSL_FILES if options.get(k)}
    protocol = str(options.get("security_protocol", "PLAINTEXT")).upper()
    if not files and protocol not in ("SSL", "SASL_SSL"):
        return None
    if files and protocol not in ("SSL", "SASL_SSL"):
        raise MeshrunError(f"transport.kafka: {', '.join(sorted(files))} given but security_protocol is {protocol}; "
                           "set security_protocol = \"SSL\" (or \"SASL_SSL\") to use TLS")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=files.get("ssl_cafile"),
                                                     certfile=files.get("ssl_certfile"),
                                                     keyfile=files.get("ssl_keyfile"))
        return context
    except (OSError, ssl.SSLError) as exc:
        raise MeshrunError(f"transport.kafka: cannot load the TLS files {files}: {exc}") from None


class Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: Startable, what: str, options: KafkaClientOptions) -> None:
    """Start an aiokafka client, retrying while the cluster is unreachable (a broker still starting, a blip).

    A client that could not start is closed before the error is raised (it holds a metadata task otherwise).
    """
    deadline = time.monotonic() + options.connect_timeout
    delay = 0.25
    pace_metadata_refresh(client)
    while True:
        try:
            await client.start()
            return
        except KafkaConnectionError as exc:
            if time.monotonic() + delay > deadline:
                await _close(client)
                raise BrokerUnavailable(options.bootstrap_servers,
                                        f"{what}: {exc}; gave up after {options.connect_timeout:.0f}s") from None
            log.warning("kafka_unreachable_retrying", client=what, bootstrap_servers=options.bootstrap_servers,
                        error=str(exc), retry_in=delay)
        except BaseException:
            await _close(client)
            raise
        # Outside the except blocks: a cancellation during the wait must not be taken for a start failure.
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)



async def _close(client: Startable) -> None:
    # Producers and consumers have stop(); the admin client has close().
    close = getattr(client, "stop", None) or getattr(client, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


class _RepeatedLogFilter(logging.Filter):
    """Lets one of each aiokafka message template through per interval and counts the rest.

    While a broker is down aiokafka logs every reconnect attempt (10 a second, at ERROR): the first line says what
    is wrong, the next ones only bury the service's own logs.
    """

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        template = str(record.msg)
        last, suppressed = self._last.get(template, (0.0, 0))
        if now - last < self.interval:
            self._last[template] = (last, suppressed + 1)
            return False
        self._last[template] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last {now - last:.0f}s)"
        return True


def quiet_repeated_aiokafka_logs() -> None:
    """Install the filter once per process on aiokafka's loggers (they log under `aiokafka.*`)."""
    # A logger's filters do not apply to its children's records: name each module that logs failures.
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.admin.client",
                 "aiokafka.consumer.consumer", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                 "aiokafka.producer.producer", "aiokafka.producer.sender"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RepeatedLogFilter) for f in logger.filters):
            logger.addFilter(_RepeatedLogFilter())
