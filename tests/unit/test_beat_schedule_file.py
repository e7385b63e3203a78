"""Beat creates its schedule file's directory: a fresh checkout has no var/ (git-ignored)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from celery import Celery

from tasks.beat import LockedScheduler


def test_beat_creates_the_directory_of_its_schedule_file(tmp_path: Path) -> None:
    app = Celery("beat-schedule-test", set_as_current=False)
    # The lock's client connects on first use only; this test never ticks.
    app.conf.supervisor_settings = SimpleNamespace(redis_url="redis://127.0.0.1:1/0")
    schedule = tmp_path / "var" / "nested" / "celerybeat-schedule"

    scheduler = LockedScheduler(app, schedule_filename=str(schedule))
    try:
        assert list(schedule.parent.glob("celerybeat-schedule*"))
    finally:
        scheduler.close()
