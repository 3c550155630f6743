"""Client secrets only from the environment or a file: the shipped services.toml holds none, starting without
one names the variable, a file works on both sides, and `meshrun check` warns about plaintext."""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from meshrun.auth.token_source import ClientCredentialsTokenSource
from meshrun.errors import SettingsError
from meshrun.runtime import Mesh
from meshrun.services.notification import TOKENS
from tests.auth.test_cli import meshrun
from tests.conftest import make_config, pipeline_data, write_toml

SECRET_ENV = "MESHRUN_NOTIFICATION_SECRET"
SERVICES = ["auth", "users", "notification"]


def without_the_secret() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != SECRET_ENV}


@pytest.mark.parametrize("command", [("check",), ("up", "--ready-timeout", "5")])
async def test_starting_the_shipped_mesh_without_the_secret_names_the_variable(tmp_path: Path, ports: Any,
                                                                              command: tuple[str, ...]) -> None:
    config = write_toml(tmp_path / "services.toml", pipeline_data(tmp_path, ports))
    code, _, err = await meshrun_without_the_secret(*command, "--config", str(config))
    assert code == 2 and "Traceback" not in err
    assert f"services.auth.settings.clients[0].secret_env: environment variable {SECRET_ENV} is not set" in err
    assert f"services.notification.settings.client_secret_env: environment variable {SECRET_ENV} is not set" in err
    assert "scripts/up exports the demo secret" in err


async def meshrun_without_the_secret(*args: str) -> tuple[int, str, str]:
    """`meshrun` as on a fresh shell, where nobody exported the secret."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from meshrun.cli import main; main()", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**without_the_secret(), "MESHRUN_UVLOOP": "0"})
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_both_sides_read_the_secret_from_a_file(tmp_path: Path, ports: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    (tmp_path / "notification.secret").write_text("from-a-file\n")
    data = pipeline_data(tmp_path, ports)
    client = data["services"]["auth"]["settings"]["clients"][0]
    del client["secret_env"]
    client["secret_file"] = "notification.secret"  # relative to services.toml's directory
    data["services"]["notification"]["settings"] = {"client_secret_file": "notification.secret"}
    mesh = Mesh(make_config(data, str(tmp_path / "services.toml")), SERVICES)
    await mesh.start()
    try:
        await mesh.wait_ready(15)
        tokens: ClientCredentialsTokenSource = mesh.services["notification"].ctx.state[TOKENS]
        token = await tokens.token()
        assert pyjwt.decode(token, options={"verify_signature": False})["aud"] == "users"
    finally:
        await mesh.stop()


async def test_a_secret_file_that_cannot_be_read_is_named(tmp_path: Path, ports: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    data = pipeline_data(tmp_path, ports)
    data["services"]["notification"]["settings"] = {"client_secret_file": "missing.secret"}
    mesh = Mesh(make_config(data, str(tmp_path / "services.toml")), ["notification"])
    with pytest.raises(SettingsError, match=r"services.notification.settings.client_secret_file: cannot read "
                                            rf"{tmp_path}/missing.secret"):
        await mesh.start()


async def test_check_warns_about_a_plaintext_secret_and_a_cleartext_interface(tmp_path: Path, ports: Any) -> None:
    data = pipeline_data(tmp_path, ports)
    data["services"]["notification"]["settings"]["client_secret"] = "in-the-file"
    data["mesh"]["host"] = "0.0.0.0"
    data["mesh"]["trust_proxy_tls"] = True  # else the issuer on 0.0.0.0 would be refused outright
    config = write_toml(tmp_path / "services.toml", data)
    code, out, err = await meshrun("check", "--config", str(config))
    assert code == 0, err
    assert "warning: services.notification.settings.client_secret: a plaintext secret in services.toml" in err
    assert "client_secret_env or client_secret_file" in err
    assert "mesh.host" not in err, "trust_proxy_tls says a proxy encrypts"
    data["mesh"]["trust_proxy_tls"] = False
    data["mesh"]["issuer"] = "https://auth.example"
    write_toml(tmp_path / "services.toml", data)
    code, out, err = await meshrun("check", "--config", str(config))
    assert code == 0, err
    assert "warning: mesh.host: 0.0.0.0 is not a loopback interface" in err
