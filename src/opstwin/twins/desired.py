"""Desired state: the value each setpoint was last written to.

The twin model declares a setpoint's ``current`` (else ``default``); once an action writes the
setpoint, the written value is kept in ``setpoint_state`` (in the action's transaction) and wins
over the model's. :func:`with_desired` lays those values over a twin model so every reader —
the simulator's ``current``, the decision's step size, ``GET /twins`` — sees the same value.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from opstwin.twins.model import TwinSpec
from opstwin.twins.tables import setpoint_state

DesiredValues = Mapping[tuple[str, str], float]
"""(asset id, setpoint id) → value last written."""


async def desired_values(conn: AsyncConnection, tenant_id: str, twin_id: str) -> DesiredValues:
    """The values actions have written to the setpoints of one twin."""
    rows = await conn.execute(
        select(setpoint_state.c.asset_id, setpoint_state.c.setpoint, setpoint_state.c.value).where(
            setpoint_state.c.tenant_id == tenant_id, setpoint_state.c.twin_id == twin_id
        )
    )
    return {(r.asset_id, r.setpoint): float(r.value) for r in rows}


def with_desired(spec: TwinSpec, values: DesiredValues) -> TwinSpec:
    """``spec`` with each written setpoint's ``current`` set to the value written."""
    if not values:
        return spec
    assets = []
    for asset in spec.assets:
        changed = {
            sp_id: sp.model_copy(update={"current": values[(asset.id, sp_id)]})
            for sp_id, sp in asset.setpoints.items()
            if (asset.id, sp_id) in values
        }
        assets.append(
            asset.model_copy(update={"setpoints": {**asset.setpoints, **changed}})
            if changed
            else asset
        )
    return spec.model_copy(update={"assets": assets})
