"""One `meshrun bench` run, phase by phase: start (or attach), ready, tokens, warm-up, load, probes, stop, floor.

The order of the phases is written once, here; what each phase measures lives in `load`, `probes`, `launcher`.
"""
from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from meshrun.bench import credentials, load, probes
from meshrun.bench.launcher import (
    BenchError,
    Launched,
    config_for_split,
    mesh_process,
    raw_process,
    wait_port,
    wait_ready,
)
from meshrun.bench.report import (
    PipelineFigures,
    ProcessMemory,
    Progress,
    Report,
    environment,
)
from meshrun.config import MeshConfig, load_config
from meshrun.logs import configure_logging

REQUIRED = ("auth", "orders", "notification", "users")


@dataclass
class BenchOptions:
    config_path: str
    transport: str | None = None
    orders: int = 10_000
    concurrency: int = 32
    rate: float | None = None
    duration: float | None = None
    warmup: int = 200
    attach: bool = False
    pids: list[int] = field(default_factory=list)
    split: list[list[str]] | None = None
    compare_raw: bool = False
    user: str = "alice"
    password: str | None = None
    drain_timeout: float = 60.0
    ready_timeout: float = 90.0
    log_level: str = "info"
    keep_logs: bool = False
    token_seconds: float = 2.0
    progress: bool | None = None
    command: str = "meshrun bench"

    @property
    def count(self) -> int:
        return round(self.rate * self.duration) if self.rate and self.duration else self.orders


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_pids(config: MeshConfig) -> list[int]:
    """The local Kafka broker's processes (found by the bootstrap port), to count its CPU; none on memory."""
    if config.transport != "kafka":
        return []
    ports = {int(a.rpartition(":")[2]) for a in config.kafka.bootstrap_servers.split(",") if a.rpartition(":")[2]}
    return sorted(probes.pids_listening(ports))


def _load(options: BenchOptions) -> MeshConfig:
    config = load_config(options.config_path)
    if options.transport:
        config = config.with_transport(options.transport)
    missing = [n for n in REQUIRED if n not in config.services]
    if missing:
        raise BenchError(f"{config.file}: the benchmark needs the services {', '.join(REQUIRED)} of the order "
                         f"pipeline; missing: {', '.join(missing)}")
    if options.split:
        if config.transport != "kafka":
            raise BenchError("--split runs the mesh as several processes, which only the Kafka transport connects: "
                             "add --transport kafka")
        named = [n for group in options.split for n in group]
        unknown = sorted(set(named) - set(config.services))
        if unknown or sorted(named) != sorted(config.services):
            raise BenchError(f"--split must name every service of {config.file} once "
                             f"({', '.join(config.services)}); unknown or missing: "
                             f"{', '.join(unknown or sorted(set(config.services) ^ set(named)))}")
    return config


class Pipeline:
    """What the load goes through: URLs, the processes behind them, and how the user authenticates."""

    def __init__(self, name: str, target: load.Target, processes: list[tuple[str, int]],
                 broker: list[int] | None = None) -> None:
        self.name = name
        self.target = target
        self.processes = processes          # (label, pid)
        self.broker = broker or []          # the Kafka broker's pids, when it runs on this machine
        self.idle: dict[int, float | None] = {}

    def memory_idle(self) -> None:
        self.idle = {pid: probes.rss_mb(pid) for _, pid in self.processes}

    def memory(self) -> list[ProcessMemory]:
        return [ProcessMemory(label, pid, self.idle.get(pid), probes.rss_mb(pid)) for label, pid in self.processes]


def _sessions(options: BenchOptions) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """A keep-alive session for the orders (as many connections as orders in flight) and one for polling."""
    limit = options.concurrency if not options.rate else 0
    timeout = aiohttp.ClientTimeout(total=60)
    return (aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60), timeout=timeout),
            aiohttp.ClientSession(timeout=timeout))


async def warm_up(pipeline: Pipeline, auth: load.BearerHeader, options: BenchOptions, prefix: str) -> None:
    """Orders sent and awaited before measuring: connections, caches, the machine token, the allocator."""
    if not options.warmup:
        return
    say(f"{pipeline.name}: warm-up, {options.warmup} orders")
    http, poll_http = _sessions(options)
    async with http, poll_http:
        warm = load.OrderRun(prefix + "w", options.warmup, "closed")
        figures = await load.drive(http, poll_http, pipeline.target, auth, warm,
                                   concurrency=min(options.concurrency, options.warmup),
                                   drain_timeout=options.drain_timeout)
    if figures.lost or figures.rejected:
        raise BenchError(f"{pipeline.name}: warm-up failed: {figures.accepted} of {figures.sent} accepted "
                         f"({figures.rejected or 'no rejection'}), {figures.lost} never notified")


