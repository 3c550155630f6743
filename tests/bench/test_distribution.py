"""The benchmark is a distribution of its own (bench/): `meshrun` finds `bench` through an entry point, no product
module imports it, and it reaches meshrun through public modules only, never the CLI."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from click.testing import CliRunner

from meshrun.cli import COMMANDS_ENTRY_POINTS, main
from meshrun_bench.cli import bench
from tests.conftest import ROOT


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Module name -> every module it imports (at the top or inside a function), for each module of a package."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module)
                modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[name] = modules
    return found


def test_meshrun_bench_is_the_command_its_distribution_registers() -> None:
    (entry_point,) = [ep for ep in entry_points(group=COMMANDS_ENTRY_POINTS) if ep.name == "bench"]
    assert entry_point.load() is bench
    result = CliRunner().invoke(main, ["bench", "--help"], prog_name="meshrun")
    assert result.exit_code == 0 and "Usage: meshrun bench" in result.output, result.output
    listed = CliRunner().invoke(main, ["--help"])
    assert "bench" in listed.output and "up" in listed.output


def test_meshrun_starts_without_importing_the_benchmark_or_reading_entry_points() -> None:
    code = ("import sys; from meshrun.cli import main; main.get_command(None, 'up'); "
            "print('meshrun_bench' in sys.modules, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.split() == ["False", "False"]


def test_no_product_module_imports_the_benchmark() -> None:
    offenders = {module: sorted(m for m in imports if m.split(".")[0] == "meshrun_bench")
                 for module, imports in imported_modules(ROOT / "meshrun").items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_benchmark_imports_no_cli() -> None:
    graph = imported_modules(ROOT / "bench" / "meshrun_bench")
    assert {m: sorted(i) for m, i in graph.items() if any(x.startswith("meshrun.cli") for x in i)} == {}


def test_the_benchmarks_modules_import_each_other_without_a_cycle() -> None:
    graph = imported_modules(ROOT / "bench" / "meshrun_bench")
    edges = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    assert [m for m in graph if reaches(m, m, set())] == []
