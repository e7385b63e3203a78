"""Farm profiles: how long each simulated user takes over a frame, and whether it hangs.

A frame's time is drawn from `frame_time_dist` with mean `frame_time`, then multiplied by the
user's speed factor: `slow_factor` for the slow users, from the start; times `slowdown_factor`
for the slowing users once their seconds of rendering reach `slowdown_after`. A stalling user
hangs for good once its seconds of rendering reach `stall_after`. Seconds of rendering are the
user's own frame times added up, so waiting in the idle pool or for a late join does not count.

Which users are slow, slow down or stall is drawn once from the seed with a generator of its
own, so turning a profile on changes no other draw of a seeded run (who disconnects, who
completes early). The three sets are drawn independently: a user may be in several, and its
factors then multiply.

Bad users (`bad_users`), which upload a bad image for every frame, are drawn the same way
from a generator of their own, so they change neither the profiles nor any other draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.config import SimulatorConfig


def share_count(count: int, share: float) -> int:
    """How many of `count` users a share means, rounding halves up (0.2 of 5 users is 1)."""
    return int(share * count + 0.5)


def sample_frame_time(
    rng: random.Random,
    mean: float,
    dist: str = "fixed",
    tail: float | None = None,
    jitter: float = 0.0,
) -> float:
    """One frame's time in seconds, never negative, with expected value `mean` (for `fixed`,
    `mean` ± a uniform `jitter`, clipped at 0).

    `lognormal`: exp(N(mu, tail²)) with mu = ln(mean) - tail²/2, so the mean is `mean` and
    the median below it. `pareto`: Pareto type I of shape alpha = `tail` and scale
    mean * (alpha - 1) / alpha, so no frame is quicker than that scale and a few take many
    times the mean; at alpha <= 2 its variance is infinite and averages settle slowly.
    `fixed` draws from `rng` exactly as the simulator always has, so seeded runs keep their
    frame times."""
    if dist == "fixed":
        delay = mean + rng.uniform(-jitter, jitter) if jitter else mean
        return max(0.0, delay)
    if tail is None:
        raise ValueError(f"{dist} frame times need a tail")
    if mean <= 0:
        return 0.0
    if dist == "lognormal":
        return rng.lognormvariate(math.log(mean) - tail * tail / 2, tail)
    if dist == "pareto":
        return mean * (tail - 1) / tail * rng.paretovariate(tail)
    raise ValueError(f"unknown frame time distribution {dist!r}")


@dataclass(frozen=True)
class Profile:
    """One user's speed and stall plan. `None` for a change that never comes."""

    slow_factor: float = 1.0
    slowdown_after: float | None = None
    slowdown_factor: float = 1.0
    stall_after: float | None = None

    def speed_factor(self, render_seconds: float) -> float:
        """How many times slower than the farm's frame time this user renders now."""
        factor = self.slow_factor
        if self.slowdown_after is not None and render_seconds >= self.slowdown_after:
            factor *= self.slowdown_factor
        return factor

    def stall_point(self, render_seconds: float, frame_seconds: float) -> float | None:
        """Seconds into a frame of `frame_seconds`, begun after `render_seconds` of rendering,
        at which the user hangs; None when it finishes that frame. A frame that would end on
        the stall point is not delivered."""
        if self.stall_after is None or render_seconds + frame_seconds < self.stall_after:
            return None
        return max(0.0, self.stall_after - render_seconds)

    def public(self, render_seconds: float) -> dict[str, Any]:
        """The plan and where the user stands in it, for the state endpoint."""
        return {
            "speed_factor": self.speed_factor(render_seconds),
            "slow_factor": self.slow_factor,
            "slows_down_after": self.slowdown_after,
            "slowdown_factor": self.slowdown_factor,
            "stalls_after": self.stall_after,
            "render_seconds": round(render_seconds, 6),
        }


def assign_profiles(user_ids: Sequence[str], config: SimulatorConfig) -> dict[str, Profile]:
    """Every user's profile: exactly `share_count(len(user_ids), share)` users in each set,
    the same users for the same seed and user ids."""
    rng = random.Random(f"{config.seed}/profiles") if config.seed is not None else random.Random()
    ids = list(user_ids)
    slow = set(rng.sample(ids, share_count(len(ids), config.slow_share)))
    slowing = set(rng.sample(ids, share_count(len(ids), config.slowdown_share)))
    stalling = set(rng.sample(ids, share_count(len(ids), config.stall_share)))
    profiles = {}
    for user_id in ids:
        profiles[user_id] = Profile(
            slow_factor=config.slow_factor if user_id in slow else 1.0,
            slowdown_after=config.slowdown_after if user_id in slowing else None,
            slowdown_factor=config.slowdown_factor if user_id in slowing else 1.0,
            stall_after=config.stall_after if user_id in stalling else None,
        )
    return profiles


def assign_bad_users(user_ids: Sequence[str], config: SimulatorConfig) -> dict[str, str]:
    """The bad users and the kind of each: exactly `config.bad_user_counts` users of each
    kind, none in two kinds, the same users for the same seed and user ids."""
    kinds = [kind for kind, count in config.bad_user_counts.items() for _ in range(count)]
    if not kinds:
        return {}
    seed = f"{config.seed}/bad-users" if config.seed is not None else None
    users = random.Random(seed).sample(list(user_ids), len(kinds))
    return dict(zip(users, kinds, strict=True))
