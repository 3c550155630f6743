"""meshrun services behind a real Spring Authorization Server (Boot's defaults: RS256, no typ, `aud` = client id).

The User service runs alone (`--only users`), declared with `audience = "notification-service"` and
`token_typ = "JWT"`; the Notification service, unchanged, gets its machine token from SAS.
"""
from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from meshrun.config import MeshConfig
from meshrun.runtime import Mesh
from meshrun.services.events import INVOICE_EVENTS, InvoiceIssued, InvoiceLine
from tests.auth.conftest import basic
from tests.conftest import free_port, make_config, pipeline_data
from tests.interop.spring.conftest import SpringApp, call, spring_app
from tests.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sas(spring_jars: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SpringApp]:
    tmp_path = tmp_path_factory.mktemp("sas")
    secret = os.environ["MESHRUN_NOTIFICATION_SECRET"]
    # The issuer property is what SAS writes into `iss` and its metadata, so the port is chosen here.
    port = free_port()
    async with spring_app(spring_jars["authorization-server"], tmp_path / "authorization-server.log",
                          "/.well-known/oauth-authorization-server",
                          f"--spring.security.oauth2.authorizationserver.issuer=http://127.0.0.1:{port}",
                          "--spring.security.oauth2.authorizationserver.client.notification.registration."
                          f"client-secret={{noop}}{secret}", port=port) as app:
        yield app


def behind_sas(tmp_path: Path, ports: Any, issuer: str, audience: str) -> MeshConfig:
    """The shipped services.toml on free ports, its issuer SAS, the User service taking SAS's tokens for
    `audience`: the two lines a team adds to run meshrun behind Spring Authorization Server."""
    data: dict[str, Any] = pipeline_data(tmp_path, ports)
    data["mesh"]["issuer"] = issuer
    data["services"]["users"].update(audience=audience, token_typ="JWT")
    return make_config(copy.deepcopy(data), str(tmp_path / "services.toml"))


@pytest_asyncio.fixture(loop_scope="module")
async def started() -> AsyncIterator[list[Mesh]]:
    meshes: list[Mesh] = []
    yield meshes
    for mesh in reversed(meshes):
        await mesh.stop()


async def start(meshes: list[Mesh], config: MeshConfig, *names: str) -> Mesh:
    mesh = Mesh(config, list(names))
    meshes.append(mesh)
    await mesh.start()
    await mesh.wait_ready(30)  # the User service is ready once it has SAS's JWKS
    return mesh


async def test_the_notification_flow_gets_a_sas_token_that_the_user_service_accepts(
        sas: SpringApp, started: list[Mesh], tmp_path: Path, ports: Any) -> None:
    config = behind_sas(tmp_path, ports, sas.url, "notification-service")
    users = await start(started, config, "users")
    notification = await start(started, config, "notification")
    invoice = InvoiceIssued(invoice_id="inv-1", order_id="o-1", customer="alice", currency="EUR",
                            lines=(InvoiceLine("sku-1", 1, 1000, 1000),), subtotal=1000, tax=200, total=1200)
    await notification.services["notification"].ctx.publish(INVOICE_EVENTS, invoice, key=invoice.order_id)

    async with aiohttp.ClientSession() as session:
        async def notified() -> str | None:
            _, _, body = await call(session, "GET", f"{config.service_url('users')}/notifications?order_id=o-1", None)
            return body if '"invoice_id":"inv-1"' in body else None

        await eventually(notified, timeout=20, what="the User service to record the notification")
        _, _, stats = await call(session, "GET", f"{config.service_url('notification')}/stats", None)
    assert '"tokens_fetched":1' in stats
    guard = users.services["users"].ctx.guard
    assert guard is not None and guard.verifier.keys, "the User service verified with SAS's JWKS"


async def test_a_sas_token_for_another_audience_is_refused(sas: SpringApp, started: list[Mesh],
                                                          tmp_path: Path, ports: Any) -> None:
    # A User service that expects tokens for `users`: SAS's token for the notification client names only
    # `notification-service` in `aud`.
    config = behind_sas(tmp_path, ports, sas.url, "users")
    await start(started, config, "users")
    async with aiohttp.ClientSession() as session:
        async with session.post(sas.url + "/oauth2/token", data={"grant_type": "client_credentials"}, headers={
                "Authorization": basic("notification-service", os.environ["MESHRUN_NOTIFICATION_SECRET"])}) as answer:
            token = (await answer.json())["access_token"]
        status, headers, body = await call(session, "POST", f"{config.service_url('users')}/notify-user", token,
                                           json={"invoice_id": "inv-2", "order_id": "o-2", "user": "alice"})
    assert status == 401, body
    assert "token audience 'notification-service' does not include this service ('users')" in body
