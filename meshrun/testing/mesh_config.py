"""A services.toml made to run inside a test: the memory transport, free loopback ports, keys in a temporary
directory, and an authorization server that knows the harness's test identities.

It rewrites a parsed configuration and chooses what runs; starting it is `meshrun.testing.harness`'s job.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from meshrun.config import MeshConfig, ServiceConfig, load_config, parse_config
from meshrun.errors import ConfigError
from meshrun.registry import import_service
from meshrun.service import Service
from meshrun.testing.identities import HarnessIdentities, users_log2_n

AUTH_MODULE = "meshrun.services.auth"
# Tests talk to the mesh over loopback: nothing is exposed, and the issuer needs no TLS there.
LOOPBACK = "127.0.0.1"

ConfigSource = str | os.PathLike[str] | Mapping[str, Any] | MeshConfig


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the harness retries if another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def read_config(source: ConfigSource) -> MeshConfig:
    """A MeshConfig from a services.toml path, the dict of one, or a MeshConfig as it is."""
    if isinstance(source, MeshConfig):
        return source
    if isinstance(source, Mapping):
        return parse_config(dict(source), "test-services.toml")
    return load_config(source)


@dataclass(frozen=True, slots=True)
class TestMesh:
    """What the harness runs: the rewritten configuration, the services in start order, and which of them is the
    authorization server (None: none runs)."""

    __test__ = False  # a dataclass named Test...: not a pytest test class

    config: MeshConfig
    names: list[str]
    issuer_service: str | None
    admin_port: int | None


def _declared(config: MeshConfig, names: Iterable[str]) -> dict[str, Service | None]:
    """The Service each named module declares; None where it does not import (Mesh.start reports that)."""
    found: dict[str, Service | None] = {}
    for name in names:
        try:
            found[name] = import_service(config.services[name].module)
        except Exception:  # reported with file and key when the mesh starts
            found[name] = None
    return found


def plan_test_mesh(source: ConfigSource, only: Iterable[str] | None, *, auth: bool | None,
                   identities: HarnessIdentities, keys_dir: Path, admin: bool = False,
                   extra_scopes: Iterable[str] = ()) -> TestMesh:
    """Rewrite `source` for a test: every running service on a free port, the memory transport, loopback.

    An authorization server runs when `auth` is True, or when it is None and a running service has a protected
    route: the file's own auth service (`meshrun.services.auth`) if it has one, started even if `only` leaves it
    out, otherwise meshrun's auth service added under the name `auth`. Either way it keeps its keys in `keys_dir`,
    knows the harness's identities besides any of its own, and is the mesh's issuer.
    """
    config = read_config(source)
    names = list(config.services) if only is None else list(only)
    unknown = [n for n in names if n not in config.services]
    if unknown:
        raise ConfigError(config.file, [f"only: unknown service {n!r} (services: {', '.join(config.services)})"
                                        for n in unknown])
    declared = _declared(config, names)
    routes = [r for s in declared.values() if s is not None for r in s.routes]
    wants_auth = auth if auth is not None else any(r.authenticated for r in routes)
    issuer_service = None
    services = dict(config.services)
    if wants_auth:
        issuer_service = next((n for n, s in services.items() if s.module == AUTH_MODULE), None)
        if issuer_service is None:
            issuer_service = "auth" if "auth" not in services else "meshrun-testing-auth"
            services[issuer_service] = ServiceConfig(issuer_service, AUTH_MODULE, port=0)
        # First, so that the guards of the others find their issuer as soon as they ask.
        names = [issuer_service] + [n for n in names if n != issuer_service]
    for name in names:
        service = declared.get(name)
        if services[name].port is not None or (service is not None and service.routes):
            services[name] = replace(services[name], port=free_port())
    if issuer_service is not None:
        scopes = {r.scope for r in routes if r.scope} | set(extra_scopes)
        audiences = {services[n].audience or n for n in names if n != issuer_service}
        services[issuer_service] = _with_test_identities(services[issuer_service], identities, scopes,
                                                         audiences or {"meshrun-testing"}, keys_dir)
    admin_port = free_port() if admin else None
    # State in memory: each test starts from nothing, and nothing is left on disk between tests.
    mesh = replace(config, transport="memory", host=LOOPBACK, admin_port=admin_port, services=services,
                   state="memory")
    if issuer_service is not None:
        mesh = replace(mesh, issuer=mesh.service_url(issuer_service))
    return TestMesh(mesh, names, issuer_service, admin_port)


def _with_test_identities(auth: ServiceConfig, identities: HarnessIdentities, scopes: set[str],
                          audiences: set[str], keys_dir: Path) -> ServiceConfig:
    settings = dict(auth.settings)
    users, clients = identities.settings_entries(scopes, audiences, users_log2_n(settings))
    settings["keys_dir"] = str(keys_dir)  # never the project's keys/
    settings["users"] = list(settings.get("users") or []) + users
    settings["clients"] = list(settings.get("clients") or []) + clients
    return replace(auth, settings=settings)
