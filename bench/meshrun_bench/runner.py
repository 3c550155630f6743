"""One `meshrun bench` run, phase by phase: start (or attach), ready, tokens, warm-up, load, probes, stop, floor.

The order of the phases is written once, here; what each phase measures lives in `load`, `probes`, `launcher`.
Accept-only, the same phases run with only auth and orders started, and the load stops at the Order service's
answers: the broker's own count of order-events records tells what was lost or doubled.
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

from meshrun.config import KafkaTransportConfig, MeshConfig, load_config
from meshrun.logs import configure_logging
from meshrun.loop import run_loop
from meshrun.services.events import ORDER_EVENTS
from meshrun_bench import credentials, load, probes
from meshrun_bench.launcher import (
    BenchError,
    Launched,
    config_for_split,
    mesh_process,
    raw_process,
    wait_port,
    wait_ready,
)
from meshrun_bench.report import (
    PipelineFigures,
    ProcessMemory,
    Progress,
    Report,
    environment,
    median_of_rounds,
)

REQUIRED = ("auth", "orders", "notification", "users")
ACCEPT_ONLY_SERVICES = ("auth", "orders")   # the token issuer and the service measured, nothing downstream


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
    accept_only: bool = False       # measure the Order service alone: answers only, nothing downstream runs
    orders_workers: int = 1         # accept-only: `meshrun up --only orders --workers N`
    rounds: int = 1                 # whole measurements (mesh, then floor) repeated; the report is the median one
    state: str | None = None        # the mesh's [mesh] state; None: a new SQLite file per run (the default kind)

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
    required = ACCEPT_ONLY_SERVICES if options.accept_only else REQUIRED
    missing = [n for n in required if n not in config.services]
    if missing:
        raise BenchError(f"{config.file}: the benchmark needs the services {', '.join(required)} of the order "
                         f"pipeline; missing: {', '.join(missing)}")
    if options.accept_only:
        _check_accept_only(config, options)
    if options.rounds > 1 and (options.attach or options.accept_only):
        raise BenchError("--rounds does not combine with --attach or --accept-only: each round starts the whole "
                         "mesh and is compared by its end-to-end figures")
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


def _check_accept_only(config: MeshConfig, options: BenchOptions) -> None:
    """Accept-only starts its own two services on Kafka and measures nothing else (the CLI checks it too)."""
    if config.transport != "kafka":
        raise BenchError("--accept-only needs the Kafka transport: add --transport kafka (in memory nothing would "
                         "consume the order events, and the retention would soon make the Order service's "
                         "publishers wait)")
    if options.split or options.attach:
        raise BenchError("--accept-only starts auth and orders itself: it does not combine with --split or --attach")
    if options.compare_raw:
        raise BenchError("--accept-only does not combine with --compare-raw: the framework-free floor is measured "
                         "end to end only")


def served_services(config: MeshConfig, options: BenchOptions) -> list[str]:
    """The services this run starts (or attaches to): all of the config's, or accept-only, auth and orders."""
    return list(ACCEPT_ONLY_SERVICES) if options.accept_only else list(config.services)


def mesh_processes(config: MeshConfig, options: BenchOptions, workdir: Path) -> list[Launched]:
    """The `meshrun up` processes to start: the whole mesh in one, the groups of --split, or accept-only auth and
    orders (in one process, or orders in --orders-workers processes of its own)."""
    def up(label: str, file: str, only: list[str] | None, workers: int = 1) -> Launched:
        return mesh_process(label, file, config.transport, workdir, options.log_level, only, workers)

    if options.accept_only and options.orders_workers > 1:
        return [up("auth", config.file, ["auth"]), up("orders", config.file, ["orders"], options.orders_workers)]
    if options.accept_only:
        return [up("auth,orders", config.file, list(ACCEPT_ONLY_SERVICES))]
    if options.split:
        file = config_for_split(config.file, workdir)
        groups = options.split
        return [up("mesh" if len(groups) == 1 else ",".join(group), file, group) for group in groups]
    return [up("mesh", config.file, None)]


