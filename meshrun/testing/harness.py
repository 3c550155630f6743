"""MeshHarness: a mesh of your services running inside a test, on the real runtime and the in-memory transport.

Real `Mesh`, real partitions, groups and committed offsets, real HTTP on free ports, real tokens from a real
authorization server. Not a stub of any of them: what passes here runs unchanged under `meshrun up`.
"""
from __future__ import annotations

import asyncio
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Iterable, Protocol, Sequence

import aiohttp

from meshrun.auth.login import client_credentials, user_login
from meshrun.config import MeshConfig
from meshrun.context import ServiceContext
from meshrun.errors import MeshrunError, PortInUse
from meshrun.events import Event, encode, transport_headers
from meshrun.runtime import Mesh
from meshrun.testing.identities import LOGIN_CLIENT, HarnessIdentities
from meshrun.testing.mesh_config import ConfigSource, TestMesh, plan_test_mesh
from meshrun.testing.topics import TopicReader
from meshrun.transport.base import Headers, RecordMetadata
from meshrun.transport.memory import InMemoryTransport

DEFAULT_USER = "tester"
DEFAULT_CLIENT = "tester-client"
# Free ports are chosen before the mesh binds them; another process may take one in between. Then start again.
START_ATTEMPTS = 3


class NoIssuer(MeshrunError):
    """A token was asked of a harness that runs no authorization server."""


class UndeclaredIdentity(MeshrunError):
    """A token was asked for a user or client the harness did not declare, without its secret."""


