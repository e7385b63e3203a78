"""Deciding who renders what. Pure functions over numbers, so the rules are easy to test.

A user holds one list at a time: it gets a new one only once every frame of the old one
is in (a render node replaces its queue with each `start-rendering`, so a second list
while it renders would render the frame in hand twice). Lists are contiguous runs of the
lowest unassigned frames. Their size is the user's fair share of what is unassigned:
proportional to its measured rate once it has one, equal before that, counting the users
still expected, and at most `cap`; while frames are unassigned, no receiver is left empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def list_sizes(
    unassigned: int,
    receivers: Sequence[str],
    rates: Mapping[str, float | None],
    expected_users: int,
    cap: int,
) -> dict[str, int]:
    """How many frames each receiver (an active user holding nothing) gets now.

    `rates` has every active user (frames per second, None while unknown); users expected
    but not here yet count at the mean rate, so the first users to arrive leave frames for
    the rest. Every receiver gets at least one frame while any is unassigned."""
    if unassigned <= 0 or not receivers:
        return {}
    known = [rate for rate in rates.values() if rate]
    mean = sum(known) / len(known) if known else 1.0
    absent = max(0, expected_users - len(rates))
    capacity = sum(rates.get(user) or mean for user in rates) + absent * mean
    capacity = max(capacity, sum(rates.get(user) or mean for user in receivers))
    sizes: dict[str, int] = {}
    left = unassigned
    for user in receivers:
        if left <= 0:
            break
        share = math.ceil(unassigned * (rates.get(user) or mean) / capacity)
        size = min(max(1, share), cap, left)
        sizes[user] = size
        left -= size
    return sizes


def split_runs(frames: Sequence[int], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Cut sorted frames into consecutive slices, one per user, in the order of `sizes`."""
    plan: dict[str, list[int]] = {}
    start = 0
    for user_id, count in sizes.items():
        chunk = list(frames[start : start + count])
        if chunk:
            plan[user_id] = chunk
        start += count
    return plan


def steal_plan(
    idle: Sequence[str], queues: Mapping[str, Sequence[int]], min_queue: int
) -> list[tuple[str, str, list[int]]]:
    """When nothing is unassigned, move the tail half of the longest lists to idle users
    (a tail just moved can be halved again for the next one). Returns (donor, receiver,
    frames) moves, in order; a donor keeps the head it is rendering."""
    lengths = {user: len(frames) for user, frames in queues.items()}
    remaining = {user: list(frames) for user, frames in queues.items()}
    moves: list[tuple[str, str, list[int]]] = []
    for receiver in idle:
        donor = max(lengths, key=lambda user: (lengths[user], user), default=None)
        if donor is None or lengths[donor] < max(2, min_queue):
            break
        keep = math.ceil(lengths[donor] / 2)
        moved = remaining[donor][keep:]
        remaining[donor] = remaining[donor][:keep]
        lengths[donor] = keep
        lengths[receiver] = len(moved)
        remaining[receiver] = moved
        moves.append((donor, receiver, moved))
    return moves


def stolen_lists(moves: Sequence[tuple[str, str, list[int]]]) -> dict[str, list[int]]:
    """Each receiver's list after the moves, in order (a later move may take part of an
    earlier receiver's tail)."""
    owner: dict[int, str] = {}
    for _donor, receiver, frames in moves:
        for frame in frames:
            owner[frame] = receiver
    lists: dict[str, list[int]] = {}
    for frame in sorted(owner):
        lists.setdefault(owner[frame], []).append(frame)
    return lists
