"""The `meshrun` command: parses flags, calls into the package, prints. No business logic lives here."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

import click

from meshrun.config import MeshConfig, load_config
from meshrun.errors import MeshrunError
from meshrun.logs import configure_logging, flush_logs
from meshrun.loop import run_loop
from meshrun.registry import load_services, select

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from meshrun.transport.base import TransportAdmin

T = TypeVar("T")


def _names(value: str | None) -> list[str]:
    return [n.strip() for n in (value or "").split(",") if n.strip()]


def _load(config_path: str, transport: str | None) -> MeshConfig:
    config = load_config(config_path)
    return config.with_transport(transport) if transport else config


def fail(error: Exception) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


config_option = click.option("--config", "config_path", envvar="MESHRUN_CONFIG", default="services.toml",
                              show_default=True, help="services.toml to read (env MESHRUN_CONFIG).")
transport_option = click.option("--transport", type=click.Choice(["memory", "kafka"]), default=None,
                                help="Override mesh.transport from the file.")

# The entry-point group through which other distributions add commands to `meshrun` (the benchmark adds `bench`).
COMMANDS_ENTRY_POINTS = "meshrun.commands"


class MeshrunGroup(click.Group):
    """meshrun's own commands, then the click commands installed distributions declare in `meshrun.commands`.

    Those are looked up only when asked for or listed (--help), so `meshrun up` starts without reading any package
    metadata; a name of meshrun's own is never replaced.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_command_entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry_point = _command_entry_points().get(cmd_name)
        return _load_command(entry_point) if entry_point is not None else None


def _command_entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMANDS_ENTRY_POINTS)}


def _load_command(entry_point: EntryPoint) -> click.Command:
    command = entry_point.load()
    if not isinstance(command, click.Command):
        raise click.ClickException(f"{entry_point.name} = {entry_point.value} (entry points {COMMANDS_ENTRY_POINTS}) "
                                   f"is not a click command")
    return command


