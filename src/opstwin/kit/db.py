"""The database: async SQLAlchemy Core engines, transactions with after-commit hooks, migrations.

Two backends, one code path:

* **SQLite** (embedded default): WAL journal, one writer at a time. Write transactions start
  with ``BEGIN IMMEDIATE`` so they take the write lock up front (no upgrade deadlocks), and an
  in-process lock queues this process's writers in Python instead of in SQLite's busy handler.
  Other processes (the CLI) wait up to ``busy_timeout``.
* **PostgreSQL** (``postgresql+asyncpg://``): a normal pool; write ordering where it matters
  (the change log) is enforced by row locks the repository takes.

Services never commit: the edge opens ``async with db.write() as tx`` and everything done on
``tx.conn`` commits together; ``tx.after_commit`` callbacks run only once it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = structlog.get_logger(__name__)

#: The one MetaData every table of OpsTwin is declared on.
metadata = MetaData()

Backend = Literal["sqlite", "postgresql"]


@dataclass(slots=True)
class Transaction:
    """An open write transaction and what to do once it has committed."""

    conn: AsyncConnection
    backend: Backend
    _after_commit: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after a successful commit (never after a rollback)."""
        self._after_commit.append(callback)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "opstwin:migrations")
    return cfg


class Database:
    """Engines for one database URL and the transactions callers open on them."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        busy_timeout_s: float = 30.0,
        echo: bool = False,
        schema_name: str | None = None,
    ):
        parsed = make_url(url)
        self.url = parsed
        self.schema_name = schema_name
        if parsed.get_backend_name() == "sqlite":
            self.backend: Backend = "sqlite"
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            sqlite_args = {"timeout": busy_timeout_s}
            self._write_engine = create_async_engine(parsed, echo=echo, connect_args=sqlite_args)
            self._read_engine = create_async_engine(parsed, echo=echo, connect_args=sqlite_args)
            _configure_sqlite(
                self._write_engine, begin="BEGIN IMMEDIATE", busy_timeout_s=busy_timeout_s
            )
            _configure_sqlite(self._read_engine, begin="BEGIN", busy_timeout_s=busy_timeout_s)
        elif parsed.get_backend_name() == "postgresql":
            if parsed.get_driver_name() != "asyncpg":
                raise ValueError("PostgreSQL needs the asyncpg driver: postgresql+asyncpg://…")
            self.backend = "postgresql"
            connect_args: dict[str, Any] = {}
            if schema_name:
                connect_args["server_settings"] = {"search_path": schema_name}
            engine = create_async_engine(
                parsed,
                echo=echo,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args=connect_args,
            )
            self._write_engine = engine
            self._read_engine = engine
        else:
            raise ValueError(
                f"unsupported database backend {parsed.get_backend_name()!r} (use sqlite or postgresql)"
            )
        self._write_lock = asyncio.Lock() if self.backend == "sqlite" else None

    @property
    def engine(self) -> AsyncEngine:
        return self._write_engine

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Transaction]:
        """A write transaction: commits on normal exit, rolls back on error, then runs hooks."""
        if self._write_lock is None:
            async with self._transaction() as tx:
                yield tx
        else:
            async with self._write_lock, self._transaction() as tx:
                yield tx

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_engine.connect() as conn:
            tx = Transaction(conn, self.backend)
            async with conn.begin():
                yield tx
        for callback in tx._after_commit:
            callback()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction. On PostgreSQL each statement sees its own snapshot (READ
        COMMITTED); use :meth:`snapshot` when several reads must agree (state + cursor)."""
        async with self._read_engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction in which every statement sees the same committed state.

        SQLite's read transactions are snapshots already; PostgreSQL uses REPEATABLE READ,
        READ ONLY. For "current state plus the cursor it is consistent with" (list-then-watch).
        """
        if self.backend == "sqlite":
            async with self.read() as conn:
                yield conn
            return
        async with self._read_engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                yield conn

    async def migrate(self) -> None:
        """Apply every pending Alembic migration."""

        def upgrade(sync_conn: Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = sync_conn
            # "heads": branches developed in parallel (several heads) upgrade together.
            command.upgrade(cfg, "heads")

        async with self._write_engine.begin() as conn:
            if self.backend == "postgresql" and self.schema_name:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema_name}"'))
            await conn.run_sync(upgrade)
        log.info("database.migrated", backend=self.backend)

    async def migration_status(self) -> tuple[str | None, str | None]:
        """(current revisions, code's head revisions), comma-joined; equal when up to date."""

        def current(sync_conn: Connection) -> tuple[str, ...]:
            return MigrationContext.configure(sync_conn).get_current_heads()

        async with self._read_engine.connect() as conn:
            revs = await conn.run_sync(current)
        heads = ScriptDirectory.from_config(alembic_config()).get_heads()
        return (",".join(sorted(revs)) or None), ",".join(sorted(heads))

    @property
    def notify_channel(self) -> str:
        """PostgreSQL NOTIFY channel for change-log appends (channels are per database, so
        deployments in different schemas of one database get different channels)."""
        return "opstwin_log" + (f"_{self.schema_name}" if self.schema_name else "")

    async def ping(self) -> None:
        async with self._read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()


def _configure_sqlite(engine: AsyncEngine, *, begin: str, busy_timeout_s: float) -> None:
    """Take over transaction control from pysqlite so BEGIN is ours, and set the pragmas."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit acknowledged to a client survives power loss, not just a process kill.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)
