"""Where a client finds its own secret: an environment variable, else a file, else (warned against) plaintext.

For services that call others with a machine token (the Notification service); the issuer's side of the same
secret is `issuer.identities` (`secret_env`, `secret_file`, `secret_hash`).
"""
from __future__ import annotations

import os
from pathlib import Path

from meshrun.errors import SettingsError


def missing_secret(env: str, file: str, plaintext: str, key: str) -> str | None:
    """A settings problem when no source can give the secret (checked when the file is read), or None."""
    if (env and os.environ.get(env)) or file or plaintext:
        return None
    name = key.rsplit(".", 1)[-1]
    return (f"{key}_env: environment variable {env or '(none named)'} is not set (and there is no {name}_file): "
            f"export {env or 'it'} before starting the mesh (scripts/up exports the demo secret; see docs/auth.md)")


def read_secret(env: str, file: str, plaintext: str, base_dir: Path, key: str) -> tuple[str, str]:
    """(the secret, where it came from: "env", "file" or "plaintext"). The environment wins over the file (relative
    to services.toml's directory), the file over a plaintext value. Raises SettingsError naming the file when it
    cannot be read or is empty."""
    if env and os.environ.get(env):
        return os.environ[env], "env"
    if file:
        path = base_dir / file
        try:
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError([f"{key}_file: cannot read {path} ({exc})"]) from None
        if not lines or not lines[0]:
            raise SettingsError([f"{key}_file: {path} is empty (expected the secret on its first line)"])
        return lines[0], "file"
    if plaintext:
        return plaintext, "plaintext"
    raise SettingsError([missing_secret(env, file, plaintext, key) or f"{key}: no secret"])
