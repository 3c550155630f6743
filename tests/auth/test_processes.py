"""Several authorization server processes sharing `keys/`: every resource server accepts every one's tokens,
before and after a rotation made with `meshrun keys rotate`."""
from __future__ import annotations

import asyncio
import copy
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt

from meshrun.auth.keys import KeyStore
from tests.auth.conftest import NOTIFY_SECRET, basic, distinct_ports, mesh_data
from tests.auth.test_cli import meshrun
from tests.conftest import write_toml
from tests.polling import eventually


async def wait_ready(session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process) -> None:
    for _ in range(600):
        if process.returncode is not None:
            raise AssertionError(f"the second issuer exited with {process.returncode}")
        try:
            async with session.get(url + "/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the second issuer never became ready")


async def machine_token(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(url + "/oauth2/token", data={"grant_type": "client_credentials"},
                            headers={"Authorization": basic("notification-service", NOTIFY_SECRET)}) as response:
        body = await response.json()
        assert response.status == 200, body
        return str(body["access_token"])


async def test_two_issuer_processes_sharing_keys_issue_tokens_every_resource_server_accepts(
        start_mesh: Any, tmp_path: Path) -> None:
    port_a, port_b = distinct_ports(2)
    data = mesh_data(tmp_path, port_a, jwks_max_age=1, key_activation_delay=1)  # a rotated key signs after 1 s
    # Process B: the same issuer identity (as behind one load balancer), its own port, the same keys dir.
    other = copy.deepcopy(data)
    other["services"] = {"auth": {**other["services"]["auth"], "port": port_b}}
    config_b = write_toml(tmp_path / "issuer-b.toml", other)
    with (tmp_path / "issuer-b.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from meshrun.cli import main; main()", "up", "--config", str(config_b),
            stdout=log, stderr=log, env={**os.environ, "MESHRUN_UVLOOP": "0"})
    try:
        auth = await start_mesh(data)  # process A, started while B starts: both find an empty keys dir
        url_b = f"http://127.0.0.1:{port_b}"
        await wait_ready(auth.session, url_b, process)
        assert len(KeyStore(tmp_path / "keys").load()) == 1, "one first key, however many processes start"

        from_b = await machine_token(auth.session, url_b)
        assert (await auth.call("users-api", "POST", "/notify", from_b))[0] == 200

        write_toml(tmp_path / "services.toml", data)
        code, _, err = await meshrun("keys", "rotate", "--config", str(tmp_path / "services.toml"))
        assert code == 0, err
        new_kid = KeyStore(tmp_path / "keys").load()[-1].kid

        async def signed_with_the_new_key() -> str | None:
            # B notices the new key on disk within its check interval and signs with it once it activates.
            token = await machine_token(auth.session, url_b)
            return token if pyjwt.get_unverified_header(token)["kid"] == new_kid else None

        rotated = await eventually(signed_with_the_new_key, timeout=10, what="process B to sign with the new key")
        # The resource server fetches its keys from A, which B never talked to.
        assert (await auth.call("users-api", "POST", "/notify", rotated))[0] == 200
        assert (await auth.call("users-api", "POST", "/notify", from_b))[0] == 200
        assert (await auth.call("users-api", "POST", "/notify", (await auth.client_token())["access_token"]))[0] \
            == 200
    finally:
        process.terminate()
        await process.wait()
