"""Deciding who renders what. Pure functions over numbers, so the rules are easy to test.

Users receive contiguous runs of frames (short lists, good cache locality on the node) and
at most `cap` frames at a time: a user that finishes asks for more, so late joiners and
fast nodes get work without anyone's queue being rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def fair_share(pending: int, held: Mapping[str, int], cap: int) -> int:
    """How many frames each active user should hold after a distribution."""
    if not held or pending <= 0:
        return 0
    return min(cap, math.ceil((pending + sum(held.values())) / len(held)))


def top_ups(pending: int, held: Mapping[str, int], cap: int) -> dict[str, int]:
    """How many more frames each user gets: up to the fair share, idle users first,
    then the least loaded, never more than what is pending."""
    share = fair_share(pending, held, cap)
    grants: dict[str, int] = {}
    left = pending
    for user_id in sorted(held, key=lambda user: (held[user], user)):
        if left <= 0:
            break
        extra = min(share - held[user_id], left)
        if extra > 0:
            grants[user_id] = extra
            left -= extra
    return grants


def split_runs(frames: Sequence[int], grants: Mapping[str, int]) -> dict[str, list[int]]:
    """Cut sorted frames into consecutive slices, one per user, in the order of `grants`."""
    plan: dict[str, list[int]] = {}
    start = 0
    for user_id, count in grants.items():
        chunk = list(frames[start : start + count])
        if chunk:
            plan[user_id] = chunk
        start += count
    return plan


def steal_plan(
    idle: Sequence[str], queues: Mapping[str, Sequence[int]], min_queue: int
) -> list[tuple[str, str, list[int]]]:
    """When nothing is pending, move the unstarted tail half of the longest queues to idle
    users. Returns (donor, receiver, frames) moves; a donor keeps the head it is rendering."""
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
        moves.append((donor, receiver, moved))
    return moves
