"""Many SSE subscribers in one process, for the fan-out benchmark.

Usage: python -m bench.sse_clients URL TOKEN COUNT SECONDS
Opens COUNT raw HTTP/1.1 connections to /subscribe, reads for SECONDS, then prints one JSON
line with, per phase (the prefix of each event id, e.g. ``r20``), the frames received and
their delivery latencies (now − the send time the driver stamped in ``data.t``), and how many
connections the server closed. Runs on uvloop so the subscribers cost as little CPU as
possible next to the server on this 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from urllib.parse import urlsplit

import uvloop

_ID = b'"id":"'
_T = b'"t":'


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.closed = 0


def _scan(buffer: bytes, stats: Stats, now: float) -> bytes:
    """Consume complete frames from ``buffer``; returns the incomplete rest."""
    while (end := buffer.find(b"\n\n")) != -1:
        frame, buffer = buffer[:end], buffer[end + 2 :]
        i = frame.find(_ID)
        t = frame.find(_T)
        if i == -1 or t == -1:
            continue  # bookmark or heartbeat
        tag = frame[i + len(_ID) : frame.find(b"-", i + len(_ID))].decode()
        stop = t + len(_T)
        while frame[stop : stop + 1] not in (b",", b"}"):
            stop += 1
        stats.latencies[tag].append(now - float(frame[t + len(_T) : stop]))
    return buffer


async def subscriber(host: str, port: int, token: str, stats: Stats, stop: float) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(
        f"GET /subscribe?since=now&types=ext.bench.* HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    pending = b""
    try:
        while (remaining := stop - time.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    chunk = await reader.read(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                stats.closed += 1
                return
            # Chunked transfer encoding: the size lines sit between frames and are skipped
            # because they contain neither an id nor a stamp.
            pending = _scan(pending + chunk.replace(b"\r\n", b"\n"), stats, time.time())
    finally:
        writer.close()


async def main(url: str, token: str, count: int, seconds: float) -> None:
    parts = urlsplit(url)
    stats = Stats()
    stop = time.time() + seconds
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    await asyncio.gather(*(subscriber(host, port, token, stats, stop) for _ in range(count)))
    print(json.dumps({"latencies": stats.latencies, "closed": stats.closed}))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
