"""One injectable id source: prefixed ULIDs (sortable by creation time, globally unique)."""

from __future__ import annotations

import itertools
from typing import Protocol

from ulid import ULID

from opstwin.kit.clock import Clock, to_micros


class IdSource(Protocol):
    """Makes new identifiers such as ``evt_01J...``."""

    def new(self, prefix: str) -> str: ...


class UlidSource:
    """ULIDs whose time part comes from the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def new(self, prefix: str) -> str:
        ulid = ULID.from_timestamp(to_micros(self._clock.now()) / 1_000_000)
        return f"{prefix}_{ulid}"


class SequentialIds:
    """Deterministic ids (``evt_000001``…) for tests that assert whole payloads."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new(self, prefix: str) -> str:
        return f"{prefix}_{next(self._counter):06d}"
