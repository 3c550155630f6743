"""[services.auth.settings]: every problem named by its key; plaintext secrets refused; the shipped file works."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from meshrun.auth.hashing import SecretHash
from meshrun.auth.issuer.settings import parse_settings, with_identities_file
from meshrun.errors import SettingsError
from tests.auth.conftest import basic, distinct_ports
from tests.conftest import ROOT, make_config

PATH = "services.auth.settings"
CLI = "http://127.0.0.1/callback"
GOOD_HASH = "$scrypt$ln=10,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


def problems(table: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as failure:
        parse_settings(table, PATH)
    return failure.value.problems


def client(**fields: Any) -> dict[str, Any]:
    return {"client_id": "c", "secret_hash": GOOD_HASH, "grant_types": ["client_credentials"],
            "scopes": ["a"], "audiences": ["x"], **fields}


@pytest.mark.parametrize("table, expected", [
    ({"clients": [client(secret="s", secret_hash=None)]},
     f"{PATH}.clients[0].secret: plaintext secrets are not accepted"),
    ({"users": [{"username": "alice", "password": "p"}]}, f"{PATH}.users[0].password: plaintext passwords"),
    ({"clients": [client(scopes=["ok", "bad scope"])]}, f"{PATH}.clients[0].scopes: 'bad scope' is not a valid"),
    ({"clients": [client(grant_types=["password"])]}, f"{PATH}.clients[0].grant_types: the resource owner password"),
    ({"clients": [client(grant_types=["implicit"])]}, f"{PATH}.clients[0].grant_types: the implicit grant"),
    ({"clients": [client(secret_hash=None)]},
     f"{PATH}.clients[0].grant_types: client_credentials needs a confidential client"),
    ({"clients": [client(grant_types=["authorization_code"])]}, f"{PATH}.clients[0].redirect_uris: missing"),
    ({"clients": [client(grant_types=["authorization_code"], redirect_uris=["http://example.com/cb"])]},
     f"{PATH}.clients[0].redirect_uris: 'http://example.com/cb': plain http is only allowed on a loopback"),
    ({"clients": [client(secret_hash="plain-text")]}, f"{PATH}.clients[0].secret_hash: not an scrypt hash"),
    ({"clients": [client(audiences=[])]}, f"{PATH}.clients[0].audiences: missing"),
    ({"clients": [client(secret_hash=None, secret_env="MESHRUN_SURELY_UNSET")]},
     f"{PATH}.clients[0].secret_env: environment variable MESHRUN_SURELY_UNSET is not set"),
    ({"clients": [client(), client()]}, f"{PATH}: client_id 'c' is declared more than once"),
    ({"signing_alg": "HS256"}, f"{PATH}.signing_alg: 'HS256' is not one of ES256, RS256"),
    ({"access_token_ttl": 0}, f"{PATH}.access_token_ttl: must be a positive number of seconds"),
    ({"colour": "blue"}, f"{PATH}.colour: unknown key"),
    ({"clients": [client(secret_hash=None, client_secret="s")]}, f"{PATH}.clients[0].client_secret: plaintext"),
    ({"clients": [client(secret_hash=None, grant_types=["authorization_code"], redirect_uris=[CLI],
                         require_pkce=False)]}, f"{PATH}.clients[0].require_pkce: a public client always needs PKCE"),
    ({"clients": [client(secret_hash=None, grant_types=["authorization_code"], redirect_uris=[CLI],
                         introspect_audiences=["x"])]}, f"{PATH}.clients[0].introspect_audiences: introspection"),
    ({"clients": [client(grant_types=["authorization_code"], redirect_uris=["http://127.0.0.1/cb\tx"])]},
     f"{PATH}.clients[0].redirect_uris: 'http://127.0.0.1/cb\\tx': contains '\\t'"),
    ({"jwks_max_age": 300, "key_activation_delay": 60}, f"{PATH}.key_activation_delay: 60 is shorter than"),
    ({"trusted_proxies": ["10.0.0.0/8", "proxy.example"]}, f"{PATH}.trusted_proxies: 'proxy.example' is not"),
    ({"users": [{"username": "a", "password_hash": GOOD_HASH},
                {"username": "b", "password_hash": GOOD_HASH.replace("ln=10", "ln=17")}]},
     f"{PATH}: users' password hashes have different scrypt costs (ln=10,r=8,p=1 for a; ln=17,r=8,p=1 for b)"),
])
def test_each_problem_names_its_key(table: dict[str, Any], expected: str) -> None:
    found = problems(table)
    assert any(p.startswith(expected) for p in found), found


def test_an_identities_file_adds_users_and_clients(tmp_path: Path) -> None:
    (tmp_path / "identities.toml").write_text(
        f'[[users]]\nusername = "carol"\npassword_hash = "{GOOD_HASH}"\n'
        f'[[clients]]\nclient_id = "batch"\nsecret_hash = "{GOOD_HASH}"\ngrant_types = ["client_credentials"]\n'
        'audiences = ["orders"]\n')
    settings = with_identities_file(parse_settings({"identities_file": "identities.toml"}, PATH), tmp_path)
    assert [u.username for u in settings.users] == ["carol"] and settings.clients[0].client_id == "batch"
    (tmp_path / "identities.toml").write_text('[[users]]\nusername = "dave"\npassword = "x"\n')
    with pytest.raises(SettingsError, match=r"identities.toml: users\[0\].password: plaintext"):
        with_identities_file(parse_settings({"identities_file": "identities.toml"}, PATH), tmp_path)


def test_the_shipped_demo_identities_are_hashed_and_documented() -> None:
    data = tomllib.loads((ROOT / "services.toml").read_text())
    settings = parse_settings(data["services"]["auth"]["settings"], PATH)
    alice = {u.username: u for u in settings.users}["alice"]
    assert alice.password_hash.matches("alice-password")
    clients = {c.client_id: c for c in settings.clients}
    notify = clients["notification-service"]
    assert notify.secret_hash is None and notify.secret_env == "MESHRUN_NOTIFICATION_SECRET", \
        "the client secret comes from the environment"
    assert notify.grant_types == {"client_credentials"} and notify.scopes == {"users.notify"}
    notification = data["services"]["notification"]["settings"]
    assert "client_secret" not in notification
    assert notification["client_secret_env"] == "MESHRUN_NOTIFICATION_SECRET"
    cli = clients["meshrun-cli"]
    assert not cli.confidential and cli.redirect_uris == ("http://127.0.0.1/callback",)
    assert cli.grant_types == {"authorization_code", "refresh_token"} and cli.scopes == {"orders.write"}
    text = (ROOT / "services.toml").read_text()
    assert "alice-password\"" not in text.replace("# demo: alice-password", "")
    assert "notification-secret" not in text
    docs = (ROOT / "docs" / "auth.md").read_text()
    assert "alice-password" in docs and "notification-secret" in docs and "demo" in docs.lower()
    assert "MESHRUN_NOTIFICATION_SECRET:-notification-secret" in (ROOT / "scripts" / "_demo_env.sh").read_text()


async def test_the_shipped_configuration_serves_its_demo_identities(start_mesh: Any, tmp_path: Path) -> None:
    data = tomllib.loads((ROOT / "services.toml").read_text())
    auth_port, orders_port = distinct_ports(2)
    auth = data["services"]["auth"]
    auth["port"] = auth_port
    auth["settings"]["keys_dir"] = str(tmp_path / "keys")
    shipped = {"mesh": {"issuer": f"http://127.0.0.1:{auth_port}"},
               "services": {"auth": auth, "orders-api": {"module": "tests.auth.protected", "port": orders_port,
                                                         "audience": "orders"}}}
    running = await start_mesh(shipped)
    status, _, body = await running.post("/oauth2/token", {"grant_type": "client_credentials"},
                                         basic("notification-service", "notification-secret"))
    assert status == 200, body
    assert pyjwt.decode(body["access_token"], options={"verify_signature": False})["aud"] == "users"
    user = await running.user_tokens()  # alice / alice-password through meshrun-cli with PKCE
    status, _, _ = await running.call("orders-api", "POST", "/orders", user["access_token"])
    assert status == 201
    assert make_config(shipped).services["auth"].settings["keys_dir"] == str(tmp_path / "keys")


def test_the_activation_delay_defaults_to_the_jwks_max_age_plus_a_margin() -> None:
    assert parse_settings({}, PATH).key_activation_delay == 300 + 60
    assert parse_settings({"jwks_max_age": 60}, PATH).key_activation_delay == 60 + 60


async def test_unknown_user_names_are_checked_against_a_decoy_of_the_users_cost(start_mesh: Any) -> None:
    """A login with an unknown name costs as long as one with a wrong password: same scrypt cost."""
    auth = await start_mesh()
    assert auth.server.decoy.cost == (10, 8, 1) == auth.server.users["alice"].password_hash.cost


def test_hashes_round_trip() -> None:
    hashed = SecretHash.parse(GOOD_HASH)
    assert str(hashed) == GOOD_HASH and not hashed.matches("anything")
