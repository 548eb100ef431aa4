"""SSE fan-out: 1,000 subscribers on one server process while changes are appended.

Three processes: the server (`opstwin serve`), the subscribers (bench.sse_clients) and this
driver, which appends events through POST /events with the send time stamped in `data.t`.
Phase 1 appends 20 events/s (20,000 deliveries/s) and reports delivery latency; later phases
raise the rate to find the most deliveries/s the server sustains.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from bench.common import pct
from opstwin.kit.clock import SystemClock
from opstwin.kit.db import Database
from opstwin.policy.principals import ApiKeyService
from opstwin.policy.rbac import Role

SUBSCRIBERS = 1000
PORT = 8765
ROOT = Path(__file__).resolve().parents[1]


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _keys(url: str) -> tuple[str, str]:
    db = Database(url)
    await db.migrate()
    service = ApiKeyService(db, SystemClock())
    async with db.write() as tx:
        viewer = (await service.create(tx.conn, name="bench-viewer", role=Role.viewer)).token
        agent = (await service.create(tx.conn, name="bench-agent", role=Role.agent)).token
    await db.dispose()
    return viewer, agent


async def _subscribers(http: httpx.AsyncClient, viewer: str) -> int:
    text = (await http.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})).text
    line = next(line for line in text.splitlines() if line.startswith("opstwin_feed_subscribers "))
    return int(float(line.split()[1]))


async def _append_at(
    http: httpx.AsyncClient, agent: str, rate: float, seconds: float, tag: str
) -> int:
    """POST events at ``rate``/s for ``seconds`` (a few posters in parallel); returns how many."""
    headers = {"Authorization": f"Bearer {agent}"}
    interval = 1.0 / rate
    sent = 0
    start = time.perf_counter()
    pending: set[asyncio.Task[httpx.Response]] = set()
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed / interval) + 1
        while sent < due:
            body = {
                "specversion": "1.0",
                "id": f"{tag}-{sent}",
                "source": "/bench",
                "type": f"ext.bench.{tag}",
                "data": {"t": time.time()},
            }
            pending.add(asyncio.create_task(http.post("/events", json=body, headers=headers)))
            sent += 1
        done = {t for t in pending if t.done()}
        for task in done:
            if task.result().status_code != 201:
                raise RuntimeError(task.result().text)
        pending -= done
        await asyncio.sleep(max(0.0, start + sent * interval - time.perf_counter()))
    await asyncio.gather(*pending)
    return sent


async def measure() -> None:
    with TemporaryDirectory(prefix="opstwin-fanout-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'opstwin.db'}"
        viewer, agent = await _keys(url)
        env = {
            **os.environ,
            "OPSTWIN_DATA_DIR": tmp,
            "OPSTWIN_LOG_LEVEL": "warning",
            "OPSTWIN_FEED_SUBSCRIBER_BUFFER": "5000",
        }
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opstwin", "serve", "--port", str(PORT), env=env, cwd=ROOT
        )
        base = f"http://127.0.0.1:{PORT}"
        try:
            async with httpx.AsyncClient(
                base_url=base, timeout=30, limits=httpx.Limits(max_connections=32)
            ) as http:
                async with asyncio.timeout(30):
                    while True:
                        try:
                            if (await http.get("/ready")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await asyncio.sleep(0.1)
                rss_before = _rss_kib(server.pid)
                phases = [(20.0, 10.0), (50.0, 6.0), (100.0, 6.0)]
                total_s = sum(s for _, s in phases) + 2 * len(phases) + 8
                clients = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.sse_clients",
                    base,
                    viewer,
                    str(SUBSCRIBERS),
                    str(total_s),
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                )
                async with asyncio.timeout(60):
                    while await _subscribers(http, viewer) < SUBSCRIBERS:
                        await asyncio.sleep(0.2)
                rss_after = _rss_kib(server.pid)
                print(
                    f"   {SUBSCRIBERS} subscribers connected: server RSS +{(rss_after - rss_before) / SUBSCRIBERS:.1f} KiB per subscriber"
                )
                results = []
                for rate, seconds in phases:
                    started = time.perf_counter()
                    cpu_server, cpu_clients = _cpu_s(server.pid), _cpu_s(clients.pid)
                    sent = await _append_at(http, agent, rate, seconds, f"r{int(rate)}")
                    elapsed = time.perf_counter() - started
                    results.append((rate, sent, elapsed))
                    print(
                        f"   phase {rate:>4.0f} events/s: CPU server {100 * (_cpu_s(server.pid) - cpu_server) / elapsed:.0f} %"
                        f"  subscribers {100 * (_cpu_s(clients.pid) - cpu_clients) / elapsed:.0f} %"
                    )
                    await asyncio.sleep(2)  # let deliveries drain before the next phase
                out, _ = await clients.communicate()
        finally:
            server.terminate()
            await server.wait()
    stats = json.loads(out)
    print(f"   connections closed by the server: {stats['closed']}")
    for rate, sent, elapsed in results:
        lat = [x * 1000 for x in stats["latencies"].get(f"r{int(rate)}", [])]
        expected = sent * SUBSCRIBERS
        if not lat:
            print(f"   {rate:>4.0f} events/s: nothing received")
            continue
        print(
            f"   {rate:>4.0f} events/s × {SUBSCRIBERS} = {rate * SUBSCRIBERS:>7,.0f} deliveries/s offered: "
            f"received {len(lat) / expected:6.1%}, achieved {len(lat) / elapsed:>7,.0f}/s, "
            f"latency p50 {pct(lat, 50):.0f} ms p99 {pct(lat, 99):.0f} ms"
        )


def run() -> None:
    asyncio.run(measure())
