"""Real Spring apps for the interop tests: built once per session by scripts/spring, started on free loopback ports.

Without a JDK or Maven the tests skip, except under CI=true, where they fail: CI must not pass by running nothing.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, free_port
from tests.polling import eventually

SPRING = ROOT / "scripts" / "spring"


@pytest.fixture(scope="session")
def spring_jars() -> dict[str, Path]:
    """{"resource-server": jar, "authorization-server": jar}, built now unless they are newer than their sources."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed: the Spring interop tests need JDK 17+ and Maven 3.8+"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    build = subprocess.run([str(SPRING), "build"], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    lines = subprocess.run([str(SPRING), "jars"], capture_output=True, text=True, check=True).stdout.split()
    return {Path(jar).stem: Path(jar) for jar in lines}


class SpringApp:
    """A Spring Boot app running as a child process on 127.0.0.1 and a free port; its output goes to `log`."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@asynccontextmanager
async def spring_app(jar: Path, log: Path, ready_path: str, *args: str, port: int | None = None
                     ) -> AsyncIterator[SpringApp]:
    """Start `jar` with `args` (Spring properties as --name=value) on `port` (default: a free one), wait until
    `ready_path` answers, stop it after."""
    port = port or free_port()
    with log.open("wb") as out:
        # C1 only: a short-lived test app starts about a third faster without the optimising compiler.
        process = await asyncio.create_subprocess_exec(
            "java", "-XX:TieredStopAtLevel=1", "-jar", str(jar), f"--server.port={port}",
            "--server.address=127.0.0.1", *args, stdout=out, stderr=out)
    app = SpringApp(process, port, log)
    try:
        async with aiohttp.ClientSession() as session:
            async def answers() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"{jar.name} exited with {process.returncode}:\n{app.output()}")
                try:
                    async with session.get(app.url + ready_path) as response:
                        return response.status < 500
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(answers, timeout=60, what=f"{jar.name} to listen on {port}")
        yield app
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()



async def call(session: aiohttp.ClientSession, method: str, url: str, token: str | None,
               json: object = None) -> tuple[int, dict[str, str], str]:
    """One request with a bearer token: status, headers, body text."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.request(method, url, headers=headers, json=json) as response:
        return response.status, dict(response.headers), await response.text()
