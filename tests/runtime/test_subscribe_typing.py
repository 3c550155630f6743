"""`Service.subscribe` is typed: a handler of lists registered without `batch=N` (it would be handed single events)
and a handler of single events registered with it are type errors, found by mypy before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra: pip install -e '.[test]'")

HANDLERS = '''
from meshrun import BatchContext, EventContext, Service
from meshrun.services.events import OrderPlaced

service = Service("typed")


@service.subscribe("order-events", event=OrderPlaced)
async def one(event: OrderPlaced, ctx: EventContext) -> None: ...


@service.subscribe("order-events", event=OrderPlaced, batch=50)
async def many(events: list[OrderPlaced], ctx: BatchContext) -> None: ...


@service.subscribe("order-events", event=OrderPlaced)
async def lists_without_batch(events: list[OrderPlaced], ctx: BatchContext) -> None: ...


@service.subscribe("order-events", event=OrderPlaced, batch=50)
async def single_events_with_batch(event: OrderPlaced, ctx: EventContext) -> None: ...
'''


def test_mypy_accepts_matching_handlers_and_flags_the_two_mismatches(tmp_path: Path) -> None:
    module = tmp_path / "typed_handlers.py"
    module.write_text(HANDLERS)
    report, errors, status = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                                           str(module)])
    flagged = sorted(int(line.split(":")[1]) for line in report.splitlines() if ": error:" in line)
    lines = HANDLERS.splitlines()
    expected = sorted(i + 1 for i, text in enumerate(lines)
                      if text.startswith(("async def lists_without_batch", "async def single_events_with_batch")))
    assert status == 1, report + errors
    assert flagged == [line - 1 for line in expected], report  # mypy names the decorator's line
