"""meshrun's pytest plugin: fixtures that run your services inside the test's event loop (see meshrun.testing).

Installed with meshrun (the `pytest11` entry point). It imports the runtime only when a test asks for one of its
fixtures, so a test that does not use them runs exactly as without it. The fixtures are async: they need
pytest-asyncio, with `asyncio_mode = "auto"` or `@pytest.mark.asyncio` on each test.
"""
from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from meshrun.testing.harness import MeshFactory, MeshHarness

F = TypeVar("F", bound=Callable[..., Any])
CONFIG_INI = "meshrun_config"
MARKER = ("meshrun(config=None, only=None, **options): what the meshrun_harness fixture runs: a services.toml "
          "(relative to the rootdir; default: the meshrun_config ini option) or its dict, the services to run, and "
          "options of meshrun.testing.running_mesh (auth, users, clients, scopes, admin, ready_timeout)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(CONFIG_INI, "services.toml the meshrun_harness fixture runs, relative to the rootdir",
                  default="services.toml")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def _async_fixture(function: F) -> F:
    """pytest-asyncio's fixture decorator (an async fixture runs in the test's loop in strict and auto mode), or,
    without pytest-asyncio, a fixture that fails saying what to install."""
    try:
        import pytest_asyncio
    except ImportError:
        def needs_pytest_asyncio() -> None:
            pytest.fail(f"the {function.__name__} fixture (meshrun.testing) is async and needs pytest-asyncio: "
                        "pip install pytest-asyncio, and set asyncio_mode = \"auto\" or mark tests "
                        "@pytest.mark.asyncio", pytrace=False)

        return cast(F, pytest.fixture(name=function.__name__)(needs_pytest_asyncio))
    return cast(F, pytest_asyncio.fixture(function))


@_async_fixture
async def mesh_for() -> AsyncIterator[MeshFactory]:
    """A factory: `harness = await mesh_for(config, only=[...], **options)` runs a test mesh (see
    `meshrun.testing.running_mesh`); every mesh it started stops when the test ends."""
    from meshrun.testing.harness import running_mesh

    async with AsyncExitStack() as meshes:
        async def start(config: Any, only: Any = None, **options: Any) -> MeshHarness:
            return await meshes.enter_async_context(running_mesh(config, only, **options))

        yield cast("MeshFactory", start)  # its keyword options are running_mesh's, checked there


@_async_fixture
async def meshrun_harness(request: pytest.FixtureRequest, mesh_for: MeshFactory) -> MeshHarness:
    """The mesh of the project's services.toml (the `meshrun_config` ini option), or of the test's
    `@pytest.mark.meshrun(config, only=..., **options)`, running for the test."""
    marker = request.node.get_closest_marker("meshrun")
    args: tuple[Any, ...] = marker.args if marker is not None else ()
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    config = args[0] if args else options.pop("config", None)
    only = args[1] if len(args) > 1 else options.pop("only", None)
    if config is None:
        config = str(request.config.getini(CONFIG_INI))
    if isinstance(config, (str, os.PathLike)):  # a path: relative to the rootdir, as the ini option
        config = Path(request.config.rootpath, config)
    return await mesh_for(config, only, **options)
