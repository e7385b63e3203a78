"""Savepoint-rollback isolation: a test's database work runs on one connection inside a
transaction that is rolled back at the end, so nothing it wrote needs deleting.

SQLAlchemy's "join a session into an external transaction" recipe: every session joins the
connection with `join_transaction_mode="create_savepoint"`, so a commit releases a SAVEPOINT
and a rollback goes back to one, never ending the outer transaction. Tests whose work must
really commit (several threads or processes, a connection killed on purpose, two
connections racing) are marked `commits` and keep a Database of their own."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from supervisor.db import Database


class SavepointDatabase(Database):
    """A Database whose sessions, `connection()` and `read_row` all run on `connection`,
    from the thread that built it only: one connection cannot serve two threads, and
    another connection would not see the uncommitted rows."""

    def __init__(self, url: str, connection: Connection) -> None:
        super().__init__(url)
        self._connection = connection
        self._owner = threading.get_ident()

    def _bound(self) -> Connection:
        if threading.get_ident() != self._owner:
            raise RuntimeError(
                "the database is bound to the test thread's connection: a test that uses it "
                "from several threads needs real commits (mark it `commits`)"
            )
        return self._connection

    def session(self) -> Session:
        return Session(
            bind=self._bound(), join_transaction_mode="create_savepoint", expire_on_commit=False
        )

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        # Inside a SAVEPOINT, a Session bound to this connection with the default join mode
        # makes savepoints of its own instead of taking over the outer transaction.
        connection = self._bound()
        with connection.begin_nested():
            yield connection

    def read_row(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        connection = self._bound()
        with connection.begin_nested():
            row = connection.exec_driver_sql(sql, dict(params)).first()
        return None if row is None else tuple(row)


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that is rolled back on exit, with any session-level
    advisory lock a test left behind released before the connection goes back to the pool."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()
            connection.exec_driver_sql("SELECT pg_advisory_unlock_all()")
            connection.rollback()