async def measure(pipeline: Pipeline, auth: load.BearerHeader, options: BenchOptions, prefix: str,
                  progress: Progress) -> PipelineFigures:
    """Drive the run's orders through `pipeline` and follow them to their notifications."""
    run = load.OrderRun(prefix, options.count, "open" if options.rate else "closed")
    say(f"{pipeline.name}: {run.count:,} orders, " + (f"open loop at {options.rate:g}/s" if options.rate else
                                                     f"closed loop, concurrency {options.concurrency}"))
    started = time.time()

    def show(r: load.OrderRun, phase: str) -> None:
        elapsed = max(time.time() - started, 1e-6)
        progress.update(pipeline.name, r.notified, r.count,
                        f"{phase}: sent {r.sent:,} accepted {r.accepted:,} ({r.notified / elapsed:,.0f}/s e2e)")

    http, poll_http = _sessions(options)
    meter = probes.CpuMeter([pid for _, pid in pipeline.processes], pipeline.broker)
    try:
        async with http, poll_http:
            figures = await load.drive(http, poll_http, pipeline.target, auth, run, concurrency=options.concurrency,
                                       rate=options.rate, drain_timeout=options.drain_timeout, progress=show,
                                       name=pipeline.name)
    finally:
        progress.clear()
    figures.cpu = meter.finish(figures.notified)
    figures.memory = pipeline.memory()
    return figures


async def probe_tokens(config: MeshConfig, issuer: str, token: str, options: BenchOptions,
                       report: Report) -> None:
    """The token endpoint's rate and the cost of verifying a user token on a resource server."""
    secret = credentials.client_secret(config)
    client = credentials.notification_client(config)
    if options.token_seconds > 0 and secret:
        rate, issued, failed = await probes.token_endpoint_rate(
            f"{issuer}/oauth2/token", client["client_id"], secret, seconds=options.token_seconds,
            scope=client.get("scope"), resource=client.get("audience"))
        report.token_endpoint_per_second = rate
        if failed:
            report.notes.append(f"token endpoint: {failed} of {issued + failed} requests failed")
    from meshrun.auth.guard import BearerGuard

    audience = config.services["orders"].audience or "orders"
    async with aiohttp.ClientSession() as http:
        guard = BearerGuard(issuer, audience, session=lambda: http)
        try:
            problem = await guard.ready()
            if problem:
                report.notes.append(f"token verification not measured: {problem}")
                return
            report.token_verification_us = probes.verification_cost(guard.verifier, token, "orders.write")
        finally:
            await guard.close()


