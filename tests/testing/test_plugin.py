"""The pytest plugin in a project of its own: found through its entry point, working in pytest-asyncio's strict
mode, and importing nothing of the runtime for tests that do not use its fixtures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USER_TESTS = '''
import sys

import pytest

from meshrun.examples.greeter import Greeted

GREETER = {"topics": {"greetings": {"partitions": 1}},
           "services": {"greeter": {"module": "meshrun.examples.greeter", "port": 8080, "group": "greeter-group"}}}


def test_a_test_without_the_fixtures_runs_without_the_runtime():
    assert "meshrun.runtime" not in sys.modules and "meshrun.testing.harness" not in sys.modules


@pytest.mark.asyncio
async def test_a_marked_test_gets_a_running_mesh(mesh_for):
    mesh = await mesh_for(GREETER)
    await mesh.publish("greetings", Greeted(name="ada"), key="ada")
    assert await mesh.handled("greeter-group") == 1


@pytest.mark.asyncio
@pytest.mark.meshrun("services.toml", only="greeter")
async def test_the_marker_names_a_file_of_the_rootdir(meshrun_harness):
    assert meshrun_harness.url("greeter").startswith("http://127.0.0.1:")
'''

SERVICES_TOML = '''
[topics.greetings]
partitions = 2

[services.greeter]
module = "meshrun.examples.greeter"
port = 8080
group = "greeter-group"
'''


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A project of its own: its own rootdir and ini, none of this repository's conftest or settings.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=project, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_the_fixtures_work_in_strict_mode_in_a_project_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n"
                                         "asyncio_default_fixture_loop_scope = function\n")
    (tmp_path / "services.toml").write_text(SERVICES_TOML)
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_without_pytest_asyncio_the_fixture_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text("def test_needs_a_loop(mesh_for):\n    pass\n")
    # An environment without pytest-asyncio: its plugin is not loaded, and importing it fails.
    missing = tmp_path / "missing" / "pytest_asyncio"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('pytest-asyncio is not installed here')\n")
    path = os.pathsep.join(filter(None, [str(missing.parent), os.environ.get("PYTHONPATH")]))
    result = run_pytest(tmp_path, "-p", "no:asyncio", env={"PYTHONPATH": path})
    assert result.returncode == 1
    assert "the mesh_for fixture (meshrun.testing) is async and needs pytest-asyncio" in result.stdout
