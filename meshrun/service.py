"""How a service declares itself: HTTP routes, topic handlers, start/stop hooks and readiness checks.

A declaration only records what the service offers; `meshrun.runtime` decides where and how it runs.

    service = Service("greeter")

    @service.route("GET", "/hello/{name}")
    async def hello(request: web.Request, ctx: ServiceContext) -> web.Response: ...

    @service.subscribe("greetings", event=Greeted)
    async def on_greeted(event: Greeted, ctx: EventContext) -> None: ...

    @service.subscribe("greetings", event=Greeted, batch=100)
    async def on_greetings(events: list[Greeted], ctx: BatchContext) -> None: ...
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Literal, TypeVar, overload

from aiohttp import web

from meshrun.errors import HandlerMismatch
from meshrun.transport.delivery import check_max_batch

if TYPE_CHECKING:
    from meshrun.context import BatchContext, EventContext, ServiceContext
    from meshrun.events import Event

E = TypeVar("E")
RouteHandler = Callable[[web.Request, "ServiceContext"], Awaitable[web.StreamResponse]]
EventHandler = Callable[[Any, "EventContext"], Awaitable[None]]
BatchEventHandler = Callable[[list[Any], "BatchContext"], Awaitable[None]]
# What `subscribe` returns the handler as: typed, so a handler of lists registered without `batch=N` (it would be
# handed single events) and a handler of single events registered with it are type errors.
EH = TypeVar("EH", bound=EventHandler)
BH = TypeVar("BH", bound=BatchEventHandler)
Hook = Callable[["ServiceContext"], Awaitable[None]]
ReadyCheck = Callable[["ServiceContext"], Awaitable[str | None]]
SettingsParser = Callable[[dict[str, Any], str], Any]


# An annotation that says "a list of events": list[...], Sequence[...], ... (as a string under `from __future__
# import annotations`, or as the object itself).
_LIST_ANNOTATION = re.compile(r"^(?:typing\.|collections\.abc\.)?(?:list|List|Sequence|MutableSequence|tuple|Tuple|"
                              r"Iterable)\b")


def _first_annotation(handler: Callable[..., Any]) -> str | None:
    """The handler's first parameter's annotation as written, or None where there is none (or no signature)."""
    try:
        first = next(iter(inspect.signature(handler).parameters.values()), None)
    except (TypeError, ValueError):
        return None
    if first is None or first.annotation is inspect.Parameter.empty:
        return None
    annotation = first.annotation
    if isinstance(annotation, str):
        return annotation
    return repr(annotation) if hasattr(annotation, "__origin__") else getattr(annotation, "__name__", None)


def check_handler_shape(handler: Callable[..., Any], topic: str, event: "type[Event] | None", batch: int) -> None:
    """Refuse, when the service module is imported, a handler annotated for lists without `batch=N` or for one
    event with it: the runtime hands lists only when batch > 1, and a mismatch would fail on every record (and
    dead-letter it). Unannotated handlers are left alone; mypy checks the same through `subscribe`'s overloads."""
    annotation = _first_annotation(handler)
    if annotation is None:
        return
    name = getattr(handler, "__qualname__", repr(handler))
    takes_list = bool(_LIST_ANNOTATION.match(annotation))
    if batch == 1 and takes_list:
        raise HandlerMismatch(
            f"{name} takes a list ({annotation}) but subscribes to {topic!r} without batch=N, so it would be handed "
            f"one event at a time: add batch=N (N > 1) to subscribe, or take one event and an EventContext")
    single = event.__name__ if event is not None else "Record"
    if batch > 1 and (annotation == single or annotation.endswith(f".{single}")):
        raise HandlerMismatch(
            f"{name} takes one {single} but subscribes to {topic!r} with batch={batch}, so it would be handed "
            f"lists: take list[{single}] and a BatchContext, or drop batch")


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
    handler: EventHandler | BatchEventHandler
    event: "type[Event] | None"  # None: the handler receives the raw Record
    batch: int = 1  # above 1: the handler receives a list of up to this many events


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

    # The overlap is the point: batch=1 (or none) takes a handler of single events, any other count one of lists.
    @overload
    def subscribe(self, topic: str, *, event: "type[Event] | None" = None,  # type: ignore[overload-overlap]
                  batch: Literal[1] = 1) -> Callable[[EH], EH]: ...

    @overload
    def subscribe(self, topic: str, *, event: "type[Event] | None" = None,
                  batch: int) -> Callable[[BH], BH]: ...

    def subscribe(self, topic: str, *, event: "type[Event] | None" = None,
                  batch: int = 1) -> Callable[[Any], Any]:
        """Register a handler for every record of `topic` reaching this service's consumer group.

        With `event=SomeEvent` the handler receives the decoded event; a record that does not decode goes to the
        dead-letter topic. Raise `RetryLater` for a transient failure (retried until it succeeds).

        With `batch=N` (N > 1) the handler receives a list of up to N events of one partition, in order, and a
        BatchContext: whatever is waiting when it is free, never waiting for a list to fill, so one event at a
        time when traffic is light. If it raises RetryLater, the list is retried as it is; anything else, and each
        event of the list is handed to it again alone (a list of one) under the retry policy: a bad event is
        dead-lettered alone and the others may be handled twice, so the handler must be idempotent per event, as
        every handler must for redeliveries.

        Lists are handed when batch > 1, whatever the type checker saw: a batch size from an `int` variable is
        typed as a handler of lists, and a handler annotated for the other shape is refused when the module is
        imported (HandlerMismatch).
        """
        check_max_batch(batch)

        def register(handler: Any) -> Any:
            check_handler_shape(handler, topic, event, batch)
            self.subscribers.append(Subscriber(topic, handler, event, batch))
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
