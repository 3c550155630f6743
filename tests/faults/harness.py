"""The fault suite's shared machinery: meshes of `meshrun up` processes, a steady stream of real orders, a poller of
the User service's records, and the one report line every scenario prints and checks.

A scenario starts a mesh (`running_mesh`), opens a `FaultRun` on it (orders posted at a steady rate by a client
that retries a 503 after its Retry-After, notifications polled every 0.2 s), breaks something, marks when the
fault ended (`run.fault_ended`), waits for the pipeline to catch up, and leaves the run: the report line is printed
then, whatever happened, and `report.check()` asserts nothing was lost, doubled or dead-lettered and that every
order placed before a fault ended was notified within the bound after it.

    posted=1200 accepted=1200 refused=87 notified=1200 lost=0 doubled=0 dead_lettered=0 longest_stall=14.2s ...
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from meshrun.auth.login import user_login
from meshrun.config import TopicConfig
from tests.conftest import free_port, pipeline_data, write_toml
from tests.e2e.processes import MeshProcess
from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap, kafka_transport
from tests.kafka.test_broker_outage import Broker

# The mesh split in four processes, as an operator would run it on Kafka.
SPLIT = ("auth,orders,users", "billing", "notification", "inventory,email,analytics")
SERVICES = ("auth", "orders", "users", "billing", "notification", "inventory", "email", "analytics")
WHOLE = (",".join(SERVICES),)
# Consumer groups and the topic each reads (services.toml).
GROUP_TOPICS = {"inventory": "order-events", "email": "order-events", "analytics": "order-events",
                "billing": "order-events", "notification": "invoice-events"}
PIPELINE_TOPICS = ("order-events", "invoice-events")
# Test members notice a rebalance within 200 ms; a publish answers 503 after publish_timeout during an outage.
FAULT_KAFKA_OPTIONS: dict[str, Any] = {**TEST_OPTIONS, "request_timeout_ms": 30_000, "publish_timeout": 10.0}
POLL_INTERVAL = 0.2


# --- brokers ---------------------------------------------------------------------------------------------------------

def require_kafka() -> str:
    """The suite's shared broker (skips locally, fails with CI=true when none answers), and Java for brokers of a
    test's own: a test that needs them fails on CI rather than passing quietly without them."""
    bootstrap = kafka_bootstrap()
    if shutil.which("java") is None:
        message = "java is not installed: scripts/kafka cannot start a broker of this test's own"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bootstrap


@asynccontextmanager
async def own_broker_in(data_dir: Path) -> AsyncIterator[Broker]:
    """A single broker of the caller's own (scripts/kafka on a free port), which it may stop and start."""
    require_kafka()
    broker = Broker(data_dir)
    try:
        await broker.start_on_a_free_port()
        yield broker
    finally:
        try:
            await broker.run("stop", "--wipe")
        finally:
            kill_leftover_brokers(data_dir)


def kill_leftover_brokers(data_dir: Path) -> None:
    """SIGKILL the JVMs whose pid files are under `data_dir`, if scripts/kafka could not stop them."""
    for pid_file in data_dir.rglob("broker.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            if str(data_dir) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, 9)
        except (OSError, ValueError):
            pass


async def side_by_side(*scenarios: Awaitable["Report"]) -> list["Report"]:
    """Run scenarios concurrently (they mostly wait), let each finish, then raise the first failure, if any."""
    results = await asyncio.gather(*scenarios, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, Report)]


# --- meshes ----------------------------------------------------------------------------------------------------------

class Ports(dict[str, int]):
    """ports['orders'] -> a free port, stable for the mesh."""

    def __missing__(self, key: str) -> int:
        self[key] = free_port()
        return self[key]


