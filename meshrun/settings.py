"""Typed settings for a service: a flat dataclass filled from its [services.NAME.settings] table.

Only flat values (str, int, float, bool, lists of those); a service with nested settings writes its own parser.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, TypeVar

from meshrun.errors import SettingsError

T = TypeVar("T")


def _accepts(kind: Any, value: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1] or (Any,)
        return isinstance(value, list) and all(_accepts(item, v) for v in value)
    if kind is Any:
        return True
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def settings_from(cls: type[T]) -> Callable[[dict[str, Any], str], T]:
    """A settings parser for `Service(settings=...)` that checks every key's type and flags unknown keys."""
    hints = typing.get_type_hints(cls)

    def parse(table: dict[str, Any], path: str) -> T:
        problems = []
        values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key, value in table.items():
            if key not in fields:
                problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(fields))})")
            elif not _accepts(hints[key], value):
                problems.append(f"{path}.{key}: expected {hints[key]}, got {type(value).__name__} {value!r}")
            else:
                values[key] = tuple(value) if isinstance(value, list) else value
        if problems:
            raise SettingsError(problems)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise SettingsError([f"{path}: {exc}"]) from None

    return parse
