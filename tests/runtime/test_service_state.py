"""A service's state by typed keys: values come back with their type, to mypy and at run time; a missing key says
where to set it."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshrun.service_state import ServiceState, StateKey

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra: pip install -e '.[test]'")

COUNTER = StateKey("counter", int)
NAMES = StateKey("names", list[str])


def test_values_are_kept_by_typed_key_and_plain_strings_still_work() -> None:
    state = ServiceState()
    state[COUNTER] = 1
    state[COUNTER] += 1
    assert state[COUNTER] == 2 and COUNTER in state and NAMES not in state
    assert state.get(NAMES) is None and state.get(NAMES, []) == []
    made: list[int] = []
    first = state.setdefault_with(NAMES, lambda: made.append(1) or ["ada"])
    again = state.setdefault_with(NAMES, lambda: made.append(1) or ["never"])
    assert first is again and made == [1]  # the factory runs once
    state["untyped"] = {"a": 1}
    assert state["untyped"] == {"a": 1} and state.setdefault("other", 3) == 3


def test_a_missing_key_says_where_to_set_it() -> None:
    with pytest.raises(KeyError, match="no state 'counter' yet: set it in the service's @service.startup hook"):
        ServiceState()[COUNTER]


def test_mypy_knows_the_type_of_each_key(tmp_path: Path) -> None:
    module = tmp_path / "typed_state.py"
    module.write_text('''
from meshrun.service_state import ServiceState, StateKey

LEDGER = StateKey("ledger", dict[str, int])
state = ServiceState()
state[LEDGER] = {"order-1": 2}
count: int = state[LEDGER]["order-1"]
state[LEDGER] = "not a dict"
wrong: str = state[LEDGER]
''')
    report, _, _ = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                                 str(module)])
    flagged = sorted(int(line.split(":")[1]) for line in report.splitlines() if ": error:" in line)
    assert flagged == [8, 9], report
