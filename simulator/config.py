"""The simulator's knobs, in one dataclass shared by the in-process API and the CLI."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_QUEUE = "USER_MANAGER_QUEUE"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "blend" / "blender-5.0"
DEFAULT_DEMO_BLEND = "range_10_20.blend"
RENDER_MODES = ("placeholder", "real")
PEER_MODES = ("real", "ideal")
FRAME_TIME_DISTS = ("fixed", "lognormal", "pareto")
# The `tail` a distribution takes when none is given: a lognormal's sigma, a Pareto's alpha.
DEFAULT_TAIL = {"lognormal": 0.5, "pareto": 2.5}
DEFAULT_USER_PREFIX = "sim-user"
# What a bad user uploads for every frame it renders (simulator/render.py bad_frame).
BAD_KINDS = ("black", "truncated", "wrong-resolution", "text")
_USER_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything a test or a demo may turn. Shares are in 0..1; times are in seconds.

    `port=0` picks a free port (read it back from `Simulator.base_url`). `data_dir=None` uses
    a temporary directory removed by `stop()`. `private_queue=True` consumes from a queue of
    its own (`<user_manager_queue>.<random>`, exclusive, auto-delete) instead of the shared
    durable one, so several simulators on one broker each see every demand. `reorder` delays
    every event to SESSION_SUPERVISOR_EXCHANGE (each copy of a duplicate on its own) by a
    uniform random time in [0, reorder], so events arrive shuffled.

    `peer_mode="real"` plays the peers as CONTRACT.md section 7 says they really behave:
    `more-users` ignored while a demand is queued, a demand served in part is forgotten,
    `user-rendering-completed` never forwarded, events only for registered sessions and
    mapped users, the real event shapes and User Service paths, and `join_delay` /
    `join_batch` read as idle users connecting over time. `"ideal"` plays the contract's
    tables as written (demand kept until filled, every event forwarded, waves of users).
    `quirks` adds the contract's tolerated variants at random, in either mode.

    `amqp=False` leaves the User Manager's AMQP side out: no consumer, no broker connection
    (`broker_url` is not used); its HTTP registration is served as ever. Simulated users
    report over AMQP, so it needs `users=0`: the HTTP peers alone, as integration tests use
    them. `journal=True` keeps every request to the peers, body included, in memory
    (`Simulator.requests`): for tests only.

    Users are `<user_prefix>-001`, `-002`, ... Every simulator on one broker sees every
    supervisor's demand (the exchange's one routing key), and a real User Manager takes
    released users back from anyone after a restart: simulators running side by side on
    one broker keep apart by giving their users different prefixes.

    Farm profiles (all off by default; which users, chosen from the seed, independently of
    each other so one user may be slow and stall too, see simulator/profiles.py):
    `slow_share` of the users are `slow_factor` times slower from the start;
    `slowdown_share` become `slowdown_factor` times slower once they have rendered for
    `slowdown_after` seconds; `stall_share` hang after `stall_after` seconds of rendering
    (they keep their frames, never deliver them and never disconnect). Seconds of rendering
    are a user's own frame times added up, idle time excluded. `frame_time_dist` draws each
    frame's time: `fixed` is `frame_time` ± `jitter`; `lognormal` and `pareto` are
    heavy-tailed with mean `frame_time`, shaped by `tail` (the lognormal's sigma, > 0,
    default 0.5; the Pareto's alpha, > 1, default 2.5: the smaller, the heavier the tail).

    `bad_users` names how many users of each kind upload a bad image for every frame they
    render, as `"black=1,truncated=1,wrong-resolution=1,text=1"` (any of the kinds, each
    once; "" for none): `black` a valid all-black PNG of the right size, `truncated` a
    right-size PNG cut in half (no IEND), `wrong-resolution` a valid PNG at half the width
    and height, `text` a line of text; all are announced as PNGs. Which users, drawn from the
    seed with a generator of their own (simulator/profiles.py); they render on the usual
    timing otherwise.
    """

    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path | None = None
    broker_url: str = DEFAULT_BROKER_URL
    users: int = 5
    frame_time: float = 0.5
    jitter: float = 0.0
    join_delay: float = 0.0
    join_batch: int = 0
    disconnect_share: float = 0.0
    fail_share: float = 0.0
    early_complete_share: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    quirks: bool = False
    peer_mode: str = "real"
    seed: int | None = None
    demo_blend: str | None = DEFAULT_DEMO_BLEND
    render: str = "placeholder"
    user_manager_queue: str = DEFAULT_QUEUE
    private_queue: bool = False
    workers: int = 4
    broker_ready_timeout: float = 15.0
    amqp: bool = True
    journal: bool = False
    user_prefix: str = DEFAULT_USER_PREFIX
    slow_share: float = 0.0
    slow_factor: float = 1.0
    slowdown_share: float = 0.0
    slowdown_factor: float = 1.0
    slowdown_after: float = 0.0
    stall_share: float = 0.0
    stall_after: float = 0.0
    frame_time_dist: str = "fixed"
    tail: float | None = None
    bad_users: str = ""

    def __post_init__(self) -> None:
        problems = []
        for name in ("disconnect_share", "fail_share", "early_complete_share", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        for name in ("frame_time", "jitter", "join_delay", "reorder", "broker_ready_timeout"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.users < 0 or self.join_batch < 0:
            problems.append("users and join_batch must not be negative")
        if self.workers < 1:
            problems.append("workers must be at least 1")
        if not 0 <= self.port <= 65535:
            problems.append("port must be 0..65535")
        if self.peer_mode not in PEER_MODES:
            problems.append(f"peer_mode must be one of {', '.join(PEER_MODES)}")
        if self.render not in RENDER_MODES:
            problems.append(f"render must be one of {', '.join(RENDER_MODES)}")
        if not self.user_manager_queue:
            problems.append("user_manager_queue must not be empty")
        if not _USER_PREFIX.fullmatch(self.user_prefix):
            problems.append("user_prefix must be 1-64 characters of A-Z a-z 0-9 . _ -")
        if not self.amqp and self.users:
            problems.append("users must be 0 without amqp: simulated users report over AMQP")
        problems += self._profile_problems()
        try:
            bad = sum(parse_bad_users(self.bad_users).values())
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if bad > self.users:
                problems.append(f"bad_users names {bad} users but there are {self.users}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))

    def _profile_problems(self) -> list[str]:
        """What is wrong with the farm-profile knobs (checked apart: NaN passes `< 0`)."""
        problems = []
        numbers = ("slow_share", "slow_factor", "slowdown_share", "slowdown_factor")
        numbers += ("slowdown_after", "stall_share", "stall_after")
        for name in numbers:
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be a finite number")
        for name in ("slow_share", "slowdown_share", "stall_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        for name in ("slow_factor", "slowdown_factor"):
            if not getattr(self, name) >= 1.0:
                problems.append(f"{name} must be at least 1 (a factor of slowness)")
        for name in ("slowdown_after", "stall_after"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if self.frame_time_dist not in FRAME_TIME_DISTS:
            problems.append(f"frame_time_dist must be one of {', '.join(FRAME_TIME_DISTS)}")
        elif self.frame_time_dist == "fixed":
            if self.tail is not None:
                problems.append("tail must be left unset with frame_time_dist fixed")
        else:
            if self.jitter:
                problems.append("jitter must be 0 unless frame_time_dist is fixed")
            tail = self.tail
            if tail is not None and not math.isfinite(tail):
                problems.append("tail must be a finite number")
            elif self.frame_time_dist == "lognormal" and tail is not None and not tail > 0:
                problems.append("tail (the lognormal's sigma) must be above 0")
            elif self.frame_time_dist == "pareto" and tail is not None and not tail > 1:
                problems.append(
                    "tail (the Pareto's alpha) must be above 1, or its mean is infinite"
                )
        return problems

    @property
    def frame_time_shape(self) -> float | None:
        """`tail`, or its default for `frame_time_dist` (None when fixed)."""
        return self.tail if self.tail is not None else DEFAULT_TAIL.get(self.frame_time_dist)

    @property
    def bad_user_counts(self) -> dict[str, int]:
        """`bad_users` parsed: how many users of each kind, kinds in BAD_KINDS order."""
        return parse_bad_users(self.bad_users)

    @property
    def real_peers(self) -> bool:
        """Whether the peers behave as the real ones of CONTRACT.md section 7."""
        return self.peer_mode == "real"

    def demo_blend_path(self) -> Path | None:
        """The demo .blend: a path as given, or a name among the project's 5.0 fixtures."""
        if not self.demo_blend:
            return None
        given = Path(self.demo_blend)
        return given if given.is_absolute() or given.exists() else FIXTURES / given

    def public(self) -> dict[str, Any]:
        """The knobs as JSON-friendly values, for the state endpoint (no broker credentials)."""
        values = asdict(self)
        values["data_dir"] = str(self.data_dir) if self.data_dir else None
        values["broker_url"] = _without_password(self.broker_url)
        return values


def parse_bad_users(text: str) -> dict[str, int]:
    """`"black=1,text=2"` as {"black": 1, "text": 2} (kinds in BAD_KINDS order, spaces
    allowed around the parts); ValueError naming what is wrong."""
    counts: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        kind, sep, count = (piece.strip() for piece in part.partition("="))
        if (
            not sep
            or kind not in BAD_KINDS
            or not (count.isascii() and count.isdigit())
            or kind in counts
        ):
            raise ValueError(
                f"bad_users must be kind=count pairs, each kind once, kinds among "
                f"{', '.join(BAD_KINDS)} (got {part.strip()!r})"
            )
        counts[kind] = int(count)
    return {kind: counts[kind] for kind in BAD_KINDS if kind in counts}


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
