"""`meshrun up` processes for end-to-end tests: start with --only, wait for mesh_ready, kill, read their logs."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class MeshProcess:
    """One `meshrun up --only ...` process writing JSON logs to a file."""

    def __init__(self, config: Path, only: str, log_dir: Path, name: str | None = None,
                 extra: tuple[str, ...] = (), ready_lines: int = 1) -> None:
        self.config, self.only, self.extra, self.ready_lines = config, only, extra, ready_lines
        self.name = name or only.replace(",", "+")
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> "MeshProcess":
        self.starts += 1
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshrun", "up", "--config", str(self.config), "--only", self.only,
             "--log-format", "json", *self.extra], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "MESHRUN_UVLOOP": os.environ.get("MESHRUN_UVLOOP", "1")})
        log.close()
        return self

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return found

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for e in self.events() if e.get("event") == "mesh_ready") < self.starts * self.ready_lines:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     f"{self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)