def launched_processes(launched: list[Launched]) -> list[tuple[str, int]]:
    """(label, pid) of each started process and of its children: the workers of `meshrun up --workers N` do the
    work, and their CPU time and memory are theirs, not their parent's."""
    processes: list[tuple[str, int]] = []
    for proc in launched:
        children = probes.child_pids(proc.pid)
        processes.append((f"{proc.label} (parent)" if children else proc.label, proc.pid))
        processes += [(f"{proc.label} worker {n}", pid) for n, pid in enumerate(children, 1)]
    return processes


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


HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


def _order_session(options: BenchOptions) -> aiohttp.ClientSession:
    """A keep-alive session for the orders: as many connections as orders in flight (unbounded in open loop)."""
    limit = options.concurrency if not options.rate else 0
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60),
                                 timeout=HTTP_TIMEOUT)


def _sessions(options: BenchOptions) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """The session for the orders and one for polling the User service."""
    return _order_session(options), aiohttp.ClientSession(timeout=HTTP_TIMEOUT)


async def warm_up(pipeline: Pipeline, auth: load.BearerHeader, options: BenchOptions, prefix: str) -> None:
    """Orders sent and awaited before measuring: connections, caches, the machine token, the allocator.

    Accept-only, they are awaited to their answers only, as the measured ones are.
    """
    if not options.warmup:
        return
    say(f"{pipeline.name}: warm-up, {options.warmup} orders")
    warm = load.OrderRun(prefix + "w", options.warmup, "closed")
    concurrency = min(options.concurrency, options.warmup)
    never_notified = 0
    if options.accept_only:
        async with _order_session(options) as http:
            await load.send_orders(http, pipeline.target, auth, warm, concurrency=concurrency)
    else:
        http, poll_http = _sessions(options)
        async with http, poll_http:
            figures = await load.drive(http, poll_http, pipeline.target, auth, warm, concurrency=concurrency,
                                       drain_timeout=options.drain_timeout)
        never_notified = figures.lost
    rejected = warm.rejected()
    if never_notified or rejected:
        raise BenchError(f"{pipeline.name}: warm-up failed: {warm.accepted} of {warm.sent} accepted "
                         f"({rejected or 'no rejection'}), {never_notified} never notified")


def _new_run(pipeline: Pipeline, options: BenchOptions, prefix: str) -> load.OrderRun:
    run = load.OrderRun(prefix, options.count, "open" if options.rate else "closed")
    say(f"{pipeline.name}: {run.count:,} orders, " + (f"open loop at {options.rate:g}/s" if options.rate else
                                                     f"closed loop, concurrency {options.concurrency}")
        + (", accept only" if options.accept_only else ""))
    return run


def _progress_line(pipeline: Pipeline, progress: Progress, accept_only: bool) -> load.ProgressFn:
    """The progress shown while a run goes: notified orders, or accept-only, accepted ones."""
    started = time.time()

    def show(r: load.OrderRun, phase: str) -> None:
        elapsed = max(time.time() - started, 1e-6)
        done, what = (r.accepted, "accepted") if accept_only else (r.notified, "e2e")
        progress.update(pipeline.name, done, r.count,
                        f"{phase}: sent {r.sent:,} accepted {r.accepted:,} ({done / elapsed:,.0f}/s {what})")

    return show


async def measure(pipeline: Pipeline, auth: load.BearerHeader, options: BenchOptions, prefix: str,
                  progress: Progress) -> PipelineFigures:
    """Drive the run's orders through `pipeline` and follow them to their notifications."""
    run = _new_run(pipeline, options, prefix)
    show = _progress_line(pipeline, progress, accept_only=False)
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