@dataclass
class Mesh:
    """A mesh of `meshrun up --only ...` processes on one services.toml."""

    transport: str
    data: dict[str, Any]
    config: Path
    ports: Ports
    suffix: str  # of every consumer group's name
    processes: dict[str, MeshProcess]
    bootstrap: str | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def groups(self) -> dict[str, str]:
        """Consumer group -> the topic it reads."""
        return {self.data["services"][s]["group"]: t for s, t in GROUP_TOPICS.items()}

    def dead_letters_logged(self) -> int:
        return sum(1 for p in self.processes.values() for e in p.events() if e.get("event") == "event_dead_lettered")

    async def dead_letters(self) -> int:
        """Records this mesh's groups sent to the `.dlq` topics: read on the broker (Kafka) or from the admin
        endpoint (memory), and never fewer than the `event_dead_lettered` lines in the processes' logs."""
        if self.transport == "kafka":
            assert self.bootstrap is not None
            counted = await kafka_dead_letters(self.bootstrap, self.suffix)
        else:
            counted = sum(int(t.get("records", 0)) for t in await self._admin_topics() if t["name"].endswith(".dlq"))
        return max(counted, self.dead_letters_logged())

    async def lag(self) -> int:
        """Records this mesh's consumer groups have not committed yet, over every partition they read."""
        if self.transport == "kafka":
            assert self.bootstrap is not None
            return await kafka_lag(self.bootstrap, self.groups)
        total = 0
        for topic in await self._admin_topics():
            for group, partitions in topic["groups"].items():
                if group in self.groups:
                    total += sum(int(p["lag"]) for p in partitions)
        return total

    async def _admin_topics(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{self.ports['admin']}/topics") as response:
                assert response.status == 200, await response.text()
                return list((await response.json())["topics"])


def mesh_data(workdir: Path, ports: Ports, transport: str, suffix: str, bootstrap: str | None = None,
              replication: int = 1, kafka_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shipped services.toml with free ports, its own keys dir and suffixed groups, on `transport`."""
    data = pipeline_data(workdir, ports, transport=transport, suffix=suffix)
    if transport == "kafka":
        del data["mesh"]["admin_port"]  # the admin endpoint serves the in-memory transport only
        data["transport"]["kafka"] = {"bootstrap_servers": bootstrap, **FAULT_KAFKA_OPTIONS, **(kafka_options or {})}
        for topic in data["topics"].values():
            topic["replication_factor"] = replication
    return data


@asynccontextmanager
async def running_mesh(workdir: Path, *, transport: str, split: Sequence[str] = WHOLE, bootstrap: str | None = None,
                       replication: int = 1, kafka_options: dict[str, Any] | None = None,
                       from_log_end: bool = False, state: str | None = None) -> AsyncIterator[Mesh]:
    """Start `meshrun up --only <part> --log-format json` per part of `split` and wait until each is ready; stop them
    all (SIGTERM, then SIGKILL) on the way out. `from_log_end` starts this mesh's new groups at the end of the
    pipeline's topics (a shared broker: earlier runs' orders are not this run's business). The state store is a
    SQLite file of the workdir unless `state` names another."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports, suffix = Ports(), "-" + uuid.uuid4().hex[:8]
    data = mesh_data(workdir, ports, transport, suffix, bootstrap, replication, kafka_options)
    if state is not None:
        data["mesh"]["state"] = state
    config = write_toml(workdir / "services.toml", data)
    extra = ("--transport", transport)
    processes = {only: MeshProcess(config, only, workdir, extra=extra) for only in split}
    mesh = Mesh(transport, data, config, ports, suffix, processes, bootstrap)
    try:
        if from_log_end:
            assert bootstrap is not None
            await start_groups_at_log_end(bootstrap, data, mesh.groups)
        for process in processes.values():
            process.start()
        await asyncio.gather(*(process.wait_ready(120) for process in processes.values()))
        yield mesh
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop, 20) for p in processes.values()))


