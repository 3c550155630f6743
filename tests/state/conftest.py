from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from meshrun.state.base import Store
from tests.state.stores import KINDS, FakeClock, store_factory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    made = store_factory(request.param, tmp_path)(clock)
    await made.open()
    await made.open_space("svc")
    await made.open_space("other")
    try:
        yield made
    finally:
        await made.close()
