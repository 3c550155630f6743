"""services.toml -> frozen dataclasses, validated with errors that name the file, the key and the value.

This module only reads and checks the file; what the named service modules declare is checked by `registry`.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from meshrun.errors import ConfigError
from meshrun.tls import cleartext_problem
from meshrun.state.base import DEFAULT_STATE_TTL
from meshrun.state.url import DEFAULT_STATE, check_state_url

TRANSPORTS = ("memory", "kafka")  # meshrun's own; other distributions may install more (meshrun.transport.registry)
LOG_FORMATS = ("console", "json")
START_FROM = ("earliest", "latest")
StartFrom = Literal["earliest", "latest"]  # where a new consumer group starts


def kafka_option_types() -> dict[str, type]:
    """The options `[transport.kafka]` accepts and their types, as the Kafka transport declares them (env
    MESHRUN_KAFKA_<KEY> overrides each). Imported when asked: the transport package imports this module."""
    from meshrun.transport.kafka_settings import KAFKA_OPTIONS

    return {option.name: option.kind for option in KAFKA_OPTIONS}


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    partitions: int = 1
    replication_factor: int = 1


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How a failing handler is retried before its event goes to the dead-letter topic `<topic>.dlq`."""

    max_attempts: int = 5
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    dead_letter: bool = True


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    module: str
    port: int | None = None
    group: str | None = None
    replicas: int = 1
    start_from: StartFrom = "earliest"
    audience: str | None = None
    # The access-token profiles its guard accepts (meshrun.auth.verify.PROFILE_TYPES): RFC 9068's at+jwt, or
    # "JWT" for plain JWTs such as Spring Authorization Server's.
    token_typ: tuple[str, ...] = ("at+jwt",)
    retry: RetryConfig = field(default_factory=RetryConfig)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemoryTransportConfig:
    retention: int = 2_000
    publish_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class KafkaTransportConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeshConfig:
    file: str
    transport: str = "memory"
    host: str = "127.0.0.1"
    issuer: str | None = None
    trust_proxy_tls: bool = False  # a proxy or sidecar encrypts the traffic: plain http beyond loopback is allowed
    admin_port: int | None = None
    grace_period: float = 10.0
    state: str = DEFAULT_STATE  # where services keep what must survive a restart (meshrun.state.url)
    state_ttl: float = DEFAULT_STATE_TTL  # seconds idempotency keys are kept
    log_level: str = "info"
    log_format: str = "console"
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    topics: dict[str, TopicConfig] = field(default_factory=dict)
    memory: MemoryTransportConfig = field(default_factory=MemoryTransportConfig)
    kafka: KafkaTransportConfig = field(default_factory=KafkaTransportConfig)
    # [transport.<name>] tables of transports other distributions installed, as written (each reads its own).
    transport_tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return Path(self.file).resolve().parent

    def with_transport(self, transport: str) -> "MeshConfig":
        if transport not in TRANSPORTS and transport not in installed_transports():
            raise ConfigError(self.file, [f"unknown transport {transport!r} (expected {_one_of(installed_transports())})"])
        return replace(self, transport=transport)

    def service_url(self, name: str) -> str:
        service = self.services[name]
        return f"http://{self.host}:{service.port}"