async def start_groups_at_log_end(bootstrap: str, data: dict[str, Any], groups: dict[str, str]) -> None:
    """Create the pipeline's topics and commit each (new) group's offsets at their log end, as
    `meshrun replay --to latest` would: the mesh then handles only what is published from now on."""
    transport = kafka_transport(bootstrap)
    await transport.start()
    try:
        await transport.ensure_topics([TopicConfig(name, t["partitions"], t.get("replication_factor", 1))
                                       for name, t in data["topics"].items()])
        for group, topic in groups.items():
            await transport.reset_offsets(group, topic, "latest")
    finally:
        await transport.stop()


async def kafka_dead_letters(bootstrap: str, suffix: str, timeout: float = 30.0) -> int:
    """Records on the broker's `.dlq` topics dead-lettered by a group whose name ends with `suffix`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000)
    await admin.start()
    await consumer.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.endswith(".dlq"))
        tps = await _partitions(admin, topics)
        if not tps:
            return 0
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found, deadline = 0, time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read the dead-letter topics {topics} within {timeout}s")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    group = dict(record.headers or ()).get("meshrun-dlq-group", b"").decode()
                    found += group.endswith(suffix)
        return found
    finally:
        await consumer.stop()
        await admin.close()


async def kafka_lag(bootstrap: str, groups: dict[str, str]) -> int:
    """Records past the committed offsets of `groups` (group -> topic); a partition never committed counts whole."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000)
    await admin.start()
    await consumer.start()
    try:
        tps = await _partitions(admin, sorted(set(groups.values())))
        starts, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        total = 0
        for group, topic in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            for tp in (tp for tp in tps if tp.topic == topic):
                meta = committed.get(tp)
                at = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                total += max(0, ends[tp] - at)
        return total
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    if not topics:
        return []
    infos = await admin.describe_topics(topics)
    return [TopicPartition(i["topic"], p["partition"]) for i in infos for p in i["partitions"]]


# --- orders and notifications --------------------------------------------------------------------------------------

class UserTokens:
    """alice's access token, signed in as `meshrun token` does; signed in again before it expires or after a 401."""

    def __init__(self, issuer: str, max_age: float = 200.0) -> None:
        self.issuer, self.max_age = issuer, max_age
        self._token, self._at = "", 0.0
        self._lock = asyncio.Lock()

    async def get(self, stale: str | None = None) -> str:
        async with self._lock:
            if not self._token or self._token == stale or time.monotonic() - self._at > self.max_age:
                self._token = str((await user_login(self.issuer, "alice", "alice-password"))["access_token"])
                self._at = time.monotonic()
            return self._token


@dataclass
class Ledger:
    """What the client saw of every order, and what the User service recorded (times are time.time())."""

    prefix: str
    posted: dict[str, float] = field(default_factory=dict)  # order id -> first POST
    accepted: dict[str, float] = field(default_factory=dict)  # 202, or 200 already_accepted
    notified: dict[str, int] = field(default_factory=dict)  # order id -> notifications recorded
    notified_at: dict[str, float] = field(default_factory=dict)  # first one
    refused: int = 0  # 503 answers
    timeouts: int = 0  # POSTs without an answer within the client's timeout (retried with the same id)
    given_up: list[str] = field(default_factory=list)  # no acceptance after every try
    unexpected: list[str] = field(default_factory=list)  # any other answer
    last_progress: float = field(default_factory=time.time)
    longest_stall: float = 0.0

    def outstanding(self) -> int:
        return sum(1 for order_id in self.accepted if order_id not in self.notified)

    def note(self, order_id: str, at: float) -> None:
        if not order_id.startswith(self.prefix):
            return
        self.notified[order_id] = self.notified.get(order_id, 0) + 1
        self.notified_at.setdefault(order_id, at)

    def doubled(self) -> int:
        return sum(1 for count in self.notified.values() if count > 1)


