"""The MQTT setpoint contract between OpsTwin and a device (or the simulated plant).

Topics, under a prefix (default ``opstwin``)::

    <prefix>/<twin_id>/<asset_id>/cmd        OpsTwin → device, QoS 1, not retained
    <prefix>/<twin_id>/<asset_id>/setpoints  device → OpsTwin, QoS 1, retained

A **command** is the absolute target of one setpoint::

    {"setpoint": "esc_temp_sp", "value": 58.0, "idempotency_key": "act_01J…"}

The device answers every command (and publishes whenever its setpoints change, and when it
starts) with a **report**, retained so that a reader subscribing later gets the current state::

    {"setpoints": {"esc_temp_sp": 59.5, …},   applied values now (they may still be ramping)
     "commanded": {"esc_temp_sp": 58.0, …},   the targets last written
     "last_key": "act_01J…",                  key of the last command processed (applied or a
                                              repeat of a key already applied)
     "duplicate": false,                      that command repeated a key (nothing changed)
     "rejected": {"idempotency_key": "…", "reason": "…"},   only when answering a refused command
     "ts": "2026-01-01T00:00:00Z"}

A command is complete when a report shows ``last_key`` equal to its key (read-back: the
report's ``commanded`` value) or ``rejected.idempotency_key`` equal to it (refused, nothing
changed). No such report before the writer's deadline means the outcome is unknown: the writer
reconciles by reading the retained report, it never repeats blindly — although repeating is
safe, since a device applies a key at most once.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_TOPIC_PREFIX = "opstwin"
COMMAND_SUFFIX = "cmd"
SETPOINTS_SUFFIX = "setpoints"
MAX_KEY_CHARS = 256
"""Longest idempotency key a command may carry."""
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
"""Socket option for both ends of the contract. A command and its answer are small packets
sent right after a PUBACK; with Nagle's algorithm each waits for the peer's delayed TCP ACK
(~40 ms on Linux). The broker needs the same (Mosquitto ``set_tcp_nodelay true``)."""


def command_topic(prefix: str, twin_id: str, asset_id: str) -> str:
    return f"{prefix}/{twin_id}/{asset_id}/{COMMAND_SUFFIX}"


def setpoints_topic(prefix: str, twin_id: str, asset_id: str) -> str:
    return f"{prefix}/{twin_id}/{asset_id}/{SETPOINTS_SUFFIX}"


def command_filter(prefix: str, twin_id: str) -> str:
    """Every command to any asset of ``twin_id`` (what a device for the whole twin subscribes)."""
    return f"{prefix}/{twin_id}/+/{COMMAND_SUFFIX}"


def setpoints_filter(prefix: str) -> str:
    """Every setpoint report under ``prefix`` (what the MQTT actuator subscribes)."""
    return f"{prefix}/+/+/{SETPOINTS_SUFFIX}"


def split_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """``(twin_id, asset_id, suffix)`` of a topic under ``prefix``, or None when it is not one."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) != 3 or not all(levels):
        return None
    return levels[0], levels[1], levels[2]


def payload_bytes(payload: object) -> bytes:
    """An aiomqtt message payload as bytes (it may arrive as bytes, bytearray or str)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b""


class InvalidCommand(ValueError):
    """A command payload that breaks the contract; ``idempotency_key`` is set when readable."""

    def __init__(self, reason: str, idempotency_key: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.idempotency_key = idempotency_key


@dataclass(frozen=True, slots=True)
class SetpointCommand:
    """Set ``setpoint`` to the absolute ``value``, at most once per ``idempotency_key``."""

    setpoint: str
    value: float
    idempotency_key: str

    def to_payload(self) -> bytes:
        return orjson.dumps(
            {
                "setpoint": self.setpoint,
                "value": self.value,
                "idempotency_key": self.idempotency_key,
            }
        )

    @classmethod
    def parse(cls, payload: bytes) -> SetpointCommand:
        """The command in ``payload``; raises :class:`InvalidCommand` with the reason."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvalidCommand(f"command is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidCommand("a command is a JSON object")
        key = body.get("idempotency_key")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
            raise InvalidCommand(
                f"idempotency_key must be a string of 1–{MAX_KEY_CHARS} characters"
            )
        unknown = set(body) - {"setpoint", "value", "idempotency_key"}
        if unknown:
            raise InvalidCommand(f"unknown command fields: {', '.join(sorted(unknown))}", key)
        setpoint, value = body.get("setpoint"), body.get("value")
        if not isinstance(setpoint, str) or not setpoint:
            raise InvalidCommand("setpoint must be a non-empty string", key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidCommand("value must be a finite number", key)
        return cls(setpoint=setpoint, value=float(value), idempotency_key=key)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused command: its key and why."""

    idempotency_key: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetpointReport:
    """A device's retained report of one asset's setpoints (see the module docstring)."""

    setpoints: dict[str, float]
    commanded: dict[str, float]
    last_key: str | None
    ts: str
    duplicate: bool = False
    rejected: Rejection | None = None

    def answers(self, idempotency_key: str) -> bool:
        """Whether this report completes the command with ``idempotency_key``."""
        return self.last_key == idempotency_key or (
            self.rejected is not None and self.rejected.idempotency_key == idempotency_key
        )

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {
            "setpoints": self.setpoints,
            "commanded": self.commanded,
            "last_key": self.last_key,
            "duplicate": self.duplicate,
            "ts": self.ts,
        }
        if self.rejected is not None:
            body["rejected"] = {
                "idempotency_key": self.rejected.idempotency_key,
                "reason": self.rejected.reason,
            }
        return orjson.dumps(body)

    @classmethod
    def parse(cls, payload: bytes) -> SetpointReport:
        """The report in ``payload``; raises :class:`ValueError` when it breaks the contract."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"report is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("a report is a JSON object")
        values: dict[str, dict[str, float]] = {}
        for name in ("setpoints", "commanded"):
            raw = body.get(name, {})
            if not isinstance(raw, dict) or not all(
                _is_number(v) or v is None for v in raw.values()
            ):
                raise ValueError(f"{name} must map setpoint names to numbers")
            values[name] = {k: float(v) for k, v in raw.items() if v is not None}
        last_key = body.get("last_key")
        if last_key is not None and not isinstance(last_key, str):
            raise ValueError("last_key must be a string or null")
        rejected = body.get("rejected")
        rejection: Rejection | None = None
        if rejected is not None:
            if not (
                isinstance(rejected, dict)
                and isinstance(rejected.get("idempotency_key"), str)
                and isinstance(rejected.get("reason", ""), str)
            ):
                raise ValueError("rejected must be {idempotency_key, reason}")
            rejection = Rejection(rejected["idempotency_key"], rejected.get("reason", ""))
        ts = body.get("ts")
        return cls(
            setpoints=values["setpoints"],
            commanded=values["commanded"],
            last_key=last_key,
            ts=ts if isinstance(ts, str) else "",
            duplicate=body.get("duplicate") is True,
            rejected=rejection,
        )


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