async def bench_mesh(config: MeshConfig, options: BenchOptions, workdir: Path, report_args: dict[str, Any],
                     progress: Progress) -> Report:
    host = config.host
    urls = {n: config.service_url(n) for n, s in config.services.items() if s.port}
    issuer = (config.issuer or urls["auth"]).rstrip("/")
    target = load.Target(urls["orders"], urls["users"])
    launched: list[Launched] = []
    ready_seconds = None
    try:
        if config.transport == "kafka" and not options.attach:
            first = config.kafka.bootstrap_servers.split(",")[0]
            bhost, _, bport = first.rpartition(":")
            if not await wait_port(bhost or host, int(bport), 5.0):
                raise BenchError(f"no Kafka broker answers at {config.kafka.bootstrap_servers}: start one with "
                                 "`scripts/kafka start` (or set MESHRUN_KAFKA_BOOTSTRAP_SERVERS)")
        if options.attach:
            say(f"attaching to the running mesh at {', '.join(sorted(urls.values()))}")
            await wait_ready([], list(urls.values()), time.perf_counter(), options.ready_timeout)
            ports = {s.port for s in config.services.values() if s.port} | (
                {config.admin_port} if config.admin_port else set())
            owners: dict[int, list[int]] = ({pid: [] for pid in options.pids} if options.pids
                                            else probes.pids_listening(ports))
            processes = [(f"pid {pid}" + (f" :{','.join(map(str, p))}" if p else ""), pid)
                         for pid, p in sorted(owners.items())]
        else:
            groups = options.split or [list(config.services)]
            file = config_for_split(config.file, workdir) if options.split else config.file
            for group in groups:
                label = "mesh" if len(groups) == 1 else ",".join(group)
                launched.append(mesh_process(label, file, config.transport, workdir, options.log_level,
                                             group if options.split else None))
            say(f"starting the mesh ({config.transport}, {len(launched)} process(es)), logs in {workdir}")
            started = time.perf_counter()
            for proc in launched:
                proc.start()
            ready_seconds = round(await wait_ready(launched, list(urls.values()), started, options.ready_timeout), 3)
            say(f"mesh ready in {ready_seconds:.3f} s")
            processes = [(p.label, p.pid) for p in launched]
        broker = broker_pids(config)
        pipeline = Pipeline("meshrun", target, processes, broker)
        pipeline.memory_idle()
        password = credentials.user_password(config, options.user, options.password)
        audience = config.services["orders"].audience or "orders"
        token = await credentials.user_token(issuer, options.user, password, audience)
        auth = load.BearerHeader(token, lambda: credentials.user_token(issuer, options.user, password, audience))
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await warm_up(pipeline, auth, options, prefix)
        async with aiohttp.ClientSession() as http:
            tokens_before = await probes.machine_tokens_fetched(http, urls["notification"])
        figures = await measure(pipeline, auth, options, prefix, progress)
        figures.ready_seconds = ready_seconds
        async with aiohttp.ClientSession() as http:
            tokens_after = await probes.machine_tokens_fetched(http, urls["notification"])
        report = Report(meshrun=figures, **report_args)
        report.machine_tokens_fetched = {
            "during_run": tokens_after - tokens_before if tokens_after is not None and tokens_before is not None
            else None, "total": tokens_after}
        say("probing the token endpoint and token verification")
        await probe_tokens(config, issuer, token, options, report)
    finally:
        for proc in launched:
            code = proc.stop()
            if code not in (0, None):
                say(f"warning: {proc.label} exited with status {code} (log {proc.log})")
    report.mesh_log = {"format": "json", "level": options.log_level if launched else "as started",
                       "bytes": sum(p.log.stat().st_size for p in launched if p.log.exists()),
                       "files": [str(p.log) for p in launched] if options.keep_logs else []}
    if launched and ready_seconds is not None:
        report.mesh_log["mesh_ready_reported_seconds"] = [p.reported_ready for p in launched]
    return report


async def bench_raw(config: MeshConfig, options: BenchOptions, workdir: Path, progress: Progress) -> PipelineFigures:
    """The same load through the framework-free pipeline (`meshrun.bench.raw`) on free ports of this machine."""
    host = config.host
    orders_port, users_port = free_port(host), free_port(host)
    bootstrap = config.kafka.bootstrap_servers if config.transport == "kafka" else None
    proc = raw_process(config.transport, host, orders_port, users_port, workdir, bootstrap)
    token = uuid.uuid4().hex
    say(f"starting the framework-free pipeline ({config.transport})")
    started = time.perf_counter()
    proc.start(env={"MESHRUN_RAW_USER_TOKEN": token})
    try:
        urls = [f"http://{host}:{orders_port}", f"http://{host}:{users_port}"]
        ready = round(await wait_ready([proc], urls, started, options.ready_timeout), 3)
        pipeline = Pipeline("raw", load.Target(*urls), [("raw", proc.pid)], broker_pids(config))
        pipeline.memory_idle()
        prefix, auth = f"raw{uuid.uuid4().hex[:8]}", load.BearerHeader(token)
        await warm_up(pipeline, auth, options, prefix)
        figures = await measure(pipeline, auth, options, prefix, progress)
        figures.ready_seconds = ready
        return figures
    finally:
        proc.stop()


def run_bench(options: BenchOptions) -> Report:
    """Run the whole benchmark; raises a MeshrunError (BenchError, ConfigError) with what to do on failure."""
    from meshrun.cli import run_loop

    configure_logging("console", "warning")  # this process's own libraries (the JWKS cache) stay quiet
    config = _load(options)
    workdir = Path(tempfile.mkdtemp(prefix="meshrun-bench-"))
    progress = Progress(enabled=options.progress)
    report_args = {"command": options.command, "transport": config.transport, "config": config.file,
                   "environment": environment(), "mesh_log": {}}

    async def go() -> Report:
        report = await bench_mesh(config, options, workdir, report_args, progress)
        if options.compare_raw:
            report.raw = await bench_raw(config, options, workdir, progress)
        return report

    try:
        return run_loop(go)
    finally:
        if options.keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
