"""Testing your services: run them inside a test on the real runtime and the in-memory transport, publish, wait
until a consumer group has handled it, read what was published and dead-lettered, and get real tokens.

    async with running_mesh("services.toml", only=["shipping"]) as mesh:
        await mesh.publish("order-events", OrderPlaced(...), key="o-1")
        await mesh.handled("shipping-group")
        assert mesh.published("shipping-events", ParcelShipped)[0].order_id == "o-1"

The pytest fixtures `mesh_for` and `meshrun_harness` (meshrun.testing.plugin) wrap `running_mesh`. Not a stub:
the services run as under `meshrun up`, with their HTTP on free ports and their tokens signed by a real issuer.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshrun.testing.harness import MeshFactory, MeshHarness, NoIssuer, UndeclaredIdentity, running_mesh
    from meshrun.testing.mesh_config import free_port
    from meshrun.testing.topics import DeadLetter, GroupDidNotCatchUp, UnknownGroup

# Imported on first use: pytest loads this package's plugin in every run, and a run that uses none of its
# fixtures should not import the runtime.
_HOMES = {
    "MeshFactory": "harness", "MeshHarness": "harness", "NoIssuer": "harness", "UndeclaredIdentity": "harness",
    "running_mesh": "harness", "free_port": "mesh_config", "DeadLetter": "topics", "GroupDidNotCatchUp": "topics",
    "UnknownGroup": "topics",
}
__all__ = ["DeadLetter", "GroupDidNotCatchUp", "MeshFactory", "MeshHarness", "NoIssuer", "UndeclaredIdentity",
           "UnknownGroup", "free_port", "running_mesh"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'meshrun.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"meshrun.testing.{home}"), name)