async def measure_accepts(pipeline: Pipeline, auth: load.BearerHeader, options: BenchOptions, prefix: str,
                          progress: Progress, kafka: KafkaTransportConfig) -> PipelineFigures:
    """Accept-only: drive the run's orders to the Order service's answers, then ask the broker how many records
    order-events gained meanwhile (nothing else publishes there: only auth and orders run)."""
    run = _new_run(pipeline, options, prefix)
    show = _progress_line(pipeline, progress, accept_only=True)
    before = await probes.topic_end_offset(kafka, ORDER_EVENTS)
    meter = probes.CpuMeter([pid for _, pid in pipeline.processes], pipeline.broker)
    try:
        async with _order_session(options) as http:
            await load.send_orders(http, pipeline.target, auth, run, concurrency=options.concurrency,
                                   rate=options.rate, progress=show)
    finally:
        progress.clear()
    cpu = meter.finish(run.accepted)
    memory = pipeline.memory()
    # Every 202 was answered after the broker acknowledged its record, so the end offsets read now include it.
    appended = await probes.topic_end_offset(kafka, ORDER_EVENTS) - before
    figures = run.accept_figures(pipeline.name, appended)
    figures.cpu, figures.memory = cpu, memory
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


async def _backlog_note(config: MeshConfig) -> str | None:
    """A warning when the pipeline's consumer groups start behind: the run would measure that backlog too."""
    groups = sorted({s.group for s in config.services.values() if s.group})
    topics = [t for t in config.topics if not t.endswith(".dlq")]
    try:
        backlog = await probes.group_backlog(config.kafka, groups, topics)
    except Exception as exc:  # noqa: BLE001 - a check, not the measurement: a fresh broker may not answer it yet
        say(f"could not check the consumer groups' lag before the run ({type(exc).__name__}: {exc})")
        return None
    if not backlog:
        return None
    behind = ", ".join(f"{g} {n:,}" for g, n in sorted(backlog.items()))
    return (f"consumer groups started behind ({behind} events): this run also handled that backlog, so its "
            "throughput and CPU per order are not comparable; start from a fresh broker (scripts/kafka start "
            "--fresh) or move the groups to the end (meshrun replay --group G --topic T --to latest)")


