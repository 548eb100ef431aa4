"""Audit hash chain: append rate and full-chain verification rate, 1,000,000 records (no I/O).

Run with ``.venv/bin/python -m bench.audit``. Goal: verifying 1,000,000 records in < 10 s.

* append — build an ``AuditEntry`` (a proposal transition), serialise it canonically, hash it
  onto the chain: the work the audit service does per record before the INSERT;
* verify — :func:`opstwin.audit.chain.verify_chain` over the stored records (pre-serialised
  bytes, as storage hands them back), with the anchored head.

Best of ``REPEATS`` runs for verification (appending is measured once: it builds the chain).
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime, timedelta

from opstwin.audit.chain import AuditChain, AuditEntry, SealedRecord, verify_chain

RECORDS = 1_000_000
REPEATS = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONTENT_HASH = "sha256:" + "ab" * 32
POLICY = {"policy_id": "default", "version": 3}


def _entry(i: int) -> AuditEntry:
    return AuditEntry(
        record_id=f"aud_{i:026d}",
        tenant_id="default",
        at=T0 + timedelta(microseconds=i * 1000),
        actor_id="key_01JB7Y2Q0ZKX4M5N6P7R8S9T0V",
        role="supervisor",
        action="proposal.approve",
        resource=f"proposal/prp_{i // 8:026d}",
        inputs={"content_hash": CONTENT_HASH},
        policy=POLICY,
        decision="require_approval",
        outcome="approved",
        reason=None,
    )


def run() -> None:
    chain = AuditChain()
    records: list[SealedRecord] = []
    append = records.append
    gc.disable()  # a million long-lived objects: cyclic GC passes would dominate the timing
    try:
        started = time.perf_counter()
        for i in range(1, RECORDS + 1):
            append(chain.append(_entry(i)))
        append_s = time.perf_counter() - started
        print(
            f"   append: {RECORDS:,} records in {append_s:.2f} s = {RECORDS / append_s:,.0f} records/s"
            f" (body ~{len(records[0].body)} bytes)"
        )
        best = float("inf")
        for _ in range(REPEATS):
            started = time.perf_counter()
            result = verify_chain(records, anchor=chain.head)
            best = min(best, time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"the benchmark chain does not verify: {result.to_dict()}")
    finally:
        gc.enable()
    verdict = "OK" if best < 10.0 else "MISSED"
    print(
        f"   verify: {RECORDS:,} records in {best:.2f} s = {RECORDS / best:,.0f} records/s"
        f" (goal < 10 s: {verdict})"
    )


if __name__ == "__main__":
    run()
