"""SimulationService: accepts, stores, computes and reports ``POST /sim/run`` runs.

Life of a run (every step that changes state commits with its change-log entry)::

    request ──validate──▶ 422 (nothing stored)
       │
       ├─ may draw ≤ sync_max_samples ─▶ row `running` ─compute in a thread─▶ `succeeded` | `failed`
       │                                  (tx 1)                              (tx 2 + opstwin.sim.completed
       │                                                                           | opstwin.sim.failed)
       └─ larger ──▶ row `queued` + opstwin.sim.queued ─▶ 202 + Location
                       └─ worker: `running` ─compute in a thread─▶ `succeeded` | `failed` (+ event)

A run spans two transactions on purpose: holding a write transaction while numpy works would
block every other writer (SQLite has one). So this service is the *edge* of its jobs and owns
their transactions, like an endpoint owns a request's.

Ownership and recovery
    Each process holds the in-flight runs it accepted under an id of its own (``owner``) and a
    lease it renews every ``progress_interval_s`` (together with progress). A run whose lease ran
    out — its process died — is recovered by any process within about ``lease_s``, including the
    same server after a restart: a ``queued`` run never started, so it is claimed and run (same
    seed: same result); a ``running`` run is marked ``failed`` with reason ``interrupted`` and an
    ``opstwin.sim.failed`` event, because half-done work cannot be resumed. A graceful shutdown
    does this at once for its own runs (failing the running ones, releasing the queued ones).

Limits
    The thread computing a run cannot be killed. A run past its wall-time limit is recorded as
    failed (``timeout``); its thread's late result is discarded (transitions only apply to runs
    still ``running`` under this owner) and it keeps its worker slot until it ends, so background
    concurrency stays bounded. Adaptive runs get 80 % of the limit as a time budget, so they stop
    on their own and report ``converged: false`` rather than time out.

Modules
    * :mod:`.core` — :class:`SimulationService`, the one object endpoints and the lifespan use;
    * :mod:`.requests` — a request checked against the limits: :class:`PreparedRun` or a 422;
    * :mod:`.model_source` — ``model_ref``: a twin's process model as an inline model;
    * :mod:`.execution` — computing in a thread under a wall-time limit, progress estimates;
    * :mod:`.jobs` — the background queue, its workers, leases and recovery;
    * :mod:`.ledger` — final transitions with their events, idempotent replies;
    * :mod:`.records` — the ``sim.v1`` record, a run's failure, the reply to its request.
"""

from opstwin.simulation.service.core import SimulationService
from opstwin.simulation.service.execution import PILOT_SAMPLES, PROGRESS_CEILING
from opstwin.simulation.service.jobs import RECOVERY_BATCH
from opstwin.simulation.service.model_source import (
    ModelSource,
    TwinModelSource,
    TwinRegistryReader,
)
from opstwin.simulation.service.records import (
    EVENT_COMPLETED,
    EVENT_FAILED,
    EVENT_QUEUED,
    RUNS_PATH,
    SOURCE,
    Failure,
    FailureReason,
    Outcome,
    Reply,
    Status,
    record_of,
)
from opstwin.simulation.service.requests import ADAPTIVE_BUDGET_SHARE, PreparedRun

__all__ = [
    "ADAPTIVE_BUDGET_SHARE",
    "EVENT_COMPLETED",
    "EVENT_FAILED",
    "EVENT_QUEUED",
    "PILOT_SAMPLES",
    "PROGRESS_CEILING",
    "RECOVERY_BATCH",
    "RUNS_PATH",
    "SOURCE",
    "Failure",
    "FailureReason",
    "ModelSource",
    "Outcome",
    "PreparedRun",
    "Reply",
    "SimulationService",
    "Status",
    "TwinModelSource",
    "TwinRegistryReader",
    "record_of",
]
