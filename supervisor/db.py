"""Engine and session handling: one session and one transaction per unit of work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


class Database:
    """Owns the engine; rebuilt lazily in a forked child so no pool crosses a fork."""

    def __init__(self, url: str, *, pool_size: int = 5, statement_timeout_ms: int = 30_000) -> None:
        self.url = url
        self._pool_size = pool_size
        self._statement_timeout_ms = statement_timeout_ms
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)
            self._engine = self._make_engine()
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
            self._pid = os.getpid()
        return self._engine

    def _make_engine(self) -> Engine:
        engine = create_engine(
            self.url,
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
        )
        timeout = self._statement_timeout_ms

        @event.listens_for(engine, "connect")
        def _set_timeouts(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {int(timeout)}")
                cursor.execute("SET lock_timeout = 10000")
            dbapi_connection.commit()

        return engine

    def session(self) -> Session:
        self.engine  # noqa: B018 (builds the engine and session factory for this process)
        assert self._sessions is not None
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on error, always close."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
