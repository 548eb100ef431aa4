"""The loop survives SIGKILL at its two delicate points, on a real `opstwin serve`.

1. Between decision and execution: the first server decides (auto-approves) the loop's proposal
   but executes nothing (its executor is off) and is killed; the second one executes it.
2. Between execution and verification: the second server is killed while verifying; the third
   finishes the verification.

Afterwards there is exactly one proposal for the anomaly, one action with each planned write
once, one transition of each kind in /diff and in the audit chain (which verifies), and the
proposal has reached its end (succeeded, or rolled back when the restarted plant — whose fault
died with the process — no longer needs the correction).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.actions.plant_fixtures import trusting_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY = trusting_policy(verification_window_s=4.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSTWIN_")}
    env.update(
        {
            "OPSTWIN_DATA_DIR": str(data_dir),
            "OPSTWIN_FEED_POLL_INTERVAL_S": "0.05",
            "OPSTWIN_PLANT_ENABLED": "true",
            "OPSTWIN_PLANT_TICK_S": "0.05",
            "OPSTWIN_PLANT_MAX_SAMPLING_PERIOD_S": "0.05",
            "OPSTWIN_PLANT_TIME_CONSTANT_S": "0.3",
            "OPSTWIN_PLANT_SEED": "5",
            "OPSTWIN_PLANT_FIRST_FAULT_AFTER_S": "3600",  # no fault unless a test asks
            "OPSTWIN_ACTIONS_POLL_INTERVAL_S": "0.1",
            "OPSTWIN_ACTIONS_EVIDENCE_WINDOW_S": "5",
            "OPSTWIN_ACTIONS_SIM_SAMPLES": "1000",
            "OPSTWIN_AUTOMATION_POLL_INTERVAL_S": "0.1",
            "OPSTWIN_AUTOMATION_RECHECK_S": "0.5",
            **extra,
        }
    )
    return env


def _cli(data_dir: Path, *args: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "opstwin", *args],
        env=_env(data_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@asynccontextmanager
async def serve(data_dir: Path, port: int, **extra: str) -> AsyncIterator[httpx.AsyncClient]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "opstwin",
        "serve",
        "--port",
        str(port),
        env=_env(data_dir, **extra),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            async with asyncio.timeout(60):
                while True:
                    try:
                        if (await http.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            yield http
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL: no shutdown code runs
            await proc.wait()


async def until(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


@pytest.mark.slow
async def test_killed_between_decision_and_execution_and_while_verifying(
    tmp_path: Path,
) -> None:
    _cli(tmp_path, "twins", "load", str(ROOT / "examples" / "fab-line.yaml"))
    token = {
        role: json.loads(
            _cli(tmp_path, "keys", "create", "--role", role, "--name", f"t-{role}", "--json")
        )["token"]
        for role in ("admin", "supervisor")
    }
    admin = {"Authorization": f"Bearer {token['admin']}"}
    supervisor = {"Authorization": f"Bearer {token['supervisor']}"}

    async def proposal_in(http: httpx.AsyncClient, *states: str) -> dict[str, Any] | None:
        page = (await http.get("/proposals", headers=admin)).json()["proposals"]
        found = [p for p in page if p["state"] in states]
        return found[0] if found else None

    # 1. Decide, then die before executing: the executor of this process is off.
    async with serve(
        tmp_path,
        _free_port(),
        OPSTWIN_ACTIONS_ENABLED="false",
        OPSTWIN_PLANT_FIRST_FAULT_AFTER_S="12",
    ) as http:
        put = await http.put("/policy", json=POLICY, headers=admin)
        assert put.status_code == 200, put.text
        decided = await until(
            lambda: proposal_in(http, "approved"), 90.0, "an auto-approved proposal of the loop"
        )
    assert decided["proposer"]["principal_id"] == "automation"
    pid = decided["proposal_id"]

    # 2. Execute, then die while verifying.
    async with serve(tmp_path, _free_port()) as http:
        await until(lambda: proposal_in(http, "verifying"), 60.0, "verifying after restart")

    # 3. Finish.
    async with serve(tmp_path, _free_port()) as http:
        done = await until(
            lambda: proposal_in(http, "succeeded", "rolled_back", "failed"),
            60.0,
            "the proposal's end",
        )
        assert done["proposal_id"] == pid
        assert done["state"] in ("succeeded", "rolled_back"), done["transitions"]
        detail = (await http.get(f"/proposals/{pid}", headers=admin)).json()
        events = (
            await http.get(
                "/diff", params={"types": "opstwin.proposal.*", "limit": 1000}, headers=admin
            )
        ).json()["events"]
        audit = (
            await http.get("/audit", params={"resource": f"proposal/{pid}"}, headers=supervisor)
        ).json()
        verify = (await http.get("/audit/verify", headers=supervisor)).json()
        actions = (await http.get("/actions", headers=admin)).json()["actions"]
        proposals = (await http.get("/proposals", headers=admin)).json()["proposals"]

    expected = ["proposed", "scored", "approved", "executing", "verifying", done["state"]]
    assert [t["to"] for t in detail["transitions"]] == expected
    mine = [
        e["type"].removeprefix("opstwin.proposal.")
        for e in events
        if e["data"].get("proposal_id") == pid
    ]
    assert mine == expected
    assert [r["outcome"] for r in audit["items"]] == expected
    assert verify["ok"] is True, verify
    # Exactly one execution: one action, every planned write once, in order.
    (action,) = [a for a in actions if a["proposal_id"] == pid]
    execution = action["execution"]
    keys = [w["key"] for w in execution["writes"]]
    assert len(keys) == len(set(keys)) == len(execution["writes_planned"])
    assert [w["value"] for w in execution["writes"]] == execution["writes_planned"]
    # The restarts made no second proposal for the anomaly: any other one is a follow-up the loop
    # made after this one ended (allowed while the anomaly stays open), never one beside it.
    ended_at = datetime.fromisoformat(detail["transitions"][-1]["at"])
    others = [
        p for p in proposals if p["anomaly_id"] == decided["anomaly_id"] and p["proposal_id"] != pid
    ]
    assert all(datetime.fromisoformat(p["created_at"]) >= ended_at for p in others), others
