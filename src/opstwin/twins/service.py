"""Snapshots of twins: model, reported and desired state, and the cursor they are consistent with.

Every function here runs inside one ``Database.snapshot()`` connection: the state rows and the
change log's head are read from the same committed state, so a client that follows the feed
from the returned cursor sees exactly the changes the snapshot does not include.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.aiw.changelog import ChangeLog
from opstwin.kit.clock import rfc3339
from opstwin.kit.errors import NotFound
from opstwin.twins.desired import desired_values, with_desired
from opstwin.twins.model import AssetSpec
from opstwin.twins.registry import Twin, TwinRegistry, twin_json
from opstwin.twins.state import ReportedMetric, desired_state, reported_state


def _asset_view(
    twin: Twin, asset_id: str, spec: AssetSpec | None, reported: dict[str, ReportedMetric]
) -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "declared": spec is not None,
        "name": spec.name if spec else None,
        "type": spec.type if spec else None,
        "process": spec.process if spec else None,
        "products": list(spec.products) if spec else [],
        "reported": {metric: value.as_json() for metric, value in reported.items()},
        "desired": desired_state(spec) if spec else {},
    }


def _summary(twin: Twin) -> dict[str, Any]:
    return {
        "twin_id": twin.id,
        "name": twin.spec.name,
        "version": twin.version,
        "updated_at": rfc3339(twin.updated_at),
    }


async def _cursor(conn: AsyncConnection, changelog: ChangeLog) -> str:
    return changelog.cursor((await changelog.marks(conn)).head)


async def list_twins(
    conn: AsyncConnection, registry: TwinRegistry, changelog: ChangeLog, tenant_id: str
) -> dict[str, Any]:
    """Every twin of the tenant (summary) and the cursor of the listing."""
    twins = await registry.list(conn, tenant_id)
    return {
        "twins": [{**_summary(t), "assets": len(t.spec.assets)} for t in twins],
        "cursor": await _cursor(conn, changelog),
    }


async def twin_snapshot(
    conn: AsyncConnection,
    registry: TwinRegistry,
    changelog: ChangeLog,
    tenant_id: str,
    twin_id: str,
) -> dict[str, Any]:
    """One twin: its model, every asset's reported and desired state, and the cursor.

    Assets registered by telemetry (``auto_register_assets``) appear with ``declared: false``.
    """
    twin = await registry.get(conn, tenant_id, twin_id)
    reported = await reported_state(conn, tenant_id, twin_id)
    current = with_desired(twin.spec, await desired_values(conn, tenant_id, twin_id))
    declared = {a.id: a for a in current.assets}
    asset_ids = list(declared) + sorted(set(reported) - set(declared))
    return {
        **_summary(twin),
        "assets": [
            _asset_view(twin, aid, declared.get(aid), reported.get(aid, {})) for aid in asset_ids
        ],
        "model": twin_json(twin.spec),
        "cursor": await _cursor(conn, changelog),
    }


async def asset_snapshot(
    conn: AsyncConnection,
    registry: TwinRegistry,
    changelog: ChangeLog,
    tenant_id: str,
    twin_id: str,
    asset_id: str,
) -> dict[str, Any]:
    """One asset of a twin: its model, reported and desired state, and the cursor."""
    twin = await registry.get(conn, tenant_id, twin_id)
    current = with_desired(twin.spec, await desired_values(conn, tenant_id, twin_id))
    spec = current.asset(asset_id)
    reported = (await reported_state(conn, tenant_id, twin_id, asset_id)).get(asset_id)
    if spec is None and reported is None:
        raise NotFound(f"twin {twin_id!r} has no asset {asset_id!r}")
    view = _asset_view(twin, asset_id, spec, reported or {})
    return {
        "twin_id": twin.id,
        "version": twin.version,
        **view,
        "model": spec.model_dump(mode="json", exclude_unset=True) if spec else None,
        "cursor": await _cursor(conn, changelog),
    }