class _Table:
    """Reads one TOML table, recording problems as `key.path: message` instead of raising at the first one."""

    def __init__(self, data: dict[str, Any], path: str, problems: list[str]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                self.problems.append(f"{self.key(name)}: missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a port of `true` is still wrong.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            self.problems.append(f"{self.key(name)}: expected {expected}, got {type(value).__name__} {value!r}")
            return default
        return value

    def positive(self, name: str, default: Any, kind: type = int) -> Any:
        kinds: tuple[type, ...] = (int, float) if kind is float else (int,)
        value = self.get(name, kinds, default)
        if value is not None and value <= 0:
            self.problems.append(f"{self.key(name)}: must be greater than 0, got {value!r}")
            return default
        return kind(value) if value is not None else None

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            self.problems.append(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
            return default
        return str(value)

    def table(self, name: str) -> "_Table":
        value = self.get(name, dict, {})
        return _Table(value, self.key(name), self.problems)

    def finish(self) -> None:
        for extra in sorted(set(self.data) - self.seen):
            self.problems.append(f"{self.key(extra)}: unknown key")


TOKEN_TYPS = ("at+jwt", "JWT")


def _token_typ(s: _Table) -> tuple[str, ...]:
    """`token_typ = "JWT"` or a list of profiles: which access tokens the service's guard accepts."""
    value = s.get("token_typ", (str, list), "at+jwt")
    values = [value] if isinstance(value, str) else value
    wrong = [v for v in values if v not in TOKEN_TYPS]
    if wrong or not values:
        s.problems.append(f"{s.key('token_typ')}: {wrong[0] if wrong else value!r} is not one of "
                          f"{', '.join(TOKEN_TYPS)} (or a list of them)")
        return ("at+jwt",)
    return tuple(dict.fromkeys(values))


def installed_transports() -> list[str]:
    """meshrun's transports and those other distributions registered (read from their entry points)."""
    from meshrun.transport.registry import transport_names

    return [*TRANSPORTS, *sorted(set(transport_names()) - set(TRANSPORTS))]


def _one_of(names: list[str]) -> str:
    return " or ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} or {names[-1]}"


def load_config(path: str | os.PathLike[str]) -> MeshConfig:
    """Read and validate a services.toml; raises ConfigError listing every problem found."""
    file = str(path)
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(file, ["file not found (pass --config PATH or set MESHRUN_CONFIG)"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [f"not valid TOML: {exc}"]) from None
    return parse_config(data, file)


def parse_config(data: dict[str, Any], file: str = "services.toml") -> MeshConfig:
    problems: list[str] = []
    root = _Table(data, "", problems)

    mesh = root.table("mesh")
    transport = mesh.get("transport", str, "memory")
    if transport not in TRANSPORTS and transport not in installed_transports():  # metadata read only if needed
        problems.append(f"mesh.transport: unknown transport {transport!r} (expected {_one_of(installed_transports())})")
    host = mesh.get("host", str, "127.0.0.1")
    issuer = mesh.get("issuer", str, None)
    trust_proxy_tls = mesh.get("trust_proxy_tls", bool, False)
    admin_port = mesh.get("admin_port", int, None)
    grace = mesh.positive("grace_period", 10.0, float)
    state = mesh.get("state", str, DEFAULT_STATE)
    state_ttl = mesh.positive("state_ttl", DEFAULT_STATE_TTL, float)
    log_level = mesh.choice("log_level", ("debug", "info", "warning", "error"), "info")
    log_format = mesh.choice("log_format", LOG_FORMATS, "console")
    mesh.finish()

    transport_table = root.table("transport")
    mem = transport_table.table("memory")
    memory = MemoryTransportConfig(
        retention=mem.positive("retention", 2_000),
        publish_timeout=mem.positive("publish_timeout", 10.0, float),
    )
    mem.finish()
    kafka_table = transport_table.table("kafka")
    options: dict[str, Any] = {}
    for option, kind in kafka_option_types().items():
        value = kafka_table.positive(option, None, float) if kind is float else kafka_table.get(option, kind, None)
        if value is not None:
            options[option] = value
    kafka_table.finish()
    # The table of another installed transport is that transport's to read (Transport.from_config).
    others = set(transport_table.data) - set(TRANSPORTS)
    plugin_tables = {name: transport_table.table(name).data for name in installed_transports()
                     if name in others and isinstance(transport_table.data.get(name), dict)} if others else {}
    transport_table.finish()
    bootstrap = options.pop("bootstrap_servers", "127.0.0.1:9092")

    topics: dict[str, TopicConfig] = {}
    topics_table = root.table("topics")
    for name in list(topics_table.data):
        t = topics_table.table(name)
        if not isinstance(topics_table.data.get(name), dict):
            continue
        topics[name] = TopicConfig(
            name=name,
            partitions=t.positive("partitions", 1),
            replication_factor=t.positive("replication_factor", 1),
        )
        t.finish()

    services: dict[str, ServiceConfig] = {}
    services_table = root.table("services")
    ports: dict[int, str] = {admin_port: "the mesh admin endpoint (mesh.admin_port)"} if admin_port else {}
    groups: dict[str, str] = {}
    for name in list(services_table.data):
        if not isinstance(services_table.data.get(name), dict):
            services_table.get(name, dict)
            continue
        s = services_table.table(name)
        module = s.get("module", str, "", required=True)
        port = s.get("port", int, None)
        if port is not None and not 0 <= port <= 65535:
            problems.append(f"services.{name}.port: {port} is not a TCP port (0-65535)")
        elif port:
            if port in ports:
                problems.append(f"port {port} used by both {ports[port]} and {name}")
            ports[port] = name
        group = s.get("group", str, None)
        if group is not None:
            if not group:
                problems.append(f"services.{name}.group: must not be empty")
            elif group in groups:
                problems.append(
                    f"services.{name}.group: {group!r} is already the group of {groups[group]} "
                    "(use replicas = N to run several members of one service)"
                )
            groups[group] = name
        r = s.table("retry")
        retry = RetryConfig(
            max_attempts=r.positive("max_attempts", 5),
            backoff_initial=r.positive("backoff_initial", 0.05, float),
            backoff_max=r.positive("backoff_max", 2.0, float),
            dead_letter=r.get("dead_letter", bool, True),
        )
        r.finish()
        settings = s.get("settings", dict, {})
        services[name] = ServiceConfig(
            name=name,
            module=module,
            port=port,
            group=group,
            replicas=s.positive("replicas", 1),
            start_from=cast(StartFrom, s.choice("start_from", START_FROM, "earliest")),
            audience=s.get("audience", str, None),
            token_typ=_token_typ(s),
            retry=retry,
            settings=settings,
        )
        s.finish()
    root.finish()
    if not services and "services" not in problems:
        problems.append("services: no service declared (add a [services.NAME] table with a module)")

    config = MeshConfig(
        file=file,
        transport=transport,
        host=host,
        issuer=issuer,
        trust_proxy_tls=trust_proxy_tls,
        admin_port=admin_port,
        grace_period=grace,
        state=state,
        state_ttl=state_ttl,
        log_level=log_level,
        log_format=log_format,
        services=services,
        topics=topics,
        memory=memory,
        kafka=KafkaTransportConfig(bootstrap_servers=bootstrap, options=options),
        transport_tables=plugin_tables,
    )
    config = _apply_env(config, problems)
    _check_issuer_tls(config, problems)
    if problems:
        raise ConfigError(file, problems)
    return config


def _check_issuer_tls(config: MeshConfig, problems: list[str]) -> None:
    """Passwords, client secrets and tokens go to the issuer: beyond loopback only over TLS (ours or a proxy's)."""
    if config.trust_proxy_tls:
        return
    if config.issuer:
        key, url = "mesh.issuer", config.issuer
    elif "auth" in config.services and config.services["auth"].port is not None:
        key, url = "mesh.host", config.service_url("auth")  # the issuer defaults to the auth service's URL
    else:
        return
    problem = cleartext_problem(url, "the issuer")
    if problem:
        problems.append(f"{key}: {problem}")


def _apply_env(config: MeshConfig, problems: list[str]) -> MeshConfig:
    """Environment overrides for what differs between machines: the broker and its credentials, the state store."""
    state = os.environ.get("MESHRUN_STATE") or config.state
    problem = check_state_url(state)
    if problem:
        where = "env MESHRUN_STATE" if os.environ.get("MESHRUN_STATE") else "mesh.state"
        problems.append(f"{where}: {problem}")
    config = replace(config, state=state)
    options = dict(config.kafka.options)
    bootstrap = config.kafka.bootstrap_servers
    for option, kind in kafka_option_types().items():
        raw = os.environ.get(f"MESHRUN_KAFKA_{option.upper()}")
        if raw is None:
            continue
        if option == "bootstrap_servers":
            bootstrap = raw
            continue
        try:
            options[option] = kind(raw)
        except ValueError:
            problems.append(f"env MESHRUN_KAFKA_{option.upper()}: expected {kind.__name__}, got {raw!r}")
    return replace(config, kafka=KafkaTransportConfig(bootstrap_servers=bootstrap, options=options))
