"""What a service keeps between calls (`ctx.state`), by typed keys: `ctx.state[LEDGER]` is an OrderLedger to mypy.

Not storage that survives a restart: it lives in the process, as long as the service runs. aiohttp's `web.AppKey`
is the model: a key carries the type of its value, so a typo or a wrong type is a type error, not a KeyError.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar, overload

T = TypeVar("T")


class StateKey(Generic[T]):
    """A key of a service's state, typed by what it holds: `LEDGER = StateKey("ledger", OrderLedger)`."""

    __slots__ = ("name", "kind")

    def __init__(self, name: str, kind: type[T] | None = None) -> None:
        self.name = name
        self.kind = kind

    def __repr__(self) -> str:
        kind = f", {self.kind.__name__}" if self.kind is not None else ""
        return f"StateKey({self.name!r}{kind})"


class ServiceState:
    """A service's state by StateKey (typed) or by plain string (untyped, for quick scripts)."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[object, Any] = {}

    @overload
    def __getitem__(self, key: StateKey[T]) -> T: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: StateKey[Any] | str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            name = key.name if isinstance(key, StateKey) else key
            raise KeyError(f"no state {name!r} yet: set it in the service's @service.startup hook") from None

    @overload
    def __setitem__(self, key: StateKey[T], value: T) -> None: ...
    @overload
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __setitem__(self, key: StateKey[Any] | str, value: Any) -> None:
        self._values[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._values

    @overload
    def get(self, key: StateKey[T], default: T) -> T: ...
    @overload
    def get(self, key: StateKey[T], default: None = None) -> T | None: ...
    @overload
    def get(self, key: str, default: Any = None) -> Any: ...
    def get(self, key: StateKey[Any] | str, default: Any = None) -> Any:
        return self._values.get(key, default)

    @overload
    def setdefault(self, key: StateKey[T], default: T) -> T: ...
    @overload
    def setdefault(self, key: str, default: Any) -> Any: ...
    def setdefault(self, key: StateKey[Any] | str, default: Any) -> Any:
        return self._values.setdefault(key, default)

    def setdefault_with(self, key: StateKey[T], make: Callable[[], T]) -> T:
        """The value of `key`, made by `make` the first time (`make` runs once, not at every call)."""
        if key not in self._values:
            self._values[key] = make()
        value: T = self._values[key]
        return value
