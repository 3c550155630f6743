"""Token profiles per resource server: `typ: at+jwt` by default, `typ: JWT` for audiences declared so (Spring's
default decoder); a token is one or the other, and each guard accepts only the profiles its service declares."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from meshrun.auth.issuer.settings import ResourceServer, parse_settings
from meshrun.auth.verify import InvalidToken, TokenVerifier
from meshrun.errors import ConfigError
from meshrun.errors import SettingsError
from tests.auth import forge
from tests.auth.conftest import REPORTING_SECRET, StartMesh, basic, mesh_data
from tests.conftest import free_port, make_config

SPRING = [{"audience": "orders", "token_typ": "JWT"}]


def test_resource_servers_are_declared_with_their_token_typ() -> None:
    settings = parse_settings({"resource_servers": [{"audience": "orders", "token_typ": "JWT"},
                                                    {"audience": "users"}]}, "services.auth.settings")
    assert settings.resource_servers == (ResourceServer("orders", "JWT"), ResourceServer("users", "at+jwt"))
    assert settings.token_typ("orders") == "JWT" and settings.token_typ("billing") == "at+jwt"


def test_an_unknown_token_typ_or_a_twice_declared_audience_is_refused() -> None:
    with pytest.raises(SettingsError) as error:
        parse_settings({"resource_servers": [{"audience": "orders", "token_typ": "jwt+at"},
                                             {"audience": "users"}, {"audience": "users"}, {"token_typ": "JWT"}]},
                       "services.auth.settings")
    text = str(error.value)
    assert "resource_servers[0].token_typ: 'jwt+at' is not one of at+jwt, JWT" in text
    assert "resource_servers[2].audience: 'users' is declared twice" in text
    assert "resource_servers[3].audience: required" in text


async def test_a_token_for_a_jwt_audience_carries_typ_jwt(start_mesh: StartMesh) -> None:
    auth = await start_mesh(resource_servers=SPRING)
    token = (await auth.client_token("reporting", REPORTING_SECRET, resource="orders"))["access_token"]
    assert pyjwt.get_unverified_header(token)["typ"] == "JWT"
    token = (await auth.client_token("reporting", REPORTING_SECRET, resource="users"))["access_token"]
    assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"


async def test_a_token_asked_for_audiences_of_different_profiles_is_invalid_target(start_mesh: StartMesh) -> None:
    auth = await start_mesh(resource_servers=SPRING)
    for form in ({"grant_type": "client_credentials"},  # all the client's audiences: orders and users
                 [("grant_type", "client_credentials"), ("resource", "orders"), ("resource", "users")]):
        status, _, body = await auth.post("/oauth2/token", form, basic("reporting", REPORTING_SECRET))
        assert status == 400 and body["error"] == "invalid_target", body
        assert "'orders' (JWT), 'users' (at+jwt)" in body["error_description"]


async def test_meshruns_guard_refuses_a_jwt_token_unless_its_service_declares_that_profile(
        start_mesh: StartMesh, tmp_path: Path) -> None:
    data = mesh_data(tmp_path, free_port(), resource_servers=SPRING)
    data["services"]["users-api"].update(audience="orders", token_typ="JWT")  # the same audience, declared JWT
    auth = await start_mesh(data)
    token = (await auth.client_token("reporting", REPORTING_SECRET, resource="orders"))["access_token"]
    status, _, body = await auth.call("orders-api", "POST", "/orders", token)
    assert status == 401 and "token typ is 'JWT', expected 'at+jwt'" in body["error_description"]
    assert (await auth.call("users-api", "POST", "/orders", token))[0] == 201
    # ...and that service, declared JWT only, no longer takes an at+jwt token (signed by the issuer's real key).
    at_jwt = forge.sign(forge.signing_key(tmp_path / "keys"), forge.claims(auth.issuer))
    status, _, body = await auth.call("users-api", "POST", "/orders", at_jwt)
    assert status == 401 and "not one this service accepts (token_typ: JWT)" in body["error_description"]
    assert (await auth.call("orders-api", "POST", "/orders", at_jwt))[0] == 201


def test_the_jwt_profile_takes_sas_claims_and_at_jwt_keeps_rfc_9068s() -> None:
    raw: dict[str, Any] = {"iss": "https://issuer", "sub": "notification-service", "aud": "orders",
                           "exp": 2**31, "iat": 1, "jti": "j", "scope": ["users.notify"]}
    verifier = TokenVerifier("https://issuer", "orders", token_typ=("JWT",))
    claims = verifier._check_claims(raw, rfc9068=False)
    assert claims.scope == frozenset({"users.notify"}) and claims.client_id == ""
    with pytest.raises(InvalidToken, match="no client_id claim"):
        verifier._check_claims(raw, rfc9068=True)


def test_a_services_token_typ_must_name_known_profiles() -> None:
    data = {"mesh": {"issuer": "http://127.0.0.1:9000"},
            "services": {"users": {"module": "meshrun.services.users", "token_typ": ["JWT", "id+jwt"]}}}
    with pytest.raises(ConfigError, match="services.users.token_typ: 'id\\+jwt' is not one of at\\+jwt, JWT"):
        make_config(data)
