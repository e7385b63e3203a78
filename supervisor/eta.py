"""How long a workload still has to run: each user's pace, folded from its deliveries, and
the wall time the frames left will take, as a central estimate and an 80 % interval.

A user's pace is a clipped running mean of the time between its deliveries (`fold`): one
slow frame moves it little, a real slowdown shows within a few frames. The lead mirrors
`fold` in the UPDATE that counts a delivery, so it is plain arithmetic. The first delivery
after a list starts is not folded in: it carries the list's start-up (the blend download).

`estimate` plays the farm forward: every user finishes the frame in its hands, then takes
frames one after another at its pace until none is left (list scheduling with idle users
taking tails, as supervisor/scheduling.py does it), and the last frame's finish is the
central estimate. The 80 % interval plays it again with paces a little faster and slower:
how much follows from what is known of each pace (how many frames, how spread) plus an
allowance for what nobody knows yet (users slowing down or leaving later), larger above
than below, growing with the frames each user still has to render. The constants were set
on the virtual-time farms of bench/eta_model.py (`.venv/bin/python -m bench.eta_model`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# --- fold: one user's pace -------------------------------------------------------------

# Weight of a new frame time once a user has 1/PACE_ALPHA samples; before that the pace is
# the plain mean of what it has delivered (weight 1/(samples+1)).
PACE_ALPHA = 0.3
# A frame time counts as at most the pace plus PACE_CLIP_SPREADS spreads, or plus
# (PACE_CLIP - 1) paces when that is more, and as at least the pace / PACE_CLIP. A steady
# user's pace moves about 12 % for one frame ten times slower; a user that really became
# five times slower widens its own spread frame after frame, and its pace is 80 % of the
# way there within seven frames; a user whose frames are uneven anyway (a heavy-tailed
# scene) keeps nearly the mean, which is what the remaining time needs.
PACE_CLIP = 1.5
PACE_CLIP_SPREADS = 5.0
# Weight of a new deviation in the spread (a running mean of |frame time - pace|).
SPREAD_ALPHA = 0.3
# The spread after the first frame, as a share of that frame time.
SPREAD_START = 0.25

# --- estimate ---------------------------------------------------------------------------

# "Enough data": at least this many frame times folded in across the users, from at least
# WARM_USERS users (or all of them when fewer are active). Before that the answer is
# "warming-up" and has no numbers.
WARM_SAMPLES = 6
WARM_USERS = 2
# A pace's standard error counts at most this many samples (a running mean with weight
# PACE_ALPHA remembers about this many frames).
EFFECTIVE_SAMPLES = 6
# A rate from few frames is too high on average (1 / mean overestimates, and the slow frames
# of the moment are not in yet): a pace from n samples counts as
# pace * (1 + FEW_SAMPLES * (spread / pace) ** 2 / n).
FEW_SAMPLES = 2.0
# A user not measured yet renders at UNMEASURED_PACES times the farm's typical pace (the
# users still unmeasured when others are are more often the slow ones), with this relative
# uncertainty.
UNMEASURED_PACES = 1.25
UNMEASURED_UNCERTAINTY = 0.8
# A user silent for longer than a list's start-up and STALL_GRACE paces is taken to be at
# least that slow per frame (the silence less the start-up and the grace): a stalled or
# slowed user makes the estimate worse the longer it is silent. A user not measured yet
# gets no grace.
STALL_GRACE = 1.0
# The frame in a user's hands needs at least this share of its pace still.
RESIDUAL_SHARE = 0.1
# A user holding nothing gets its next list after this many paces (a distribution or the
# rebalance, then the list's start-up).
IDLE_DELAY_PACES = 0.5
# Users the workload expects but does not have yet: the central estimate counts them as
# joining after JOIN_DELAY_PACES typical frames; the low end after JOIN_LOW_DELAY_PACES;
# the high end not at all.
JOIN_DELAY_PACES = 20.0
JOIN_LOW_DELAY_PACES = 10.0
# z of the 80 % two-sided interval (10 % in each tail), and the largest relative standard
# deviation used (beyond it the numbers say nothing anyway).
Z80 = 1.2816
MAX_SIGMA = 2.0
# The allowance for the unknown, as a relative standard deviation: DRIFT_UP above,
# DRIFT_DOWN below, scaled by h / (h + DRIFT_HORIZON) where h is the frames each user
# still has to render (a long run has more time to change; the last frames less).
DRIFT_UP = 0.16
DRIFT_DOWN = 0.06
DRIFT_HORIZON = 3.0
# The frames left vary around the pace: relative standard deviation WORK_SPREAD * (spread /
# pace) / sqrt(frames per user), and the last holder to finish is the slowest of several,
# TAIL_SPREADS spreads later than the typical one.
WORK_SPREAD = 1.0
TAIL_SPREADS = 1.0
# Steals rendered twice and the last lists' granularity make the farm a little slower than
# the ideal schedule.
OVERHEAD = 0.02
# Each list starts with the blend's download and load: the median over the users of their
# list start (fold_list_start) less their pace, START_UP_SECONDS until one is measured.
# LIST_START_ALPHA is the weight of a new list start in a user's running mean.
START_UP_SECONDS = 3.0
LIST_START_ALPHA = 0.5
# A user gets a list per MAX_LIST frames (max_frames_per_assignment) while the lists are
# full, then lists of a fair share of what is left, each smaller than the last: about
# ln(1 + frames per user) of them.
MAX_LIST = 50
# The interval widens by this many typical frame times below and above (the last frames
# finish when their holders do).
TAIL_LOW_PACES = 0.5
TAIL_HIGH_PACES = 1.0


@dataclass(frozen=True)
class Pace:
    """One active user, as stored per (workload, user)."""

    # robust typical time per frame (fold); None until measured
    frame_seconds: float | None
    # its typical deviation (same units)
    spread_seconds: float | None
    # frame times folded in so far
    samples: int
    # time since its last delivery or since its list started; None: holds nothing
    in_hand_seconds: float | None
    # frames it holds and has not delivered
    held: int
    # its lists' typical time from their start to their first delivery (fold_list_start):
    # the blend's download and one frame; None until a list of it delivered a frame. The
    # estimate works without it (START_UP_SECONDS), but a start-up far from that skews it.
    list_start_seconds: float | None = None


@dataclass(frozen=True)
class Estimate:
    """Seconds from now until every frame is rendered, and the 80 % interval around it."""

    seconds: float | None
    low_seconds: float | None
    high_seconds: float | None
    basis: str  # "measured" | "warming-up" | "no-users"

    def as_progress_keys(self) -> dict[str, float | str | None]:
        return {
            "eta_seconds": _tenths(self.seconds),
            "eta_low_seconds": _tenths(self.low_seconds),
            "eta_high_seconds": _tenths(self.high_seconds),
            "eta_basis": self.basis,
        }


def _tenths(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def fold(
    frame_seconds: float | None, spread_seconds: float | None, samples: int, interval: float
) -> tuple[float, float, int]:
    """Fold one frame time (seconds between two deliveries) into a user's pace: the new
    (frame_seconds, spread_seconds, samples).

    The caller skips the first delivery after a list starts (its interval holds the
    list's start-up), and counts several deliveries of one user handled together as one
    interval. In SQL, with f, s, n the stored columns and :x the interval, and c the
    clipped interval

        c = LEAST(GREATEST(:x, f / :clip), f + GREATEST(:spreads * s, (:clip - 1) * f))

    (every right-hand side of an UPDATE reads the old values, as this function does):

        frame_seconds  = CASE WHEN n = 0 THEN :x
                         ELSE f + GREATEST(:alpha, 1.0 / (n + 1)) * (c - f) END
        spread_seconds = CASE WHEN n = 0 THEN :x * :spread_start
                         ELSE s + GREATEST(:spread_alpha, 1.0 / (n + 1)) * (ABS(c - f) - s) END
        samples        = n + 1

    with :alpha = PACE_ALPHA, :clip = PACE_CLIP, :spreads = PACE_CLIP_SPREADS,
    :spread_alpha = SPREAD_ALPHA and :spread_start = SPREAD_START."""
    interval = max(0.0, interval)
    if samples <= 0 or frame_seconds is None:
        return interval, interval * SPREAD_START, 1
    spread = spread_seconds if spread_seconds is not None else frame_seconds * SPREAD_START
    ceiling = frame_seconds + max(PACE_CLIP_SPREADS * spread, (PACE_CLIP - 1) * frame_seconds)
    clipped = min(max(interval, frame_seconds / PACE_CLIP), ceiling)
    deviation = clipped - frame_seconds
    weight = max(PACE_ALPHA, 1.0 / (samples + 1))
    spread_weight = max(SPREAD_ALPHA, 1.0 / (samples + 1))
    return (
        frame_seconds + weight * deviation,
        spread + spread_weight * (abs(deviation) - spread),
        samples + 1,
    )


def fold_list_start(list_start_seconds: float | None, interval: float) -> float:
    """Fold the first interval after a list starts (the one `fold` skips: the list's
    start-up and one frame) into the user's list start, a running mean. In SQL, with l the
    stored value:

        list_start_seconds = CASE WHEN l IS NULL THEN :x
                             ELSE l + :list_start_alpha * (:x - l) END

    with :list_start_alpha = LIST_START_ALPHA."""
    interval = max(0.0, interval)
    if list_start_seconds is None:
        return interval
    return list_start_seconds + LIST_START_ALPHA * (interval - list_start_seconds)


@dataclass(frozen=True)
class _Worker:
    pace: float  # seconds per frame from its next frame on
    ready: float  # when it can start its next frame
    uncertainty: float  # relative standard error of its pace
    holder: bool  # has a frame in its hands, finishing at `ready`


def estimate(
    remaining_frames: int, users: Sequence[Pace], *, expected_users: int | None = None
) -> Estimate:
    """Seconds until the `remaining_frames` (total - rendered) are all in, given the active
    `users` now; `expected_users` (the workload's target user count) lets users still to
    come count.

    "no-users" when no user is active; "warming-up" (no numbers) until enough is known: at
    least WARM_SAMPLES frame times folded in across the users, from at least WARM_USERS of
    them (all of them when fewer are active). Users not measured yet render at the farm's
    typical pace (the median of the measured ones, times UNMEASURED_PACES). A user silent
    for longer than a start-up and STALL_GRACE of its frames counts as at least as slow as
    its silence, so a stalled user pushes the estimate later the longer it stays silent."""
    if remaining_frames <= 0:
        return Estimate(0.0, 0.0, 0.0, "measured")
    if not users:
        return Estimate(None, None, None, "no-users")
    measured = [u for u in users if _measured(u)]
    timed = sum(u.samples for u in measured)
    if timed < WARM_SAMPLES or len(measured) < min(WARM_USERS, len(users)):
        return Estimate(None, None, None, "warming-up")

    typical = statistics.median(u.frame_seconds or 0.0 for u in measured)
    variation = min(
        1.0,
        statistics.median((u.spread_seconds or 0.0) / (u.frame_seconds or 1.0) for u in measured),
    )
    start_ups = [
        max(0.0, u.list_start_seconds - (u.frame_seconds if _measured(u) else typical))
        for u in users
        if u.list_start_seconds is not None
    ]
    start_up = statistics.median(start_ups) if start_ups else START_UP_SECONDS
    workers = [_worker(user, typical, start_up) for user in users]
    missing = max(0, (expected_users or 0) - len(users))
    later = _Worker(typical, JOIN_DELAY_PACES * typical, UNMEASURED_UNCERTAINTY, False)
    soon = _Worker(typical, JOIN_LOW_DELAY_PACES * typical, UNMEASURED_UNCERTAINTY, False)

    per_user = remaining_frames / len(workers)
    lists = math.log1p(min(per_user, MAX_LIST)) + max(0.0, per_user - MAX_LIST) / MAX_LIST
    rate = sum(1 / w.pace for w in workers)
    known = math.sqrt(sum((w.uncertainty / w.pace) ** 2 for w in workers)) / rate
    work = WORK_SPREAD * variation / math.sqrt(max(1.0, per_user))
    horizon = per_user / (per_user + DRIFT_HORIZON)
    up = Z80 * min(MAX_SIGMA, math.sqrt(known**2 + work**2 + (DRIFT_UP * horizon) ** 2))
    down = Z80 * min(MAX_SIGMA, math.sqrt(known**2 + work**2 + (DRIFT_DOWN * horizon) ** 2))
    tail = TAIL_SPREADS * variation * typical

    def play(factor: float, joining: list[_Worker]) -> float:
        team = [_scaled(w, factor) for w in workers + joining]
        ideal = _makespan(team, remaining_frames) * (1 + OVERHEAD)
        return ideal + factor * (start_up * lists + tail)

    central = play(1.0, [later] * missing)
    high = max(central, play(math.exp(up), []) + TAIL_HIGH_PACES * typical)
    low = max(0.0, min(central, play(math.exp(-down), [soon] * missing) - TAIL_LOW_PACES * typical))
    return Estimate(central, low, high, "measured")


def _measured(user: Pace) -> bool:
    return user.samples > 0 and user.frame_seconds is not None and user.frame_seconds > 0


def _worker(user: Pace, typical: float, start_up: float) -> _Worker:
    if _measured(user):
        pace = user.frame_seconds or typical
        spread = user.spread_seconds or 0.0
        samples = min(user.samples, EFFECTIVE_SAMPLES)
        pace *= 1 + FEW_SAMPLES * min(1.0, spread / pace) ** 2 / samples
        uncertainty = min(UNMEASURED_UNCERTAINTY, spread / pace / math.sqrt(samples))
        grace = start_up + STALL_GRACE * pace
    else:
        pace, uncertainty, grace = typical * UNMEASURED_PACES, UNMEASURED_UNCERTAINTY, start_up
    if user.in_hand_seconds is None or user.held <= 0:
        return _Worker(pace, IDLE_DELAY_PACES * pace, uncertainty, False)
    in_hand = max(0.0, user.in_hand_seconds)
    pace = max(pace, in_hand - grace)
    residual = max(pace - in_hand, RESIDUAL_SHARE * pace)
    return _Worker(pace, residual, uncertainty, True)


def _scaled(worker: _Worker, factor: float) -> _Worker:
    return _Worker(worker.pace * factor, worker.ready * factor, worker.uncertainty, worker.holder)


def _makespan(workers: Sequence[_Worker], frames: int) -> float:
    """When the last of `frames` is done if every worker finishes the frame in its hands,
    then takes the next frame whenever it is free (ties: the fastest first)."""
    holders = sorted(w.ready for w in workers if w.holder)
    if frames <= len(holders):
        return holders[frames - 1] if frames > 0 else 0.0
    last_in_hand = holders[-1] if holders else 0.0
    to_start = frames - len(holders)

    def started(t: float) -> int:
        return sum(math.floor((t - w.ready) / w.pace) + 1 for w in workers if t >= w.ready)

    low = min(w.ready for w in workers) - 1e-9
    high = min(w.ready + to_start * w.pace for w in workers)
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if started(middle) >= to_start:
            high = middle
        else:
            low = middle
    # Frames started by `low` are settled; the rest start in (low, high], the earliest
    # finishers taking them.
    finish = last_in_hand
    boundary: list[float] = []
    count = 0
    for w in workers:
        before = math.floor((low - w.ready) / w.pace) + 1 if low >= w.ready else 0
        after = math.floor((high - w.ready) / w.pace) + 1 if high >= w.ready else 0
        count += before
        if before:
            finish = max(finish, w.ready + before * w.pace)
        boundary.extend(w.ready + (k + 1) * w.pace for k in range(before, after))
    boundary.sort()
    needed = to_start - count
    if needed > 0 and boundary:
        finish = max(finish, boundary[min(needed, len(boundary)) - 1])
    return finish
