"""Engine and session handling: one session and one transaction per unit of work."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


class Database:
    """Owns the engines; rebuilt lazily in a forked child so no pool crosses a fork."""

    def __init__(self, url: str, *, pool_size: int = 5, statement_timeout_ms: int = 30_000) -> None:
        self.url = url
        self._pool_size = pool_size
        self._statement_timeout_ms = statement_timeout_ms
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._reader: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            for engine in (self._engine, self._reader):
                if engine is not None:
                    engine.dispose(close=False)
            self._engine = self._reader = None
            self._sessions = None
            self._pid = os.getpid()

    @property
    def engine(self) -> Engine:
        self._check_pid()
        if self._engine is None:
            self._engine = self._make_engine(pool_pre_ping=True)
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        return self._engine

    @property
    def reader(self) -> Engine:
        """The pool of `read_row`: autocommit, so no BEGIN/ROLLBACK around a lone SELECT and
        nothing to reset on return, and no pre-ping, so no `SELECT 1` per checkout (read_row
        drops a dead connection and tries again instead). Built on first use: processes
        that never serve status never open it."""
        self._check_pid()
        if self._reader is None:
            self._reader = self._make_engine(
                pool_pre_ping=False, pool_reset_on_return=None, isolation_level="AUTOCOMMIT"
            )
        return self._reader

    def _make_engine(self, **options: Any) -> Engine:
        engine = create_engine(
            self.url,
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            pool_recycle=1800,
            **options,
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

    def read_row(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of one read-only statement (driver paramstyle, `%(name)s`) in one
        round trip, on the driver's own cursor: the hot path of status polling, where the
        ORM session, SQLAlchemy's Connection, BEGIN, ROLLBACK and the pre-ping together
        cost several times the query itself.

        A pooled connection found dead (Postgres restarted, the backend was terminated) is
        discarded and the statement runs again on the next one, at most once per pooled
        connection plus a fresh one; it changes nothing, so running it again is safe."""
        engine = self.reader
        dialect = engine.dialect
        attempts = 2 * self._pool_size + 1
        for attempt in range(1, attempts + 1):
            connection = engine.raw_connection()
            try:
                with connection.cursor() as cursor:
                    # Binary rows: less for the driver to parse (arrays of the mapping).
                    cursor.execute(sql, params, binary=True)
                    return cursor.fetchone()
            except dialect.loaded_dbapi.Error as exc:
                dead = dialect.is_disconnect(exc, connection.dbapi_connection, None)
                if not dead or attempt == attempts:
                    raise
                connection.invalidate(exc)
            finally:
                connection.close()
        return None  # not reached: the last attempt returns or raises

    def dispose(self) -> None:
        for engine in (self._engine, self._reader):
            if engine is not None:
                engine.dispose()
        self._engine = self._reader = None
        self._sessions = None
