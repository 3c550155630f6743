"""Finds transports by name: every installed distribution may add one under the `meshrun.transports` entry points.

Not a factory of configured transports (that is `meshrun.transport.create_transport`): only names and classes.
meshrun registers `memory` and `kafka` in its own pyproject.toml; a third transport is a package that declares

    [project.entry-points."meshrun.transports"]
    mytransport = "mypackage.transport:MyTransport"

and a `[transport.mytransport]` table in services.toml configures it (see `Transport.from_config`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from meshrun.errors import MeshrunError

if TYPE_CHECKING:
    from meshrun.transport.base import Transport

ENTRY_POINT_GROUP = "meshrun.transports"


class UnknownTransport(MeshrunError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown transport {name!r} (installed: {', '.join(known) or 'none'}): install the package "
                         f"that provides it, or set mesh.transport to one of those")


def transport_names() -> list[str]:
    """The transports installed, by name."""
    # Imported when asked: reading package metadata costs a process start tens of milliseconds.
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def transport_class(name: str) -> "type[Transport]":
    """The class of the transport registered as `name`."""
    from importlib.metadata import entry_points

    from meshrun.transport.base import Transport

    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise UnknownTransport(name, transport_names())
    cls = next(iter(found)).load()
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise MeshrunError(f"the transport registered as {name!r} ({cls!r}) is not a meshrun Transport class")
    return cls
