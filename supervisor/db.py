"""Engine and session handling: one session and one transaction per unit of work."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

RECYCLE_SECONDS = 1800

# Guards each Database's per-process set-up: a threaded web worker's first requests come
# on several threads at once. Made anew in a forked child, where a copy held by a thread
# of the parent at the fork would never be released.
_setup_lock = threading.Lock()


def _new_setup_lock() -> None:
    global _setup_lock
    _setup_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_setup_lock)


class _ReadConnection:
    """One thread's connection for `read_row`, with its cursor kept between calls."""

    def __init__(self, engine: Engine) -> None:
        proxied = engine.raw_connection()  # the engine's connect-time setup, then ours
        self.dbapi: psycopg.Connection[Any] = proxied.driver_connection  # type: ignore[assignment]
        proxied.detach()
        self.cursor = self.dbapi.cursor()
        self.opened_at = time.monotonic()

    @property
    def usable(self) -> bool:
        """Open, between statements, and younger than the engines' pool_recycle."""
        return (
            not self.dbapi.closed
            and self.dbapi.info.transaction_status == TransactionStatus.IDLE
            and time.monotonic() - self.opened_at < RECYCLE_SECONDS
        )

    def first_row(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        # Binary rows: less for the driver to parse (the arrays of the progress mapping).
        self.cursor.execute(sql, params, binary=True)
        return self.cursor.fetchone()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.dbapi.close()


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
        self._lock = threading.Lock()
        self._thread = threading.local()
        self._read_connections: set[_ReadConnection] = set()

    def _check_pid(self) -> None:
        """In a new process, forget the parent's engines. The pid is set last, so a thread
        that sees it current sees the rest reset."""
        if self._pid == os.getpid():
            return
        with _setup_lock:
            if self._pid == os.getpid():
                return
            for engine in (self._engine, self._reader):
                if engine is not None:
                    engine.dispose(close=False)
            self._engine = self._reader = None
            self._sessions = None
            # The parent's connections are left alone: closing them would end its sessions.
            self._lock = threading.Lock()
            self._thread = threading.local()
            self._read_connections = set()
            self._pid = os.getpid()

    @property
    def engine(self) -> Engine:
        self._check_pid()
        engine = self._engine
        if engine is None:
            with _setup_lock:
                if self._engine is None:
                    made = self._make_engine(
                        pool_size=self._pool_size,
                        max_overflow=self._pool_size,
                        pool_pre_ping=True,
                        pool_recycle=RECYCLE_SECONDS,
                    )
                    # Before the engine: a thread that sees the engine finds its sessions.
                    self._sessions = sessionmaker(made, expire_on_commit=False)
                    self._engine = made
                engine = self._engine
        return engine

    @property
    def reader(self) -> Engine:
        """Makes the connections of `read_row`: autocommit, so a lone SELECT goes without
        BEGIN and ROLLBACK. Each thread keeps the one it gets (see read_row), so there is
        no pool to check out from and nothing to pre-ping."""
        self._check_pid()
        reader = self._reader
        if reader is None:
            with _setup_lock:
                if self._reader is None:
                    self._reader = self._make_engine(
                        poolclass=NullPool, isolation_level="AUTOCOMMIT"
                    )
                reader = self._reader
        return reader

    def _make_engine(self, **options: Any) -> Engine:
        engine = create_engine(self.url, **options)
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
        sessions = self._sessions
        assert sessions is not None
        return sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on error, always close."""
        with self.session() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection of the pool for work that must stay on one connection (a
        session-level advisory lock); back in the pool on exit."""
        with self.engine.connect() as connection:
            yield connection

    def read_row(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of one read-only statement (driver paramstyle, `%(name)s`) in one
        round trip: the hot path of status polling, where the ORM session, BEGIN, ROLLBACK,
        the pre-ping and the pool's checkout and checkin together cost several times the
        query. Each thread keeps its own connection and cursor, as Django's persistent
        connections do; gunicorn's threads are few and long-lived.

        A connection found dead (Postgres restarted, the backend was terminated) is closed
        and the statement runs once more on a new one; it changes nothing, so that is safe."""
        connection = self._read_connection()
        try:
            return connection.first_row(sql, params)
        except psycopg.Error as exc:
            if not self.reader.dialect.is_disconnect(exc, connection.dbapi, connection.cursor):
                raise
            self._forget(connection)
        return self._read_connection().first_row(sql, params)

    def _read_connection(self) -> _ReadConnection:
        engine = self.reader
        connection: _ReadConnection | None = getattr(self._thread, "connection", None)
        if connection is not None and connection.usable:
            return connection
        if connection is not None:
            self._forget(connection)
        connection = _ReadConnection(engine)
        with self._lock:
            self._read_connections.add(connection)
        self._thread.connection = connection
        return connection

    def _forget(self, connection: _ReadConnection) -> None:
        with self._lock:
            self._read_connections.discard(connection)
        if getattr(self._thread, "connection", None) is connection:
            self._thread.connection = None
        connection.close()

    def dispose(self) -> None:
        """Close every connection, the threads' read connections included."""
        with self._lock:
            read_connections, self._read_connections = self._read_connections, set()
            self._thread = threading.local()
        for connection in read_connections:
            connection.close()
        for engine in (self._engine, self._reader):
            if engine is not None:
                engine.dispose()
        self._engine = self._reader = None
        self._sessions = None
