from __future__ import annotations

import pytest

from supervisor import recent
from supervisor.recent import Recent


def test_an_answer_is_reused_until_it_is_older_than_max_age(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(recent.time, "monotonic", lambda: now[0])
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    answer = Recent(compute, max_age=1.0)
    assert [answer.get(), answer.get()] == [1, 1]
    now[0] += 1.0
    assert answer.get() == 1
    now[0] += 0.01
    assert answer.get() == 2


def test_a_failure_is_not_kept() -> None:
    outcomes = iter([RuntimeError("down"), 7])

    def compute() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    answer = Recent(compute, max_age=60)
    with pytest.raises(RuntimeError):
        answer.get()
    assert answer.get() == 7
