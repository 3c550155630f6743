"""The `meshrun bench` command: parses flags, runs the benchmark, prints the table, writes the JSON.

The work lives in `meshrun_bench.runner`; this module only translates between the shell and it. `meshrun`
finds `bench` through the entry point `meshrun.commands` that bench/pyproject.toml declares.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from meshrun.errors import MeshrunError


def _split(value: str | None) -> list[list[str]] | None:
    if not value:
        return None
    groups = [[n.strip() for n in part.split(",") if n.strip()] for part in value.split("/")]
    return [g for g in groups if g]


def _check_accept_only(accept_only: bool, orders_workers: int, compare_raw: bool, split: str | None,
                       attach: bool) -> None:
    """The flags --accept-only refuses (the transport is checked with the config, in the runner)."""
    if orders_workers > 1 and not accept_only:
        raise click.UsageError("--orders-workers only applies with --accept-only")
    if not accept_only:
        return
    if compare_raw:
        raise click.UsageError("--accept-only and --compare-raw exclude each other: the framework-free floor is "
                               "measured end to end only")
    if split or attach:
        raise click.UsageError("--accept-only starts auth and orders itself: drop --split / --attach")


def _check_rounds(rounds: int, attach: bool, accept_only: bool) -> None:
    """Rounds restart the mesh and are compared end to end: what --attach and --accept-only do not do."""
    if rounds > 1 and attach:
        raise click.UsageError("--rounds and --attach exclude each other: each round starts and stops the mesh")
    if rounds > 1 and accept_only:
        raise click.UsageError("--rounds and --accept-only exclude each other: rounds are compared by their "
                               "end-to-end figures")


@click.command()
@click.option("--config", "config_path", envvar="MESHRUN_CONFIG", default="services.toml", show_default=True,
              help="services.toml of the mesh to measure (env MESHRUN_CONFIG).")
@click.option("--transport", type=click.Choice(["memory", "kafka"]), default=None,
              help="Override mesh.transport from the file (kafka: the broker of scripts/kafka or the config's).")
@click.option("--orders", type=click.IntRange(min=1), default=None,
              help="Closed loop: this many orders, as fast as --concurrency allows (default 10000).")
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True,
              help="Closed loop: orders in flight at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: orders per second, each sent when due (needs --duration).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: seconds of orders at --rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=200, show_default=True,
              help="Orders sent and awaited before measuring (not counted).")
@click.option("--attach", is_flag=True,
              help="Measure a mesh that is already running (e.g. split with `meshrun up --only`); start nothing.")
@click.option("--pids", default=None,
              help="With --attach: comma-separated pids whose memory to report (default: found by listening port).")
@click.option("--split", default=None,
              help="Start the mesh as several processes, services separated by ',' and processes by '/' "
                   "(e.g. auth,orders,users/billing/notification/inventory,email,analytics). Kafka only.")
@click.option("--compare-raw", is_flag=True,
              help="Also run the same load through the framework-free pipeline and print meshrun/raw ratios.")
@click.option("--accept-only", is_flag=True,
              help="Measure the Order service alone: start only auth and orders, count an order once its 202 "
                   "(sent after the broker acknowledged the order event) arrives, and count lost and doubled "
                   "events from the records the broker appended to order-events. Kafka only.")
@click.option("--orders-workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --accept-only: run the Order service as `meshrun up --only orders --workers N`, N processes "
                   "sharing its port (auth then runs in a process of its own).")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Repeat the whole measurement (start, measure, stop the mesh, then the floor) N times and report "
                   "the median round by end-to-end meshrun/raw ratio (or meshrun's rate), with every round listed.")
@click.option("--state", default=None, metavar="URL",
              help="[mesh] state of the measured mesh (memory, sqlite:///..., postgresql://...); default: a new "
                   "SQLite file per run, the default kind.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the figures to this file as JSON.")
@click.option("--user", default="alice", show_default=True, help="User whose token places the orders.")
@click.option("--password-stdin", is_flag=True,
              help="Read the user's password from stdin (default: env MESHRUN_BENCH_PASSWORD, else the demo "
                   "password of that user in the config).")
@click.option("--drain-timeout", type=float, default=60.0, show_default=True,
              help="Seconds without progress after the last accepted order before the missing ones count as lost.")
@click.option("--ready-timeout", type=float, default=90.0, show_default=True,
              help="Seconds to wait for the mesh to report ready.")
@click.option("--mesh-log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Log level of the mesh processes it starts (JSON lines to a file).")
@click.option("--keep-logs", is_flag=True, help="Keep the mesh's log files (printed path) instead of deleting them.")
@click.option("--token-seconds", type=float, default=2.0, show_default=True,
              help="Seconds spent measuring the token endpoint's rate after the run (0 skips it).")
@click.option("--progress/--no-progress", default=None,
              help="Progress line while it runs (default: when stdout is a terminal).")
def bench(config_path: str, transport: str | None, orders: int | None, concurrency: int, rate: float | None,
          duration: float | None, warmup: int, attach: bool, pids: str | None, split: str | None,
          compare_raw: bool, accept_only: bool, orders_workers: int, rounds: int, state: str | None,
          json_path: str | None, user: str,
          password_stdin: bool, drain_timeout: float, ready_timeout: float, mesh_log_level: str, keep_logs: bool,
          token_seconds: float, progress: bool | None) -> None:
    """Start the mesh, drive orders through the Order service, wait for every User notification, report.

    Closed loop with --orders N --concurrency C, or open loop with --rate R --duration S (latency from each
    order's due time, so it is free of coordinated omission). Reports launch-to-ready time, accepted and
    end-to-end orders per second, end-to-end latency, memory of every process, the token endpoint's rate, the
    cost of verifying a token, machine tokens fetched, and events lost and doubled from the User service's own
    records. --compare-raw adds the framework-free floor measured in the same run.

    --rounds N repeats all of it N times (meshrun then the floor in each round) and reports the median round, so
    one drift of the machine does not make the ratio.

    --accept-only measures the Order service alone on Kafka: orders per second accepted (each answered after the
    broker acknowledged its event), latency to the answer, lost and doubled from the broker's count of records.
    """
    from meshrun_bench.report import render_table
    from meshrun_bench.runner import BenchOptions, run_bench

    if rate is not None and orders is not None:
        raise click.UsageError("--orders (closed loop) and --rate (open loop) exclude each other")
    if (rate is None) != (duration is None):
        raise click.UsageError("--rate and --duration go together (open loop)")
    if pids and not attach:
        raise click.UsageError("--pids only makes sense with --attach")
    if split and attach:
        raise click.UsageError("--split starts processes; --attach measures running ones: choose one")
    _check_rounds(rounds, attach, accept_only)
    _check_accept_only(accept_only, orders_workers, compare_raw, split, attach)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        pid_list = [int(p) for p in pids.split(",") if p.strip()] if pids else []
    except ValueError:
        raise click.UsageError(f"--pids: expected comma-separated process ids, got {pids!r}") from None
    options = BenchOptions(
        config_path=config_path, transport=transport, orders=orders or (0 if rate else 10_000),
        concurrency=concurrency, rate=rate, duration=duration, warmup=warmup, attach=attach, pids=pid_list,
        split=_split(split), compare_raw=compare_raw, user=user, password=password,
        drain_timeout=drain_timeout, ready_timeout=ready_timeout, log_level=mesh_log_level, keep_logs=keep_logs,
        token_seconds=token_seconds, progress=progress, command=" ".join(["meshrun", *sys.argv[1:]]),
        accept_only=accept_only, orders_workers=orders_workers, rounds=rounds, state=state,
    )
    try:
        report = run_bench(options)
    except MeshrunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(render_table(report))
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
        click.echo(f"figures written to {json_path}", err=True)
    if any(report.lost_and_doubled()):  # in any round, not only the median one
        sys.exit(1)

