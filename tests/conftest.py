"""Shared test helpers: free ports, a config builder and a running Mesh on real ports."""
from __future__ import annotations

import os
import socket
from typing import Any, AsyncIterator

import pytest

from meshrun.config import MeshConfig, parse_config
from meshrun.logs import configure_logging

configure_logging("console", "warning")
# The shipped services.toml takes the Notification client's secret from the environment, as scripts/up exports it;
# tests (and the `meshrun up` processes they start, which inherit it) use the same published demo secret.
DEMO_NOTIFICATION_SECRET = "notification-secret"
os.environ.setdefault("MESHRUN_NOTIFICATION_SECRET", DEMO_NOTIFICATION_SECRET)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(data: dict[str, Any], file: str = "test-services.toml") -> MeshConfig:
    """The config of `data`; its state in memory unless it names one (nothing left in the working directory)."""
    if "state" not in data.get("mesh", {}):
        data = {**data, "mesh": {**data.get("mesh", {}), "state": "memory"}}
    return parse_config(data, file)


@pytest.fixture
def ports() -> Any:
    """ports['orders'] -> a free port, stable for the test."""
    class Ports(dict[str, int]):
        def __missing__(self, key: str) -> int:
            self[key] = free_port()
            return self[key]

    return Ports()


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
HTTP_SERVICES = ("auth", "orders", "inventory", "analytics", "notification", "users")


def pipeline_data(tmp_path: Any, ports: Any, transport: str = "memory", suffix: str = "") -> dict[str, Any]:
    """The shipped services.toml with free ports, a temporary keys dir and state file and, optionally, suffixed
    group names."""
    import tomllib

    data = tomllib.loads((ROOT / "services.toml").read_text())
    data["mesh"]["transport"] = transport
    data["mesh"]["admin_port"] = ports["admin"]
    data["mesh"]["issuer"] = f"http://127.0.0.1:{ports['auth']}"
    data["mesh"]["grace_period"] = 5.0
    for name, service in data["services"].items():
        if "port" in service:
            service["port"] = ports[name]
        if suffix and "group" in service:
            service["group"] += suffix
    data["services"]["auth"]["settings"]["keys_dir"] = str(tmp_path / "keys")
    data["mesh"]["state"] = f"sqlite:///{tmp_path}/state.db"  # the test's own (tmp_path is absolute: sqlite:////)
    return data


def write_toml(path: Any, data: dict[str, Any]) -> Any:
    """Write a (flat enough) config dict as TOML, for tests that start `meshrun up` processes."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items()
                   if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(key, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append(f"[[{key}]]")
                    lines.extend(f"{ik} = {value(iv)}" for ik, iv in item.items())

    table("", data)
    path.write_text("\n".join(lines) + "\n")
    return path
