"""How a service declares itself: HTTP routes, topic handlers, start/stop hooks and readiness checks.

A declaration only records what the service offers; `meshrun.runtime` decides where and how it runs.

    service = Service("greeter")

    @service.route("GET", "/hello/{name}")
    async def hello(request: web.Request, ctx: ServiceContext) -> web.Response: ...

    @service.subscribe("greetings", event=Greeted)
    async def on_greeted(event: Greeted, ctx: EventContext) -> None: ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, TypeVar

from aiohttp import web

if TYPE_CHECKING:
    from meshrun.context import EventContext, ServiceContext
    from meshrun.events import Event

E = TypeVar("E")
RouteHandler = Callable[[web.Request, "ServiceContext"], Awaitable[web.StreamResponse]]
EventHandler = Callable[[Any, "EventContext"], Awaitable[None]]
Hook = Callable[["ServiceContext"], Awaitable[None]]
ReadyCheck = Callable[["ServiceContext"], Awaitable[str | None]]
SettingsParser = Callable[[dict[str, Any], str], Any]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: RouteHandler
    scope: str | None
    authenticated: bool


@dataclass(frozen=True, slots=True)
class Subscriber(Generic[E]):
    topic: str
    handler: EventHandler
    event: "type[Event] | None"  # None: the handler receives the raw Record


@dataclass
class Service:
    """What one service offers. Register it in services.toml by the import path of its module."""

    name: str
    settings: SettingsParser | None = None
    routes: list[Route] = field(default_factory=list)
    subscribers: list[Subscriber[Any]] = field(default_factory=list)
    publishes: set[str] = field(default_factory=set)
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    ready_checks: list[ReadyCheck] = field(default_factory=list)
    max_body_bytes: int = 64 * 1024

    def route(self, method: str, path: str, *, scope: str | None = None,
              authenticated: bool | None = None) -> Callable[[RouteHandler], RouteHandler]:
        """Register an HTTP route. `scope` requires a Bearer token with that scope and the service's audience."""

        def register(handler: RouteHandler) -> RouteHandler:
            self.routes.append(Route(method.upper(), path, handler, scope,
                                     authenticated if authenticated is not None else scope is not None))
            return handler

        return register

    def subscribe(self, topic: str, *, event: "type[Event] | None" = None) -> Callable[[EventHandler], EventHandler]:
        """Register a handler for every record of `topic` reaching this service's consumer group.

        With `event=SomeEvent` the handler receives the decoded event; a record that does not decode goes to the
        dead-letter topic. Raise `RetryLater` for a transient failure (retried until it succeeds).
        """

        def register(handler: EventHandler) -> EventHandler:
            self.subscribers.append(Subscriber(topic, handler, event))
            return handler

        return register

    def publisher(self, *topics: str) -> None:
        """Declare the topics this service publishes to, so `meshrun check` can show and validate them."""
        self.publishes.update(topics)

    def startup(self, hook: Hook) -> Hook:
        self.on_start.append(hook)
        return hook

    def shutdown(self, hook: Hook) -> Hook:
        self.on_stop.append(hook)
        return hook

    def readiness(self, check: ReadyCheck) -> ReadyCheck:
        """Register a check run by GET /ready: return None when ready, or a sentence saying what is missing."""
        self.ready_checks.append(check)
        return check