class MeshHarness(TopicReader):
    """A running test mesh: its services' URLs, publishing, waiting for groups, reading topics, tokens.

    Made by `running_mesh` (or the `mesh_for` / `meshrun_harness` pytest fixtures), which start and stop it.
    """

    def __init__(self, plan: TestMesh, mesh: Mesh, transport: InMemoryTransport,
                 identities: HarnessIdentities) -> None:
        super().__init__(transport)
        self.plan = plan
        self.mesh = mesh
        self.identities = identities
        self._sessions: list[aiohttp.ClientSession] = []

    @property
    def config(self) -> MeshConfig:
        """The configuration the mesh runs with (ports, issuer and auth settings as the harness set them)."""
        return self.plan.config

    def url(self, service: str) -> str:
        """The base URL of a running service, e.g. `http://127.0.0.1:40123`."""
        if service not in self.mesh.services:
            raise KeyError(f"service {service!r} is not running (running: {', '.join(self.mesh.services)})")
        return f"http://{self.plan.config.host}:{self.mesh.port_of(service)}"

    @property
    def issuer(self) -> str:
        """The URL of the mesh's authorization server; raises NoIssuer when none runs."""
        if self.plan.issuer_service is None:
            raise NoIssuer("this test mesh runs no authorization server: none of its services has a protected "
                           "route; pass auth=True to running_mesh (or the fixture) to run one anyway")
        return self.url(self.plan.issuer_service)

    @property
    def admin_url(self) -> str:
        """The mesh's admin endpoint (`meshrun topics` / `meshrun replay` talk to it): with `admin=True` only."""
        if self.plan.admin_port is None:
            raise KeyError("the admin endpoint is off: pass admin=True to running_mesh")
        return f"http://{self.plan.config.host}:{self.plan.admin_port}"

    def context(self, service: str) -> ServiceContext:
        """The running service's context: its settings, its `state`, its logger."""
        return self.mesh.services[service].ctx

    def client(self, service: str, token: str | None = None) -> aiohttp.ClientSession:
        """An HTTP session whose relative URLs go to `service` (`await http.get("/health")`), sending
        `Authorization: Bearer <token>` when a token is given. Closed with the harness if not before."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        session = aiohttp.ClientSession(base_url=self.url(service), headers=headers)
        self._sessions.append(session)
        return session

    async def publish(self, topic: str, event: Event | bytes, *, key: str | bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        """Publish as a service would (`ctx.publish`): an event is encoded with its routing and trace headers,
        bytes go as they are; the key chooses the partition. Returns where it landed."""
        raw_key = key.encode() if isinstance(key, str) else key
        if isinstance(event, Event):
            return await self.transport.publish(topic, encode(event), key=raw_key,
                                                headers=transport_headers(event) + headers)
        return await self.transport.publish(topic, event, key=raw_key, headers=headers)

    async def token(self, user: str = DEFAULT_USER, *, scope: str | None = None, audience: str | None = None,
                    password: str | None = None, client: str = LOGIN_CLIENT) -> str:
        """A user's access token, signed in through the authorization server's login form (authorization code
        with PKCE, as `meshrun token --user`). Without `scope` it carries every scope the client may get, and
        without `audience` every running service's audience.

        `user` is one of the harness's users (`users=` of running_mesh, default "tester"); a user of your own
        services.toml needs its `password`, and may be signed in with a public client of yours (`client=`)."""
        if password is None:
            password = self._secret("user", user, self.identities.users, "users")
        answer = await user_login(self.issuer, user, password, client_id=client, scope=scope,
                                  resources=(audience,) if audience else ())
        return str(answer["access_token"])

    async def machine_token(self, client: str = DEFAULT_CLIENT, *, scope: str | None = None,
                            audience: str | None = None, secret: str | None = None) -> str:
        """A machine token (client credentials) for one of the harness's clients (`clients=`, default
        "tester-client"), or for a client of your services.toml with its `secret`."""
        if secret is None:
            secret = self._secret("client", client, self.identities.clients, "clients")
        answer = await client_credentials(self.issuer, client, secret, scope, (audience,) if audience else ())
        return str(answer["access_token"])

    @staticmethod
    def _secret(kind: str, name: str, declared: dict[str, str], option: str) -> str:
        if name not in declared:
            raise UndeclaredIdentity(
                f"{kind} {name!r} is not one the harness declared (declared: {', '.join(declared) or 'none'}): "
                f"add it to {option}= of running_mesh, or pass the {'password' if kind == 'user' else 'secret'} "
                f"of a {kind} your services.toml declares")
        return declared[name]

    async def close_sessions(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions if not s.closed))
        self._sessions.clear()


@asynccontextmanager
async def running_mesh(config: ConfigSource, only: str | Iterable[str] | None = None, *, auth: bool | None = None,
                       users: Sequence[str] = (DEFAULT_USER,), clients: Sequence[str] = (DEFAULT_CLIENT,),
                       scopes: Iterable[str] = (), admin: bool = False, ready_timeout: float = 15.0
                       ) -> AsyncIterator[MeshHarness]:
    """Run the services of `config` (a services.toml path, its dict, or a MeshConfig), or those of `only`, in
    this event loop until the block ends; yields the harness once every service answers ready.

    Whatever the file says, they run on the in-memory transport, on 127.0.0.1, each on a free port (other
    services' URLs and the issuer follow), with the admin endpoint off unless `admin=True`. When a running service
    has a protected route (or `auth=True`), an authorization server runs too: the file's auth service if it has
    one, else meshrun's; it signs with keys in a temporary directory, and knows `users` and `clients` (with random
    secrets only the harness holds) allowed every route's scope, `scopes` and every running service's audience.
    """
    identities = HarnessIdentities.declare(users, clients)
    scopes = tuple(scopes)  # read again at every attempt
    names = [only] if isinstance(only, str) else None if only is None else list(only)
    with tempfile.TemporaryDirectory(prefix="meshrun-test-") as keys_dir:
        for attempt in range(1, START_ATTEMPTS + 1):
            plan = plan_test_mesh(config, names, auth=auth, identities=identities, keys_dir=Path(keys_dir),
                                  admin=admin, extra_scopes=scopes)
            transport = InMemoryTransport(plan.config.memory)
            mesh = Mesh(plan.config, plan.names, transport=transport)
            await transport.start()
            try:
                await mesh.start()
            except PortInUse:
                await transport.stop()
                if attempt == START_ATTEMPTS:
                    raise
                continue
            except BaseException:
                await transport.stop()
                raise
            break
        harness = MeshHarness(plan, mesh, transport, identities)
        try:
            await mesh.wait_ready(ready_timeout)
            yield harness
        finally:
            await harness.close_sessions()
            await mesh.stop()
            await transport.stop()


class MeshFactory(Protocol):
    """The `mesh_for` fixture: `harness = await mesh_for(config, only=..., **options)`, stopped after the test."""

    async def __call__(self, config: ConfigSource, only: str | Iterable[str] | None = None, *,
                       auth: bool | None = None, users: Sequence[str] = ..., clients: Sequence[str] = ...,
                       scopes: Iterable[str] = (), admin: bool = False, ready_timeout: float = 15.0
                       ) -> MeshHarness: ...
