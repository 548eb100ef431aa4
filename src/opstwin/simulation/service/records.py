"""A stored run as the API shows it: its ``sim.v1`` record, its failure, the reply to its request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opstwin.kit import jsonutil
from opstwin.kit.clock import from_micros, rfc3339
from opstwin.kit.errors import FieldError, OpsTwinError, ValidationFailed
from opstwin.simulation.repository import RunRow
from opstwin.simulation.results import SimulationResult

SOURCE = "/opstwin/sim"
RUNS_PATH = "/sim/runs"
EVENT_QUEUED = "opstwin.sim.queued"
EVENT_COMPLETED = "opstwin.sim.completed"
EVENT_FAILED = "opstwin.sim.failed"

Status = Literal["queued", "running", "succeeded", "failed"]
FailureReason = Literal["invalid", "timeout", "interrupted", "internal"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the edge sends back: status, JSON body, headers."""

    status_code: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def media_type(self) -> str:
        return "application/problem+json" if self.status_code >= 400 else "application/json"


@dataclass(frozen=True, slots=True)
class Failure:
    reason: FailureReason
    detail: str
    errors: tuple[FieldError, ...] = ()
    limit_s: float | None = None
    status: int = 422

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": self.reason, "detail": self.detail}
        if self.errors:
            body["errors"] = [
                {k: v for k, v in e.as_dict().items() if k in ("detail", "pointer")}
                for e in self.errors
            ]
        if self.limit_s is not None:
            body["limit_s"] = self.limit_s
        return body

    @classmethod
    def from_dict(cls, error: Mapping[str, Any]) -> Failure:
        """The failure a stored ``error`` (:meth:`to_dict`) describes."""
        return cls(
            reason=error["reason"],
            detail=error["detail"],
            errors=tuple(FieldError(**e) for e in error.get("errors", [])),
            limit_s=error.get("limit_s"),
            status=500 if error["reason"] == "internal" else 422,
        )


Outcome = SimulationResult | Failure


def record_of(row: RunRow) -> dict[str, Any]:
    """The ``sim.v1`` record of a stored run."""
    record: dict[str, Any] = {
        "sim_id": row.sim_id,
        "status": row.status,
        "mode": row.mode,
        "progress": row.progress,
        "created_at": rfc3339(from_micros(row.created_at_us)),
    }
    if row.started_at_us is not None:
        record["started_at"] = rfc3339(from_micros(row.started_at_us))
    if row.finished_at_us is not None:
        record["finished_at"] = rfc3339(from_micros(row.finished_at_us))
    if row.twin_id is not None and row.process_model is not None:
        record["model_ref"] = {"twin_id": row.twin_id, "process_model": row.process_model}
    record["request"] = jsonutil.loads(row.request)
    if row.status == "succeeded" and row.result is not None:
        record.update(jsonutil.loads(row.result))
    if row.status == "failed" and row.error is not None:
        record["error"] = jsonutil.loads(row.error)
    return record


def location(row: RunRow) -> dict[str, str]:
    return {"Location": f"{RUNS_PATH}/{row.sim_id}"}


def accepted_reply(row: RunRow) -> Reply:
    """The 202 a queued run gives its request."""
    return Reply(202, jsonutil.dumps(record_of(row)), location(row))


def final_reply(row: RunRow) -> Reply:
    """The response a finished run gives its request: the record, or its failure."""
    record = record_of(row)
    if row.status == "succeeded":
        return Reply(201, jsonutil.dumps(record), location(row))
    failure = Failure.from_dict(record["error"])
    problem = _problem(failure, row)
    return Reply(
        problem.status,
        # The occurrence is the run itself (the same for /sim/run and /sim/recommend).
        jsonutil.dumps(problem.problem(instance=f"{RUNS_PATH}/{row.sim_id}")),
        location(row),
    )


def _problem(failure: Failure, row: RunRow) -> OpsTwinError:
    extensions: dict[str, Any] = {"sim_id": row.sim_id, "reason": failure.reason}
    if failure.limit_s is not None:
        extensions["limit_s"] = failure.limit_s
    kind = OpsTwinError if failure.status >= 500 else ValidationFailed
    return kind(failure.detail, errors=list(failure.errors), extensions=extensions)
