"""Decision latency: ``POST /proposals`` with a cached simulation to ``approved`` (auto).

Run with ``python -m bench decision`` (or through ``make bench``). Goal (issue 5): p99 < 50 ms on
SQLite.

The example fab twin, telemetry for the chuck, one recommendation run (``POST /sim/recommend``)
whose ``sim_id`` every proposal cites, and a policy under which that evidence auto-executes. The
executor is off, so each proposal stops at ``approved``; a supervisor's veto (untimed) frees the
asset for the next one. Timed: the HTTP request in process (ASGI), which gathers the evidence
(simulation record, telemetry window, history, votes), scores, runs every guard and stores the
three transitions with their audit records and change-log events in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import database_url, pct, pg_available
from opstwin.app import create_app
from opstwin.config import ActionSettings, DatabaseSettings, DetectionSettings, Settings
from opstwin.policy.rbac import Role

FAB = Path(__file__).resolve().parents[1] / "examples" / "fab-line.yaml"
PROPOSALS = 300
BASELINES: dict[str, list[float]] = {}
WARMUP = 20


def _document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FAB.read_text())
    model = next(m for m in document["twins"][0]["process_models"] if m["id"] == "etch_yield_model")
    model["inputs"]["pressure"]["std"] = 0.3
    return document


async def _run(backend: str) -> list[float]:
    async with database_url(backend) as (url, schema):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                env="test",
                data_dir=Path(tmp),
                database=DatabaseSettings(url=url, schema_name=schema),
                detection=DetectionSettings(enabled=False),
                actions=ActionSettings(enabled=False, evidence_window_s=30.0),
            )
            app = create_app(settings)
            services = app.state.services
            async with app.router.lifespan_context(app):
                latencies = await _measure(app, services)
                BASELINES[backend] = await _bare_commits(services, PROPOSALS)
                return latencies


async def _measure(app: Any, services: Any) -> list[float]:
    async with services.db.write() as tx:
        keys = {
            role: await services.keys.create(tx.conn, name=role.value, role=role) for role in Role
        }
        await services.twins.put(tx, "default", _document())

    def auth(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[role].token}"}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    ) as client:
        now = services.clock.now()
        events = [
            {
                "twin_id": "fab_line_3",
                "asset_id": "etch_tool_7",
                "ts": (now - timedelta(seconds=(600 - i) / 10)).isoformat(),
                "metrics": {"temp_c": 63.0 + 0.1 * (i % 3), "pressure_mtorr": 10.0},
            }
            for i in range(600)
        ]
        response = await client.post("/telemetry/ingest", json=events, headers=auth(Role.agent))
        assert response.status_code == 200, response.text
        weights = {
            "historical_success": 0.0,
            "data_quality": 0.3,
            "simulation_consistency": 0.7,
            "ai_consensus": 0.0,
        }
        policy = {"weights": weights, "approval_expiry_s": 3600}
        response = await client.put("/policy", json=policy, headers=auth(Role.admin))
        assert response.status_code == 200, response.text
        recommend = {
            "twin_id": "fab_line_3",
            "process_model": "etch_yield_model",
            "asset_id": "etch_tool_7",
            "setpoint": "esc_temp_sp",
            "candidates": [57.0],
            "objective": {"output": "yield_pct", "goal": "maximize"},
            "samples": 4000,
            "seed": 1,
        }
        response = await client.post("/sim/recommend", json=recommend, headers=auth(Role.agent))
        assert response.status_code == 201, response.text
        sim_id = response.json()["sim_id"]
        body = {
            "twin_id": "fab_line_3",
            "asset_id": "etch_tool_7",
            "setpoint": "esc_temp_sp",
            "value": 57.0,
            "rationale": "re-centre the chuck",
            "sim_id": sim_id,
        }
        latencies: list[float] = []
        for i in range(WARMUP + PROPOSALS):
            started = time.perf_counter()
            response = await client.post("/proposals", json=body, headers=auth(Role.agent))
            elapsed = time.perf_counter() - started
            created = response.json()
            assert response.status_code == 201, response.text
            assert created["state"] == "approved", created["confidence"]
            if i >= WARMUP:
                latencies.append(elapsed)
            veto = await client.post(
                f"/proposals/{created['proposal_id']}/reject",
                json={"reason": "bench: free the asset"},
                headers=auth(Role.supervisor),
            )
            assert veto.status_code == 200, veto.text
        return latencies


async def _bare_commits(services: Any, n: int) -> list[float]:
    """Baseline: one single-row insert per write transaction on the same database."""
    from sqlalchemy import text

    async with services.db.write() as tx:
        await tx.conn.execute(text("CREATE TABLE IF NOT EXISTS bench_commit (x INTEGER)"))
    out: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        async with services.db.write() as tx:
            await tx.conn.execute(text("INSERT INTO bench_commit (x) VALUES (:x)"), {"x": i})
        out.append(time.perf_counter() - started)
    return out


def run() -> None:
    backends = ["sqlite"] + (["postgresql"] if pg_available() else [])
    for backend in backends:
        latencies = asyncio.run(_run(backend))
        bare = BASELINES[backend]
        print(
            f"   {backend:<10} POST /proposals (cached simulation) → approved (auto): "
            f"p50 {pct(latencies, 50) * 1000:.1f} ms   p99 {pct(latencies, 99) * 1000:.1f} ms   "
            f"({len(latencies)} proposals; goal p99 < 50 ms on SQLite)\n"
            f"   {'':<10} bare one-row write transaction, same database: "
            f"p50 {pct(bare, 50) * 1000:.1f} ms   p99 {pct(bare, 99) * 1000:.1f} ms"
        )
    if "postgresql" not in backends:
        print("   postgresql: not reachable on 127.0.0.1:5432, skipped")


if __name__ == "__main__":
    run()
