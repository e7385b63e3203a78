from __future__ import annotations

import fakeredis

from tasks.beat import BeatLock


def test_only_one_beat_holds_the_lock() -> None:
    server = fakeredis.FakeServer()
    first = BeatLock(fakeredis.FakeRedis(server=server), ttl=30)
    second = BeatLock(fakeredis.FakeRedis(server=server), ttl=30)

    assert first.hold() is True
    assert second.hold() is False
    assert first.hold() is True, "renewing our own lock keeps it"
    first.release()
    assert second.hold() is True


def test_a_dead_beat_is_replaced_when_its_lock_expires() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    first = BeatLock(client, ttl=30)
    second = BeatLock(fakeredis.FakeRedis(server=server), ttl=30)
    assert first.hold()
    client.delete("supervisor:beat-lock")

    assert second.hold() is True
    assert first.hold() is False, "the old holder notices it lost the lock"
