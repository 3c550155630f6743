"""Measurements beside the load: resident memory of processes, the token endpoint's rate, the cost of verifying a
token, the machine tokens Notification fetched, the records a Kafka topic holds. Each probe reads; none changes the
mesh.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson

from meshrun.config import KafkaTransportConfig


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None when it is gone or not readable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_seconds() -> float | None:
    """CPU time all cores of the machine spent busy so far (everything but idle and iowait, steal included)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(values[:8]) - values[3] - values[4]  # user nice system idle iowait irq softirq steal
    return busy / CLOCK_TICKS


class CpuMeter:
    """CPU used during a measurement: by the pipeline's processes, the broker, this load generator, and the rest
    of the machine (other people's work on a shared machine shows up there, and explains a slow run)."""

    def __init__(self, pipeline: list[int], broker: list[int]) -> None:
        self.groups = {"pipeline": pipeline, "broker": broker, "load_generator": [os.getpid()]}
        self.started = time.perf_counter()
        self.machine = machine_busy_seconds()
        self.before = {name: self._sum(pids) for name, pids in self.groups.items()}

    @staticmethod
    def _sum(pids: list[int]) -> float | None:
        values = [cpu_seconds(pid) for pid in pids]
        return sum(v for v in values if v is not None) if pids and None not in values else None

    def finish(self, orders: int) -> dict[str, float | None]:
        elapsed = time.perf_counter() - self.started
        used = {}
        for name, pids in self.groups.items():
            now, then = self._sum(pids), self.before[name]
            used[name] = now - then if now is not None and then is not None else None
        machine = machine_busy_seconds()
        result: dict[str, float | None] = {
            f"{name}_ms_per_order": round(1000 * v / orders, 3) if v is not None and orders else None
            for name, v in used.items()}
        result.update({f"{name}_cores": round(v / elapsed, 2) if v is not None else None for name, v in used.items()})
        if machine is not None and self.machine is not None:
            others = (machine - self.machine) - sum(v for v in used.values() if v is not None)
            result["other_processes_cores"] = round(max(0.0, others) / elapsed, 2)
        return result


def _listening_inodes(ports: set[int]) -> dict[str, int]:
    """Socket inode -> port of the TCP sockets listening on one of `ports` (IPv4 and IPv6)."""
    found: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                found[fields[9]] = port
    return found


def pids_listening(ports: set[int]) -> dict[int, list[int]]:
    """pid -> the ports it listens on, for the processes of this user holding one of `ports` (via /proc)."""
    inodes = _listening_inodes(ports)
    owners: dict[int, list[int]] = {}
    if not inodes:
        return owners
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners.setdefault(int(entry), []).append(inodes[target[8:-1]])
    return {pid: sorted(set(p)) for pid, p in owners.items()}


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (the workers of `meshrun up --workers N`), from the parent pid in /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            children.append(int(entry))
    return sorted(children)


@contextlib.asynccontextmanager
async def _kafka_admin(kafka: KafkaTransportConfig) -> AsyncIterator[Any]:
    """meshrun's own admin client on the configured cluster, closed afterwards."""
    from meshrun.transport.kafka_admin import KafkaAdmin
    from meshrun.transport.kafka_options import KafkaClientOptions

    admin = KafkaAdmin(KafkaClientOptions.from_config(kafka))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def topic_end_offset(kafka: KafkaTransportConfig, topic: str) -> int:
    """The sum of a topic's log end offsets over its partitions: how many records the broker ever appended to it.

    Asked with meshrun's own admin client rather than `Transport.describe`, which reports log ends only for the
    groups that committed on the topic (none may have: nothing consumes it while the Order service runs alone).
    """
    from meshrun.transport.kafka_admin import partitions_of

    async with _kafka_admin(kafka) as admin:
        count = await admin.partition_count(topic)
        _, ends = await admin.log_offsets(partitions_of(topic, count))
        return sum(ends.values())


async def group_backlog(kafka: KafkaTransportConfig, groups: list[str], topics: list[str]) -> dict[str, int]:
    """Events each consumer group has yet to handle on these topics: a backlog left by an earlier run (say of
    --accept-only) that this run would measure too. Partitions a group never committed on count as caught up."""
    from meshrun.transport.kafka_admin import partitions_of

    async with _kafka_admin(kafka) as admin:
        counts = {t: c for t, c in (await admin.partition_counts(topics)).items() if c}
        _, ends = await admin.log_offsets([tp for t, c in counts.items() for tp in partitions_of(t, c)])
        backlog: dict[str, int] = {}
        for group in groups:
            committed = await admin.committed_offsets(group)
            lag = sum(end - committed[tp] for tp, end in ends.items() if tp in committed)
            if lag > 0:
                backlog[group] = lag
        return backlog


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        r.raise_for_status()
        return orjson.loads(await r.read())


async def machine_tokens_fetched(http: aiohttp.ClientSession, notification_url: str) -> int | None:
    """Machine tokens Notification fetched since it started, from its own GET /stats."""
    try:
        stats = await get_json(http, f"{notification_url}/stats")
    except (TimeoutError, aiohttp.ClientError):
        return None
    value = stats.get("tokens_fetched")
    return int(value) if isinstance(value, int) else None


async def token_endpoint_rate(token_url: str, client_id: str, secret: str, *, seconds: float = 2.0,
                              concurrency: int = 16, scope: str | None = None,
                              resource: str | None = None) -> tuple[float, int, int]:
    """client_credentials requests per second the token endpoint answers with 200 (client_secret_basic).

    Returns (tokens per second, tokens issued, failures)."""
    from meshrun.auth.token_source import basic_credentials

    headers = {"Authorization": basic_credentials(client_id, secret), "Accept": "application/json"}
    form = [("grant_type", "client_credentials")]
    if scope:
        form.append(("scope", scope))
    if resource:
        form.append(("resource", resource))
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def one() -> bool:
            try:
                async with http.post(token_url, data=form, headers=headers) as r:
                    body = await r.read()
                    return r.status == 200 and b"access_token" in body
            except (TimeoutError, aiohttp.ClientError):
                return False

        await one()  # connection set-up and first-request costs are not the endpoint's rate
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal ok, failed
            while time.perf_counter() < deadline:
                if await one():
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return round(ok / elapsed, 1), ok, failed


def verification_cost(verifier: Any, token: str, scope: str, iterations: int = 20_000) -> dict[str, float]:
    """Microseconds per verification of one user token on a resource server's verifier, measured in this process.

    `amortised_us`: per request when the same token comes back (as a client's does until it expires);
    `uncached_us`: a full check (signature, claims) every time; `first_us`: the very first verification.
    """
    verifier.forget()
    started = time.perf_counter()
    verifier.verify(token, scope)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(iterations):
        verifier.verify(token, scope)
    amortised = (time.perf_counter() - started) / iterations
    full_runs = max(200, iterations // 50)
    started = time.perf_counter()
    for _ in range(full_runs):
        verifier.forget()
        verifier.verify(token, scope)
    uncached = (time.perf_counter() - started) / full_runs
    return {"amortised_us": round(amortised * 1e6, 3), "uncached_us": round(uncached * 1e6, 1),
            "first_us": round(first * 1e6, 1), "iterations": iterations}
