"""meshrun's issuer in front of a real Spring Boot resource server (Boot's own JWT support, no decoder bean).

The resource server checks `aud` against `spring-orders` or `spring-orders-rfc9068`, and `POST /orders` needs
`SCOPE_orders.write`. meshrun declares `spring-orders` with the `JWT` token profile; `spring-orders-rfc9068` is
left at the default at+jwt, to show what Spring does with the default and so why the setting exists.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
import pytest_asyncio

from meshrun.auth.hashing import hash_secret
from meshrun.auth.keys import KeyStore
from meshrun.runtime import Mesh
from tests.auth import forge
from tests.auth.conftest import ALICE_PASSWORD, CLI_REDIRECT, auth_settings, basic
from tests.auth.test_cli import meshrun
from tests.conftest import free_port, make_config, write_toml
from tests.interop.spring.conftest import SpringApp, call, spring_app
from tests.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHOP_SECRET = "shop-backend-secret"


class Estate:
    """meshrun's auth service in this process, and the Spring resource server trusting it."""

    def __init__(self, mesh: Mesh, spring: SpringApp, config: Path, keys_dir: Path,
                 session: aiohttp.ClientSession) -> None:
        self.issuer = f"http://127.0.0.1:{mesh.port_of('auth')}"
        self.spring = spring
        self.config = config
        self.keys_dir = keys_dir
        self.session = session

    async def machine_token(self, resource: str, scope: str = "orders.write") -> str:
        form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
        async with self.session.post(self.issuer + "/oauth2/token", data=form,
                                     headers={"Authorization": basic("shop-backend", SHOP_SECRET)}) as response:
            body = await response.json()
            assert response.status == 200, body
            return str(body["access_token"])

    async def place_order(self, token: str) -> tuple[int, dict[str, str], str]:
        return await call(self.session, "POST", self.spring.url + "/orders", token)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def estate(spring_jars: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Estate]:
    tmp_path = tmp_path_factory.mktemp("meshrun-issuer")
    port = free_port()
    settings = auth_settings(
        tmp_path, jwks_max_age=1, key_activation_delay=1,  # a rotated key signs after 1 s, not 6 min
        resource_servers=[{"audience": "spring-orders", "token_typ": "JWT"},
                          {"audience": "billing", "token_typ": "JWT"}],
        clients=[{"client_id": "meshrun-cli", "grant_types": ["authorization_code"], "scopes": ["orders.write"],
                  "audiences": ["spring-orders"], "redirect_uris": [CLI_REDIRECT]},
                 {"client_id": "shop-backend", "secret_hash": str(hash_secret(SHOP_SECRET, log2_n=10)),
                  "grant_types": ["client_credentials"], "scopes": ["orders.write", "orders.read"],
                  "audiences": ["spring-orders", "spring-orders-rfc9068", "billing"]}])
    data = {"mesh": {"issuer": f"http://127.0.0.1:{port}", "grace_period": 2.0},
            "services": {"auth": {"module": "meshrun.services.auth", "port": port, "settings": settings}}}
    config = write_toml(tmp_path / "services.toml", data)
    mesh = Mesh(make_config(data, str(config)))
    await mesh.start()
    try:
        await mesh.wait_ready(15)
        async with spring_app(spring_jars["resource-server"], tmp_path / "resource-server.log", "/orders",
                              f"--spring.security.oauth2.resourceserver.jwt.issuer-uri=http://127.0.0.1:{port}",
                              "--spring.security.oauth2.resourceserver.jwt.audiences="
                              "spring-orders,spring-orders-rfc9068") as spring, aiohttp.ClientSession() as session:
            yield Estate(mesh, spring, config, tmp_path / "keys", session)
    finally:
        await mesh.stop()


async def test_a_users_token_with_the_jwt_profile_is_accepted_by_spring(estate: Estate) -> None:
    code, token, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", str(estate.config),
                                     stdin=ALICE_PASSWORD + "\n")
    assert code == 0, err
    assert pyjwt.get_unverified_header(token)["typ"] == "JWT"
    status, _, body = await estate.place_order(token)
    assert status == 200, body
    assert '"placed_by":"alice"' in body and '"scope":"orders.write"' in body


async def test_the_space_delimited_scope_claim_becomes_springs_scope_authorities(estate: Estate) -> None:
    status, headers, _ = await estate.place_order(await estate.machine_token("spring-orders", "orders.read"))
    assert status == 403 and 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert (await estate.place_order(await estate.machine_token("spring-orders", "orders.read orders.write")))[0] \
        == 200


async def test_an_at_jwt_token_is_refused_by_springs_default_decoder(estate: Estate) -> None:
    # The audience is one the resource server accepts: only the header's typ is in the way.
    token = await estate.machine_token("spring-orders-rfc9068")
    assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"
    status, headers, _ = await estate.place_order(token)
    assert status == 401
    assert "JOSE header typ (type) at+jwt not allowed" in headers["WWW-Authenticate"]


async def test_a_token_for_another_audience_is_refused(estate: Estate) -> None:
    status, headers, _ = await estate.place_order(await estate.machine_token("billing"))
    assert status == 401 and "aud" in headers["WWW-Authenticate"]


async def test_a_forged_signature_is_refused(estate: Estate) -> None:
    genuine = pyjwt.decode(await estate.machine_token("spring-orders"), options={"verify_signature": False})
    kid = forge.signing_key(estate.keys_dir).kid
    forged = forge.sign_with(forge.attacker_key(), genuine, typ="JWT", kid=kid)
    status, headers, _ = await estate.place_order(forged)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_an_expired_token_is_refused(estate: Estate) -> None:
    # Signed with the issuer's real key, expired an hour ago: beyond Spring's 60 s clock skew.
    now = int(time.time())
    claims: dict[str, Any] = forge.claims(estate.issuer, aud="spring-orders", iat=now - 3900, exp=now - 3600)
    expired = forge.sign(forge.signing_key(estate.keys_dir), claims, typ="JWT")
    status, headers, _ = await estate.place_order(expired)
    assert status == 401 and "expired" in headers["WWW-Authenticate"].lower()


async def test_after_a_key_rotation_a_fresh_token_is_accepted_without_restarting_spring(estate: Estate) -> None:
    assert (await estate.place_order(await estate.machine_token("spring-orders")))[0] == 200  # the old key cached
    code, _, err = await meshrun("keys", "rotate", "--config", str(estate.config))
    assert code == 0, err
    new_kid = KeyStore(estate.keys_dir).load()[-1].kid

    async def signed_with_the_new_key() -> str | None:
        token = await estate.machine_token("spring-orders")
        return token if pyjwt.get_unverified_header(token)["kid"] == new_kid else None

    fresh = await eventually(signed_with_the_new_key, timeout=10, what="the issuer to sign with the new key")
    status, _, body = await estate.place_order(fresh)
    assert status == 200, body
    assert estate.spring.process.returncode is None
