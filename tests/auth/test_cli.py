"""`meshrun token`, `meshrun keys` and `meshrun hash-secret`, run as real processes against a running issuer."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from meshrun.auth.hashing import SecretHash
from meshrun.auth.keys import KeyStore
from meshrun.config import load_config
from tests.auth.conftest import ALICE_PASSWORD, NOTIFY_SECRET, AuthMesh, mesh_data
from tests.conftest import free_port, write_toml
from tests.polling import eventually

MESHRUN = [sys.executable, "-c", "from meshrun.cli import main; main()"]


async def meshrun(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
                  ) -> tuple[int, str, str]:
    """Run the `meshrun` command in a child process (the CLI runs its own event loop)."""
    process = await asyncio.create_subprocess_exec(
        *MESHRUN, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "MESHRUN_UVLOOP": "0", **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else b""), 60)
    return process.returncode or 0, out.decode().strip(), err.decode().strip()


@pytest.fixture
async def cli_mesh(start_mesh: Any, tmp_path: Path) -> tuple[AuthMesh, str]:
    data = mesh_data(tmp_path, free_port())
    data["services"]["auth"]["settings"]["clients"][0]["secret_env"] = "TEST_NOTIFICATION_SECRET"
    config_file = write_toml(tmp_path / "services.toml", data)
    auth = await start_mesh(data)
    assert load_config(config_file).issuer == auth.issuer
    return auth, str(config_file)


async def test_token_for_a_client_with_the_secret_from_the_environment(cli_mesh: tuple[AuthMesh, str]) -> None:
    auth, config = cli_mesh
    code, token, err = await meshrun("token", "--client", "notification-service", "--config", config,
                                     env={"MESHRUN_CLIENT_SECRET": NOTIFY_SECRET})
    assert code == 0, err
    assert (await auth.call("users-api", "POST", "/notify", token))[0] == 200
    code, token, err = await meshrun("token", "--client", "notification-service", "--config", config,
                                     env={"TEST_NOTIFICATION_SECRET": NOTIFY_SECRET})
    assert code == 0, err  # the client's own secret_env from services.toml


async def test_token_for_a_client_with_the_secret_on_stdin(cli_mesh: tuple[AuthMesh, str]) -> None:
    _, config = cli_mesh
    code, token, err = await meshrun("token", "--client", "notification-service", "--config", config,
                                     stdin=NOTIFY_SECRET + "\n")
    assert code == 0, err
    assert pyjwt.decode(token, options={"verify_signature": False})["sub"] == "notification-service"
    code, _, err = await meshrun("token", "--client", "notification-service", "--config", config, stdin="nope\n")
    assert code == 2 and "invalid_client" in err and "Traceback" not in err


async def test_token_for_a_user_runs_the_code_flow_and_the_token_is_accepted(cli_mesh: tuple[AuthMesh, str]
                                                                              ) -> None:
    auth, config = cli_mesh
    code, token, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", config,
                                     stdin=ALICE_PASSWORD + "\n")
    assert code == 0, err
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["client_id"] == "meshrun-cli"
    status, _, body = await auth.call("orders-api", "POST", "/orders", token)
    assert status == 201 and body["sub"] == "alice"
    code, full, err = await meshrun("token", "--user", "alice", "--password-stdin", "--json", "--config", config,
                                    env={"MESHRUN_CONFIG": config}, stdin=ALICE_PASSWORD)
    assert code == 0 and '"refresh_token"' in full


async def test_a_wrong_password_fails_with_a_sentence(cli_mesh: tuple[AuthMesh, str]) -> None:
    _, config = cli_mesh
    code, out, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", config,
                                   stdin="wrong\n")
    assert code == 2 and out == ""
    assert "wrong username or password" in err and "Traceback" not in err


async def test_a_throttled_sign_in_says_when_to_try_again(cli_mesh: tuple[AuthMesh, str]) -> None:
    auth, config = cli_mesh
    for _ in range(5):
        code, _, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", config,
                                     stdin="wrong\n")
        assert code == 2 and "wrong username or password" in err
    code, out, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", config,
                                   stdin=ALICE_PASSWORD + "\n")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "sign-in refused for 'alice': Too many failed sign-ins" in err and "Retry-After:" in err


async def test_token_without_a_running_issuer_says_so(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "services.toml", mesh_data(tmp_path, free_port()))
    code, _, err = await meshrun("token", "--user", "alice", "--password-stdin", "--config", str(config),
                                 stdin="x\n")
    assert code == 2 and "cannot reach the issuer" in err


async def test_keys_rotate_publishes_a_key_that_signs_later_and_list_shows_each_state(
        cli_mesh: tuple[AuthMesh, str], tmp_path: Path) -> None:
    auth, config = cli_mesh
    (old,) = KeyStore(tmp_path / "keys").load()
    code, out, err = await meshrun("keys", "rotate", "--config", config)
    assert code == 0, err
    new = KeyStore(tmp_path / "keys").load()[-1]
    assert new.kid != old.kid and new.kid in out and "published now, signs from" in out and "(in 360 s)" in out
    code, out, err = await meshrun("keys", "list", "--config", config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(old.kid) and lines[0].endswith("active (signing)")
    assert lines[1].startswith(new.kid) and "published, signs from" in lines[1]
    assert oct((tmp_path / "keys" / f"{new.kid}.key.pem").stat().st_mode & 0o777) == "0o600"
    token = (await auth.client_token())["access_token"]
    assert pyjwt.get_unverified_header(token)["kid"] == old.kid, "the new key does not sign yet"


async def test_keys_rotate_now_retires_the_old_key_and_its_tokens_are_refused(cli_mesh: tuple[AuthMesh, str],
                                                                             tmp_path: Path) -> None:
    auth, config = cli_mesh
    (old,) = KeyStore(tmp_path / "keys").load()
    old_token = (await auth.client_token())["access_token"]
    assert (await auth.call("users-api", "POST", "/notify", old_token))[0] == 200
    code, out, err = await meshrun("keys", "rotate", "--now", "--config", config)
    assert code == 0, err
    assert "signing now" in out and f"retired key {old.kid} at once" in out
    (new,) = KeyStore(tmp_path / "keys").load()

    async def signs_with_new_key() -> bool:
        token = (await auth.client_token())["access_token"]
        return bool(pyjwt.get_unverified_header(token)["kid"] == new.kid)

    await eventually(signs_with_new_key, timeout=5, what="the issuer to sign with the new key")
    new_token = (await auth.client_token())["access_token"]
    assert (await auth.call("users-api", "POST", "/notify", new_token))[0] == 200, "an unknown kid is fetched"
    status, _, body = await auth.call("users-api", "POST", "/notify", old_token)
    assert status == 401 and "does not contain" in body["error_description"], "the old key is gone"


async def test_hash_secret_prints_a_hash_that_matches(tmp_path: Path) -> None:
    code, out, err = await meshrun("hash-secret", stdin="s3cret\n")
    assert code == 0, err
    hashed = SecretHash.parse(out)
    assert hashed.matches("s3cret") and not hashed.matches("other")


def test_the_auth_commands_are_registered() -> None:
    from meshrun.cli import main

    assert {"token", "keys", "hash-secret"} <= set(main.commands)
