from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.scheduling import fair_share, split_runs, steal_plan, top_ups


def test_fair_share_is_capped() -> None:
    assert fair_share(1_000_000, {f"u{i}": 0 for i in range(1000)}, cap=250) == 250
    assert fair_share(11, {"a": 0, "b": 0}, cap=250) == 6
    assert fair_share(0, {"a": 0}, cap=250) == 0
    assert fair_share(5, {}, cap=250) == 0


def test_top_ups_prefer_idle_users() -> None:
    assert top_ups(4, {"busy": 3, "idle": 0}, cap=10) == {"idle": 4}
    assert top_ups(10, {"a": 0, "b": 0}, cap=3) == {"a": 3, "b": 3}


def test_split_runs_are_contiguous_in_grant_order() -> None:
    frames = [1, 4, 7, 10, 13]
    assert split_runs(frames, {"a": 2, "b": 3}) == {"a": [1, 4], "b": [7, 10, 13]}


def test_steal_takes_the_tail_of_the_longest_queue() -> None:
    moves = steal_plan(["idle"], {"a": [1, 2, 3, 4, 5, 6], "b": [7, 8]}, min_queue=2)
    assert moves == [("a", "idle", [4, 5, 6])]
    assert steal_plan(["idle"], {"a": [1]}, min_queue=2) == []


@given(
    pending=st.integers(0, 5000),
    held=st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3), st.integers(0, 50), max_size=20
    ),
    cap=st.integers(1, 300),
)
def test_top_ups_never_overgrant(pending: int, held: dict[str, int], cap: int) -> None:
    grants = top_ups(pending, held, cap)
    assert sum(grants.values()) <= pending
    for user, extra in grants.items():
        assert extra > 0
        assert held[user] + extra <= max(cap, held[user])


@given(
    sizes=st.dictionaries(st.text("xyz", min_size=1, max_size=2), st.integers(0, 30), max_size=6),
    idle=st.lists(st.text("ij", min_size=1, max_size=2), max_size=4, unique=True),
)
def test_steals_move_each_frame_at_most_once(sizes: dict[str, int], idle: list[str]) -> None:
    """Frames are unique across users, as in the frames table."""
    queues, start = {}, 0
    for user, size in sizes.items():
        queues[user] = list(range(start, start + size))
        start += size
    moves = steal_plan(idle, queues, min_queue=2)
    moved = [frame for _, _, frames in moves for frame in frames]
    assert len(moved) == len(set(moved))
    assert {receiver for _, receiver, _ in moves} <= set(idle)
    for donor, _, frames in moves:
        assert set(frames) <= set(queues[donor])
        assert queues[donor][0] not in frames, "the frame being rendered stays with its user"
