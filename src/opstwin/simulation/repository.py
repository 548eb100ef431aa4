"""SQL of the simulation domain: the ``sim_runs`` table. Callers own the transactions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.simulation.tables import sim_runs

IN_FLIGHT = ("queued", "running")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One stored run; ``request``/``result``/``error`` are JSON text."""

    row_id: int
    sim_id: str
    tenant_id: str
    principal_id: str
    status: str
    mode: str
    progress: float
    twin_id: str | None
    process_model: str | None
    created_at_us: int
    started_at_us: int | None
    finished_at_us: int | None
    request: str
    result: str | None
    error: str | None
    owner: str | None
    lease_until_us: int | None

    @classmethod
    def of(cls, row: Any) -> RunRow:
        return cls(**{column.name: row._mapping[column.name] for column in sim_runs.columns})


class SimRunRepository:
    """Reads and writes ``sim_runs`` rows; every read by id is tenant-scoped."""

    async def insert(self, conn: AsyncConnection, **values: Any) -> None:
        await conn.execute(insert(sim_runs).values(**values))

    async def get(self, conn: AsyncConnection, tenant_id: str, sim_id: str) -> RunRow | None:
        row = (
            await conn.execute(
                select(sim_runs).where(
                    sim_runs.c.tenant_id == tenant_id, sim_runs.c.sim_id == sim_id
                )
            )
        ).one_or_none()
        return None if row is None else RunRow.of(row)

    async def get_any_tenant(self, conn: AsyncConnection, sim_id: str) -> RunRow | None:
        """For workers, which act on behalf of the run's own tenant (stored on the row)."""
        row = (
            await conn.execute(select(sim_runs).where(sim_runs.c.sim_id == sim_id))
        ).one_or_none()
        return None if row is None else RunRow.of(row)

    async def row_id_of(self, conn: AsyncConnection, tenant_id: str, sim_id: str) -> int | None:
        value = (
            await conn.execute(
                select(sim_runs.c.row_id).where(
                    sim_runs.c.tenant_id == tenant_id, sim_runs.c.sim_id == sim_id
                )
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    async def page(
        self, conn: AsyncConnection, tenant_id: str, *, before_row: int | None, limit: int
    ) -> list[RunRow]:
        """Newest first, ``limit + 1`` rows at most (the extra one says there is more)."""
        clauses = [sim_runs.c.tenant_id == tenant_id]
        if before_row is not None:
            clauses.append(sim_runs.c.row_id < before_row)
        rows = await conn.execute(
            select(sim_runs)
            .where(and_(*clauses))
            .order_by(sim_runs.c.row_id.desc())
            .limit(limit + 1)
        )
        return [RunRow.of(row) for row in rows]

    async def transition(
        self,
        conn: AsyncConnection,
        sim_id: str,
        *,
        from_status: Sequence[str],
        values: dict[str, Any],
        owner: str | None = None,
        stale_before_us: int | None = None,
    ) -> bool:
        """Update a run only if it is still in one of ``from_status`` — and held by ``owner``
        when given, or unowned/with a lease older than ``stale_before_us`` when that is given.

        A late finisher thus never overwrites a run another process recovered, and two
        processes never recover the same run.
        """
        clauses = [sim_runs.c.sim_id == sim_id, sim_runs.c.status.in_(list(from_status))]
        if owner is not None:
            clauses.append(sim_runs.c.owner == owner)
        if stale_before_us is not None:
            clauses.append(
                or_(sim_runs.c.owner.is_(None), sim_runs.c.lease_until_us < stale_before_us)
            )
        result = await conn.execute(update(sim_runs).where(and_(*clauses)).values(**values))
        return int(result.rowcount) == 1

    async def renew(
        self, conn: AsyncConnection, owner: str, lease_until_us: int, progress: dict[str, float]
    ) -> None:
        """Extend the lease of every in-flight run ``owner`` holds; write running runs' progress."""
        await conn.execute(
            update(sim_runs)
            .where(sim_runs.c.owner == owner, sim_runs.c.status.in_(IN_FLIGHT))
            .values(lease_until_us=lease_until_us)
        )
        for sim_id, value in progress.items():
            await conn.execute(
                update(sim_runs)
                .where(
                    sim_runs.c.sim_id == sim_id,
                    sim_runs.c.owner == owner,
                    sim_runs.c.status == "running",
                )
                .values(progress=value)
            )

    async def abandoned(self, conn: AsyncConnection, now_us: int, limit: int) -> list[RunRow]:
        """In-flight runs nobody holds: no owner, or a lease that ran out."""
        rows = await conn.execute(
            select(sim_runs)
            .where(
                sim_runs.c.status.in_(IN_FLIGHT),
                or_(sim_runs.c.owner.is_(None), sim_runs.c.lease_until_us < now_us),
            )
            .order_by(sim_runs.c.row_id)
            .limit(limit)
        )
        return [RunRow.of(row) for row in rows]

    async def held_by(self, conn: AsyncConnection, owner: str) -> list[RunRow]:
        rows = await conn.execute(
            select(sim_runs)
            .where(sim_runs.c.owner == owner, sim_runs.c.status.in_(IN_FLIGHT))
            .order_by(sim_runs.c.row_id)
        )
        return [RunRow.of(row) for row in rows]