@click.group(cls=MeshrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshrun")
def main() -> None:
    """meshrun: run event-driven services from one services.toml, in memory or on Kafka."""


@main.command()
@config_option
@transport_option
@click.option("--only", help="Comma-separated services to run (default: all).")
@click.option("--except", "exclude", help="Comma-separated services not to run.")
@click.option("--log-format", type=click.Choice(["console", "json"]), envvar="MESHRUN_LOG_FORMAT", default=None,
              help="console (default) or json, one object per line (env MESHRUN_LOG_FORMAT).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--ready-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every service to report ready.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes sharing each HTTP port (SO_REUSEPORT), for stateless HTTP services on Kafka, "
                   "e.g. --only orders --workers 2.")
def up(config_path: str, transport: str | None, only: str | None, exclude: str | None, log_format: str | None,
       log_level: str | None, ready_timeout: float, workers: int) -> None:
    """Start the services of services.toml and run until Ctrl-C or SIGTERM."""
    from meshrun.runtime import Mesh
    from meshrun.transport.registry import transport_class

    try:
        config = _load(config_path, transport)
        names = select(config, _names(only), _names(exclude))
        if workers > 1 and transport_class(config.transport).in_process:
            raise MeshrunError(f"--workers needs a transport that crosses processes, such as kafka: the "
                               f"{config.transport} transport lives inside one process, so workers would not see "
                               "each other's events")
    except MeshrunError as exc:
        fail(exc)
    if workers > 1:
        argv = ["--config", config_path, "--transport", config.transport, "--only", ",".join(names),
                "--ready-timeout", str(ready_timeout)]
        argv += ["--log-format", log_format] if log_format else []
        argv += ["--log-level", log_level] if log_level else []
        sys.exit(_run_workers(workers, argv))
    configure_logging(log_format or config.log_format, log_level or config.log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        mesh = Mesh(config, names)

        def exit_now(event: str, code: int) -> None:
            mesh.log.error(event, grace_period=config.grace_period)
            flush_logs()
            os._exit(code)

        def on_signal() -> None:
            # The first signal stops gracefully, within grace_period plus STOP_MARGIN seconds even when a broker or
            # a downstream service is away; a second one (Ctrl-C again) exits at once. Either way nothing acknowledged
            # is lost: what was not committed is redelivered to the next consumer.
            if stop.is_set():
                exit_now("mesh_stopped_at_second_signal", 130)
            stop.set()
            loop.call_later(config.grace_period + STOP_MARGIN, exit_now, "mesh_stop_timed_out", 1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if mesh.transport.in_process and len(names) < len(config.services):
            mesh.log.warning("memory_transport_is_per_process",
                             hint="events do not cross processes; use --transport kafka to split a mesh")
        await mesh.run(stop, ready_timeout)

    try:
        run_loop(serve)
    except (MeshrunError, TimeoutError) as exc:
        fail(exc)


# Seconds a graceful stop may take beyond grace_period (commits, leaving groups, flushing the producer: each bounded
# on its own) before the process exits anyway.
STOP_MARGIN = 5.0


def _run_workers(workers: int, argv: list[str]) -> int:
    """Run `meshrun up` in `workers` processes that share their ports; forward Ctrl-C/SIGTERM; wait for all."""
    import subprocess

    env = {**os.environ, "MESHRUN_REUSE_PORT": "1"}
    children = [subprocess.Popen([sys.executable, "-m", "meshrun", "up", *argv], env={**env, "MESHRUN_WORKER": str(i)})
                for i in range(workers)]

    def forward(signum: int, _: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    return max(codes)


@main.command()
@config_option
@transport_option
@click.option("--only", help="Comma-separated services to check (default: all).")
@click.option("--except", "exclude", help="Comma-separated services to leave out.")
def check(config_path: str, transport: str | None, only: str | None, exclude: str | None) -> None:
    """Validate services.toml and print what would run."""
    try:
        config = _load(config_path, transport)
        loaded = load_services(config, select(config, _names(only), _names(exclude)))
    except MeshrunError as exc:
        fail(exc)
    click.echo(f"{config.file}: ok, transport {config.transport}")
    click.echo(f"  {'service':<14}{'port':<7}{'group':<23}{'consumes':<18}publishes")
    for ls in loaded:
        group = f"{ls.config.group} x{ls.config.replicas}" if ls.service.subscribers else "-"
        click.echo(f"  {ls.name:<14}{ls.config.port if ls.config.port is not None else '-'!s:<7}{group:<23}"
                   f"{', '.join(ls.topics) or '-':<18}{', '.join(sorted(ls.service.publishes)) or '-'}")
    for topic in config.topics.values():
        click.echo(f"  topic {topic.name}: {topic.partitions} partition(s), replication {topic.replication_factor}")
    from meshrun.security_warnings import security_warnings

    for warning in security_warnings(config):
        click.echo(f"warning: {warning}", err=True)


def _with_admin(config: MeshConfig, work: Callable[["TransportAdmin"], Awaitable[T]]) -> T:
    """Run `work` against the topics and groups of the configured transport: the transport itself when it crosses
    processes (Kafka), the running mesh's admin endpoint when it lives inside `meshrun up` (memory)."""
    from meshrun.http.admin_client import MeshAdminClient
    from meshrun.transport import create_transport
    from meshrun.transport.registry import transport_class

    configure_logging("console", "warning")  # the command's output is the answer, not the client's chatter

    async def go() -> T:
        if transport_class(config.transport).in_process:
            holders = ", ".join(_services_holding_topics(config)) or "a service with topics"
            return await work(MeshAdminClient(config, f" A mesh split with --only/--except serves this port from "
                                                      f"the process that runs any of {holders} (a process whose "
                                                      "services use no topic does not open it)"))
        transport = create_transport(config)
        await transport.start()
        try:
            return await work(transport)
        finally:
            await transport.stop()

    return asyncio.run(go())


def _services_holding_topics(config: MeshConfig) -> list[str]:
    """The services whose process opens the admin port (they publish or consume a topic), for an error message."""
    try:
        loaded = load_services(config, list(config.services))
    except MeshrunError:  # the message is about the port; `meshrun check` reports what does not load
        return [s.name for s in config.services.values() if s.group]
    return [ls.name for ls in loaded if ls.topics or ls.service.publishes]


@main.command()
@config_option
@transport_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (topics, partitions, records, each group's offsets and lag) for scripts.")
def topics(config_path: str, transport: str | None, as_json: bool) -> None:
    """List topics, their partitions and records (dead letters included) and each consumer group's lag."""
    import json

    from meshrun.http.admin import topic_infos_to_json

    try:
        config = _load(config_path, transport)
        infos = topic_infos_to_json(_with_admin(config, lambda admin: admin.describe()))
    except MeshrunError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps({"transport": config.transport, "topics": infos}, indent=2))
        return
    width = max([len("topic"), *(len(info["name"]) for info in infos)]) + 2
    click.echo(f"{'topic':<{width}}{'partitions':>10}{'records':>10}")
    for info in infos:
        records = info["records"]
        click.echo(f"{info['name']:<{width}}{info['partitions']:>10}{records:>10}")
        if info["name"].endswith(".dlq") and records:
            # A dead letter is a record no handler could take: say so on its own line, not only as a number.
            click.echo(f"  ! {records} dead-lettered record(s) of {info['name'].removesuffix('.dlq')}: "
                       "their meshrun-dlq-* headers name the group, the error and the attempts")
        for group, lags in sorted(info["groups"].items()):
            total = sum(p["lag"] for p in lags)
            detail = " ".join(f"p{p['partition']}:{p['committed'] if p['committed'] is not None else '-'}"
                              f"/{p['log_end']}" for p in lags)
            click.echo(f"  {group:<30} lag {total:<8} {detail}")


@main.command()
@config_option
@transport_option
@click.option("--group", required=True, help="Consumer group to move.")
@click.option("--topic", required=True)
@click.option("--to", "target", required=True, help="earliest, latest or an ISO timestamp (2026-01-31T12:00:00Z).")
def replay(config_path: str, transport: str | None, group: str, topic: str, target: str) -> None:
    """Reset a consumer group's offsets so it re-reads a topic.

    On Kafka this is refused while the group has live members. On the in-memory transport the running mesh
    pauses its own members of the group, moves the offsets and resumes them.
    """
    from meshrun.transport.base import parse_reset_target

    try:
        to = parse_reset_target(target)
    except ValueError as exc:
        fail(MeshrunError(f"--to: {exc}"))
    try:
        config = _load(config_path, transport)
        offsets = _with_admin(config, lambda admin: admin.reset_offsets(group, topic, to))
    except MeshrunError as exc:
        fail(exc)
    for partition, offset in sorted(offsets.items()):
        click.echo(f"{group} {topic}[{partition}] -> offset {offset}")


def _register_optional_commands() -> None:
    """The auth commands are added when meshrun.auth is importable (other distributions' come through MeshrunGroup)."""
    import importlib
    import importlib.util

    for module_name in ("meshrun.auth.cli",):
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
        except ModuleNotFoundError:  # its parent package is not there either
            continue
        module = importlib.import_module(module_name)
        for command in module.commands:
            main.add_command(command)


_register_optional_commands()
