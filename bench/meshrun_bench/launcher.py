"""Starting and stopping what `meshrun bench` measures: `meshrun up` processes (or the raw floor) and their readiness.

It launches, waits for ready and stops; the load and the figures are `load`'s and `probes`' business.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from meshrun.errors import MeshrunError


class BenchError(MeshrunError):
    """The benchmark could not run (the mesh did not start, a service is missing...); says what to do."""


@dataclass
class Launched:
    """One process started by the benchmark, with its log files."""

    label: str
    argv: list[str]
    log: Path
    err: Path
    ready_line: str | None          # the event name it logs once ready (None: readiness is only /ready)
    process: subprocess.Popen[bytes] | None = None
    reported_ready: float | None = None   # the seconds the process itself reported in its ready line
    ready_lines: int = 1            # how many ready lines it logs (`meshrun up --workers N`: one per worker)
    _read: int = field(default=0, repr=False)
    _ready_seen: list[float] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, env: dict[str, str] | None = None) -> None:
        with open(self.log, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **(env or {})})

    def saw_ready_line(self) -> bool:
        """Read the new part of the JSON log for the ready line(s) (cheap: only what was appended since last time).

        Workers of `meshrun up --workers N` share the log: the process is ready once each of them said so, and
        its reported figure is the slowest worker's.
        """
        if self.ready_line is None or self.reported_ready is not None:
            return True
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self._read)
                chunk = fh.read()
        except OSError:
            return False
        end = chunk.rfind(b"\n") + 1
        self._read += end
        for line in chunk[:end].splitlines():
            if self.ready_line.encode() not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == self.ready_line:
                self._ready_seen.append(float(entry.get("seconds", 0.0)))
        if len(self._ready_seen) >= self.ready_lines:
            self.reported_ready = max(self._ready_seen)
            return True
        return False

    def failure(self) -> str | None:
        """Why the process is gone, with the end of its logs, or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        tail = b""
        for path in (self.err, self.log):
            try:
                tail += path.read_bytes()[-2000:]
            except OSError:
                pass
        return (f"{self.label} exited with status {self.process.returncode} before it was ready "
                f"(logs: {self.log}, {self.err}):\n{tail.decode(errors='replace').strip()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful stop), then SIGKILL after `timeout` seconds."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def mesh_process(label: str, config: str, transport: str, workdir: Path, log_level: str,
                 only: list[str] | None = None, workers: int = 1) -> Launched:
    """`python -m meshrun up` with JSON logs to a file, as in production.

    With `workers` > 1 it is `meshrun up --workers N`: a parent that starts N worker processes sharing the ports.
    """
    argv = [sys.executable, "-m", "meshrun", "up", "--config", config, "--transport", transport,
            "--log-format", "json", "--log-level", log_level]
    if only:
        argv += ["--only", ",".join(only)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    stem = label.replace(",", "+").replace(" ", "_")
    return Launched(label, argv, workdir / f"{stem}.log", workdir / f"{stem}.err", "mesh_ready",
                    ready_lines=workers)


def config_for_split(config: str, workdir: Path) -> str:
    """A copy of the config without mesh.admin_port, for the processes of a split mesh on Kafka.

    Every `meshrun up` process binds the admin port, so a second process on the same machine would fail on it;
    on Kafka nothing needs it (`meshrun topics` asks the broker).
    """
    text = Path(config).read_text()
    copy = workdir / "services.split.toml"
    copy.write_text(re.sub(r"(?m)^(\s*admin_port\s*=)", r"# \1", text))
    return str(copy)


def raw_process(transport: str, host: str, orders_port: int, users_port: int, workdir: Path,
                bootstrap: str | None) -> Launched:
    argv = [sys.executable, "-m", "meshrun_bench.raw", "--transport", transport, "--host", host,
            "--orders-port", str(orders_port), "--users-port", str(users_port)]
    if bootstrap:
        argv += ["--bootstrap", bootstrap]
    return Launched("raw", argv, workdir / "raw.log", workdir / "raw.err", "raw_ready")


async def wait_ready(processes: list[Launched], urls: list[str], started: float, timeout: float) -> float:
    """Seconds from `started` until every process logged its ready line and every URL answers /ready 200."""
    pending = set(urls)
    deadline = started + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            for proc in processes:
                problem = proc.failure()
                if problem:
                    raise BenchError(problem)
            for url in list(pending):
                try:
                    async with http.get(f"{url}/ready") as r:
                        if r.status == 200:
                            pending.discard(url)
                except (TimeoutError, aiohttp.ClientError):
                    pass
            lines = all(p.saw_ready_line() for p in processes)
            if not pending and lines:
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                waiting = sorted(pending) + [p.label for p in processes if not p.saw_ready_line()]
                raise BenchError(f"not ready after {timeout:.0f} s: still waiting for {', '.join(waiting)} "
                                 f"(logs under {processes[0].log.parent if processes else '?'})")
            await asyncio.sleep(0.005)


async def wait_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on host:port (a broker, a service)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            writer.close()
            return True
        except (TimeoutError, OSError):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
