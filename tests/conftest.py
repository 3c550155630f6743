"""Shared test helpers: free ports, a config builder and a running Mesh on real ports."""
from __future__ import annotations

import socket
from typing import Any, AsyncIterator

import pytest

from meshrun.config import MeshConfig, parse_config
from meshrun.logs import configure_logging

configure_logging("console", "warning")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(data: dict[str, Any], file: str = "test-services.toml") -> MeshConfig:
    return parse_config(data, file)


@pytest.fixture
def ports() -> Any:
    """ports['orders'] -> a free port, stable for the test."""
    class Ports(dict[str, int]):
        def __missing__(self, key: str) -> int:
            self[key] = free_port()
            return self[key]

    return Ports()