class OrderDriver:
    """Posts orders at a steady rate, each in its own task (an open loop: a slow answer delays no other order), the
    way a real client would: a client timeout per POST, a 503 retried after its Retry-After, a timed-out POST
    retried with the same order id (the Order service answers a repost with the first answer), at most
    `max_tries` tries per order."""

    def __init__(self, http: aiohttp.ClientSession, orders_url: str, tokens: UserTokens, ledger: Ledger, *,
                 rate: float = 20.0, post_timeout: float = 20.0, max_tries: int = 12, max_orders: int = 20_000) -> None:
        self.http, self.orders_url, self.tokens, self.ledger = http, orders_url, tokens, ledger
        self.rate, self.post_timeout, self.max_tries, self.max_orders = rate, post_timeout, max_tries, max_orders
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._post_steadily())

    async def _post_steadily(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(self.max_orders):
            await asyncio.sleep(max(0.0, start + i / self.rate - loop.time()))
            task = asyncio.create_task(self._place(f"{self.ledger.prefix}-{i}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _place(self, order_id: str) -> None:
        ledger = self.ledger
        ledger.posted[order_id] = time.time()
        token = await self.tokens.get()
        for _ in range(self.max_tries):
            try:
                async with self.http.post(f"{self.orders_url}/orders/{order_id}",
                                          headers={"Authorization": f"Bearer {token}"},
                                          timeout=aiohttp.ClientTimeout(total=self.post_timeout)) as response:
                    status, retry_after = response.status, response.headers.get("Retry-After")
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                ledger.timeouts += 1
                await asyncio.sleep(1.0)
                continue
            if status in (200, 202):
                ledger.accepted.setdefault(order_id, time.time())
                return
            if status == 503:
                ledger.refused += 1
                await asyncio.sleep(float(retry_after) if retry_after and retry_after.isdigit() else 1.0)
                continue
            if status == 401:  # the token expired: sign in again, as a client would
                token = await self.tokens.get(stale=token)
                continue
            ledger.unexpected.append(f"{order_id}: {status} {body[:200]!r}")
            return
        ledger.given_up.append(order_id)

    async def stop(self, timeout: float) -> None:
        """Post no new order; wait (at most `timeout`) for those under way to be accepted or given up."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class NotificationPoller:
    """Reads the User service's new notifications every 0.2 s (GET /notifications?since=N) into the ledger and
    measures the longest stall: a time during which no notification arrived while accepted orders waited for one."""

    def __init__(self, http: aiohttp.ClientSession, users_url: str, ledger: Ledger) -> None:
        self.http, self.users_url, self.ledger = http, users_url, ledger
        self.since = 0
        self.life = 0  # bumped at each restart of the User service: a poll begun before one is discarded
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def new_life(self, recorded: dict[str, list[float]]) -> None:
        """The User service was restarted and starts with an empty book: `recorded` (from its log: order id -> the
        times it was notified) replaces what polling saw of its earlier lives, and polling starts over."""
        ledger = self.ledger
        ledger.notified.clear()
        ledger.notified_at.clear()
        for order_id, times in recorded.items():
            for at in times:
                ledger.note(order_id, at)
        self.since = 0
        self.life += 1

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(POLL_INTERVAL)

    async def poll_once(self) -> None:
        ledger, life = self.ledger, self.life
        try:
            async with self.http.get(f"{self.users_url}/notifications", params={"since": str(self.since)},
                                     timeout=aiohttp.ClientTimeout(total=5)) as response:
                page = await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            page = None
        now = time.time()
        if page is not None and life == self.life:
            notes = page["notifications"]
            assert not page["missed"], f"the poller fell {page['missed']} notifications behind the User service"
            for note in notes:
                ledger.note(note["order_id"], float(note["received_at"]))
                self.since = max(self.since, int(note["seq"]))
            if notes:
                ledger.last_progress = now
        if ledger.outstanding() == 0:
            ledger.last_progress = now
        ledger.longest_stall = max(ledger.longest_stall, now - ledger.last_progress)

    async def stats(self) -> dict[str, Any] | None:
        try:
            async with self.http.get(f"{self.users_url}/notifications/stats",
                                     timeout=aiohttp.ClientTimeout(total=5)) as response:
                return dict(await response.json()) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


def notified_in_log(process: MeshProcess, prefix: str) -> dict[str, list[float]]:
    """Order id -> the times of its `user_notified` lines in a User service process's JSON log (every life)."""
    found: dict[str, list[float]] = {}
    for event in process.events():
        order_id = event.get("order_id")
        if event.get("event") == "user_notified" and isinstance(order_id, str) and order_id.startswith(prefix):
            stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
            found.setdefault(order_id, []).append(stamp)
    return found


# --- the report ----------------------------------------------------------------------------------------------------

@dataclass
class Report:
    name: str
    posted: int
    accepted: int
    refused: int
    notified: int
    lost: int
    doubled: int
    dead_lettered: int
    longest_stall: float
    given_up: int
    timeouts: int
    unexpected: list[str]
    recoveries: dict[str, float | None]  # fault -> seconds from its end until every order placed before was notified
    recovery_bound: float
    lost_ids: list[str]

    def line(self) -> str:
        recoveries = ",".join(f"{label}:{'never' if s is None else f'{s:.1f}s'}"
                              for label, s in self.recoveries.items())
        return (f"posted={self.posted} accepted={self.accepted} refused={self.refused} notified={self.notified} "
                f"lost={self.lost} doubled={self.doubled} dead_lettered={self.dead_lettered} "
                f"longest_stall={self.longest_stall:.1f}s given_up={self.given_up} timeouts={self.timeouts} "
                f"recovered={recoveries or '-'} [{self.name}]")

    def check(self) -> None:
        problems = []
        if self.lost:
            problems.append(f"{self.lost} accepted orders never notified (e.g. {self.lost_ids[:5]})")
        if self.doubled:
            problems.append(f"{self.doubled} orders notified more than once")
        if self.dead_lettered:
            problems.append(f"{self.dead_lettered} records dead-lettered")
        if self.given_up:
            problems.append(f"{self.given_up} orders never accepted after every try")
        if self.unexpected:
            problems.append(f"unexpected answers: {self.unexpected[:5]}")
        for label, seconds in self.recoveries.items():
            if seconds is None or seconds > self.recovery_bound:
                problems.append(f"after {label}, not every earlier order was notified within "
                                f"{self.recovery_bound:.0f}s ({'never' if seconds is None else f'{seconds:.1f}s'})")
        assert not problems, f"{self.line()}\n" + "\n".join(problems)


def check_all(reports: Sequence[Report]) -> None:
    """`check` every report, failing once with what each one found."""
    failures = []
    for report in reports:
        try:
            report.check()
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


class FaultRun:
    """Orders driven through one mesh while a scenario breaks things; `async with` starts and ends the stream and
    prints the report line on the way out (on failure too), then `run.report.check()` asserts.

    A scenario that restarts the User service hands its log's records to `run.poller.new_life` in between: its book
    starts empty in each life."""

    def __init__(self, mesh: Mesh, name: str, *, rate: float = 20.0, recovery_bound: float = 30.0,
                 settle_timeout: float = 120.0, max_tries: int = 12) -> None:
        self.mesh, self.name = mesh, name
        self.rate, self.recovery_bound, self.max_tries = rate, recovery_bound, max_tries
        self.settle_timeout = settle_timeout
        self.ledger = Ledger(prefix=f"{name}-{uuid.uuid4().hex[:6]}")
        self.faults: dict[str, float] = {}  # label -> when the fault ended
        self.report: Report | None = None
        self._http: aiohttp.ClientSession | None = None
        self.driver: OrderDriver | None = None
        self.poller: NotificationPoller | None = None

    async def __aenter__(self) -> "FaultRun":
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        tokens = UserTokens(self.mesh.url("auth"))
        await tokens.get()
        self.driver = OrderDriver(self._http, self.mesh.url("orders"), tokens, self.ledger, rate=self.rate,
                                  max_tries=self.max_tries)
        self.poller = NotificationPoller(self._http, self.mesh.url("users"), self.ledger)
        self.poller.start()
        self.driver.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self.driver is not None and self.poller is not None and self._http is not None
        try:
            await self.finish(settle=exc_info[0] is None)
        finally:
            await self.poller.stop()
            await self._http.close()
            if self.report is not None:
                print(self.report.line(), flush=True)

    async def wait_for_notifications(self, count: int, timeout: float = 60.0) -> None:
        """Wait until `count` orders were notified (the pipeline is flowing)."""
        await self._until(lambda: len(self.ledger.notified) >= count, timeout,
                          f"{count} orders notified (the pipeline flowing)")

    def fault_ended(self, label: str) -> None:
        self.faults[label] = time.time()

    async def wait_recovered(self, label: str) -> None:
        """Wait until every order placed before `label` ended is notified (up to 30 s past the recovery bound, so
        the report shows how long it took; `Report.check` holds it to the bound)."""
        await self._until(lambda: self._recovery(label) is not None, self.recovery_bound + 30,
                          f"every order placed before the end of {label} to be notified")

    async def finish(self, settle: bool = True) -> None:
        """Stop posting, let the orders under way finish, wait until every accepted order is notified and every
        group has committed everything (so a late duplicate would show), then compute the report."""
        assert self.driver is not None and self.poller is not None
        ledger = self.ledger
        await self.driver.stop(timeout=120 if settle else 5)
        if settle:
            try:
                await self._until(lambda: ledger.outstanding() == 0, self.settle_timeout,
                                  "every accepted order to be notified")
                await self._until(self._idle, 60, "every consumer group to commit everything")
            except AssertionError as exc:
                print(f"[{self.name}] {exc}", flush=True)
        await self.poller.poll_once()
        self.report = await self._report()

    async def _idle(self) -> bool:
        try:
            return await asyncio.wait_for(self.mesh.lag(), 20) == 0
        except Exception:  # the broker or the admin endpoint away: not idle yet
            return False

    async def _until(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(POLL_INTERVAL)

    def _recovery(self, label: str) -> float | None:
        """Seconds from the end of fault `label` until every order first posted before it was notified (0 if all
        were before); None while one of them is not notified (or was never accepted)."""
        ended, ledger = self.faults[label], self.ledger
        last = ended
        for order_id, posted in ledger.posted.items():
            if posted < ended:
                at = ledger.notified_at.get(order_id)
                if at is None:
                    return None
                last = max(last, at)
        return last - ended

    async def _report(self) -> Report:
        ledger = self.ledger
        assert self.poller is not None
        stats = await self.poller.stats()
        try:
            dead = await asyncio.wait_for(self.mesh.dead_letters(), 60)
        except Exception as exc:  # counted from the logs alone
            print(f"[{self.name}] dead letters not readable from the transport ({exc!r}); counting log lines")
            dead = self.mesh.dead_letters_logged()
        lost = sorted(o for o in ledger.accepted if o not in ledger.notified)
        doubled = max(ledger.doubled(), int(stats["orders_notified_more_than_once"]) if stats else 0)
        return Report(self.name, posted=len(ledger.posted), accepted=len(ledger.accepted), refused=ledger.refused,
                      notified=len(ledger.notified), lost=len(lost), doubled=doubled, dead_lettered=dead,
                      longest_stall=ledger.longest_stall, given_up=len(ledger.given_up), timeouts=ledger.timeouts,
                      unexpected=list(ledger.unexpected),
                      recoveries={label: self._recovery(label) for label in self.faults},
                      recovery_bound=self.recovery_bound, lost_ids=lost)


async def outage(seconds: float) -> None:
    """The deliberate length of a fault: the one fixed wait a scenario has."""
    await asyncio.sleep(seconds)