async def bench_mesh(config: MeshConfig, options: BenchOptions, workdir: Path, report_args: dict[str, Any],
                     progress: Progress) -> Report:
    host = config.host
    urls = {n: config.service_url(n) for n in served_services(config, options) if config.services[n].port}
    issuer = (config.issuer or urls["auth"]).rstrip("/")
    target = load.Target(urls["orders"], urls.get("users", ""))  # accept-only: no User service to follow
    launched: list[Launched] = []
    ready_seconds = None
    state_file: Path | None = None
    try:
        if config.transport == "kafka" and not options.attach:
            first = config.kafka.bootstrap_servers.split(",")[0]
            bhost, _, bport = first.rpartition(":")
            if not await wait_port(bhost or host, int(bport), 5.0):
                raise BenchError(f"no Kafka broker answers at {config.kafka.bootstrap_servers}: start one with "
                                 "`scripts/kafka start` (or set MESHRUN_KAFKA_BOOTSTRAP_SERVERS)")
        if config.transport == "kafka" and not options.accept_only:
            backlog_note = await _backlog_note(config)
            if backlog_note:
                say(f"warning: {backlog_note}")
                report_args = {**report_args, "notes": [backlog_note]}
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
            launched = mesh_processes(config, options, workdir)
            state_url, state_file = state_of_run(options, workdir)
            say(f"starting the mesh ({config.transport}, {len(launched)} process(es), state {state_url}), logs in "
                f"{workdir}")
            started = time.perf_counter()
            for proc in launched:
                proc.start(env={**credentials.demo_secret_environment(config), "MESHRUN_STATE": state_url})
            ready_seconds = round(await wait_ready(launched, list(urls.values()), started, options.ready_timeout), 3)
            say(f"mesh ready in {ready_seconds:.3f} s")
            processes = launched_processes(launched)
        broker = broker_pids(config)
        pipeline = Pipeline("meshrun", target, processes, broker)
        pipeline.memory_idle()
        password = credentials.user_password(config, options.user, options.password)
        audience = config.services["orders"].audience or "orders"
        token = await credentials.user_token(issuer, options.user, password, audience)
        auth = load.BearerHeader(token, lambda: credentials.user_token(issuer, options.user, password, audience))
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        await warm_up(pipeline, auth, options, prefix)
        if options.accept_only:
            # No Notification service runs: there are no machine tokens to count (the table shows "-").
            figures = await measure_accepts(pipeline, auth, options, prefix, progress, config.kafka)
            report = Report(meshrun=figures, **report_args)
        else:
            async with aiohttp.ClientSession() as http:
                tokens_before = await probes.machine_tokens_fetched(http, urls["notification"])
            figures = await measure(pipeline, auth, options, prefix, progress)
            async with aiohttp.ClientSession() as http:
                tokens_after = await probes.machine_tokens_fetched(http, urls["notification"])
            report = Report(meshrun=figures, **report_args)
            report.machine_tokens_fetched = {
                "during_run": tokens_after - tokens_before if tokens_after is not None and tokens_before is not None
                else None, "total": tokens_after}
        figures.ready_seconds = ready_seconds
        say("probing the token endpoint and token verification")
        await probe_tokens(config, issuer, token, options, report)
    finally:
        for proc in launched:
            code = proc.stop()
            if code not in (0, None):
                say(f"warning: {proc.label} exited with status {code} (log {proc.log})")
    if state_file is not None and state_file.exists():
        size = sum(f.stat().st_size for f in state_file.parent.glob(state_file.name + "*"))
        say(f"state file: {size / 1e6:.1f} MB (with its WAL) after this run")
    report.mesh_log = {"format": "json", "level": options.log_level if launched else "as started",
                       "bytes": sum(p.log.stat().st_size for p in launched if p.log.exists()),
                       "files": [str(p.log) for p in launched] if options.keep_logs else []}
    if launched and ready_seconds is not None:
        report.mesh_log["mesh_ready_reported_seconds"] = [p.reported_ready for p in launched]
    return report


def state_of_run(options: BenchOptions, workdir: Path) -> tuple[str, Path | None]:
    """The state URL the measured mesh gets, and its file when it is a SQLite file of this run."""
    if options.state:
        return options.state, None
    path = workdir / f"state-{uuid.uuid4().hex[:8]}.db"  # each round starts from an empty store
    return f"sqlite:///{path.resolve()}", path


async def bench_raw(config: MeshConfig, options: BenchOptions, workdir: Path, progress: Progress) -> PipelineFigures:
    """The same load through the framework-free pipeline (`meshrun_bench.raw`) on free ports of this machine."""
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
    configure_logging("console", "warning")  # this process's own libraries (the JWKS cache) stay quiet
    config = _load(options)
    workdir = Path(tempfile.mkdtemp(prefix="meshrun-bench-"))
    progress = Progress(enabled=options.progress)
    report_args = {"command": options.command, "transport": config.transport, "config": config.file,
                   "environment": environment(), "mesh_log": {}}

    async def one_round(number: int) -> Report:
        where = workdir
        if options.rounds > 1:
            say(f"round {number}/{options.rounds}")
            progress.round = f"round {number}/{options.rounds} "
            where = workdir / f"round{number}"  # each round's logs, not the last one's only, for --keep-logs
            where.mkdir()
        report = await bench_mesh(config, options, where, report_args, progress)
        if options.compare_raw:
            report.raw = await bench_raw(config, options, where, progress)
        return report

    async def go() -> Report:
        # Meshrun then the floor within each round, as with one round: the ratio compares neighbours in time.
        return median_of_rounds([await one_round(n) for n in range(1, options.rounds + 1)])

    try:
        return run_loop(go)
    finally:
        if options.keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
