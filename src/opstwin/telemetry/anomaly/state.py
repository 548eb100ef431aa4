"""What the detector remembers per series; plain data that round-trips through JSON types."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

import numpy as np

STATE_VERSION = 1
#: Long number lists of the state (a cycle's profile, the samples a search looks at) are
#: stored as base64 of little-endian 8-byte numbers — exact, and ~40 % shorter than JSON
#: numbers; a series' state is written with every page that touches it.
PACK_FROM = 16
PACKED_PREFIX = "b64:"


@dataclass(slots=True)
class Excursion:
    """An open anomaly and what is needed to resolve it."""

    anomaly_id: str
    kind: str
    score: float
    severity: str
    start_ts: int
    samples: int = 1
    calm: int = 0
    clear_stat: float = 0.0  # drift: EWMA of z since the alarm
    peak_abs_z: float = 0.0
    tracking: bool = False  # re-centred on a trend that was still moving; resolves when it settles
    # Linear fit of value against sample index over the current re-learn window (Welford
    # co-moments), to tell a level that settled from one still drifting.
    win_n: int = 0
    win_mean_k: float = 0.0
    win_mean_x: float = 0.0
    win_m2_k: float = 0.0
    win_m2_x: float = 0.0
    win_c_kx: float = 0.0

    def add(self, x: float) -> None:
        """Add a value to the current re-learn window's linear fit."""
        k = float(self.win_n)
        self.win_n += 1
        dk = k - self.win_mean_k
        dx = x - self.win_mean_x
        self.win_mean_k += dk / self.win_n
        self.win_mean_x += dx / self.win_n
        self.win_m2_k += dk * (k - self.win_mean_k)
        self.win_c_kx += dk * (x - self.win_mean_x)
        self.win_m2_x += dx * (x - self.win_mean_x)

    def restart_window(self) -> None:
        self.win_n = 0
        self.win_mean_k = self.win_mean_x = self.win_m2_k = self.win_m2_x = self.win_c_kx = 0.0

    def copy(self) -> Excursion:
        return replace(self)

    def to_dict(self) -> dict[str, Any]:
        """As ``dataclasses.asdict`` (every field is a plain value), without its recursion."""
        return {name: getattr(self, name) for name in _EXCURSION_FIELDS}


@dataclass(slots=True)
class SeriesState:
    """Baseline, detection statistics and the open excursion of one series."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    z: float = 0.0
    last_value: float | None = None
    last_ts: int | None = None
    flat_run: int = 0
    cusum_pos: float = 0.0
    cusum_neg: float = 0.0
    cusum_pos_len: int = 0
    cusum_neg_len: int = 0
    ewma_z: float = 0.0
    recent_z: list[float] = field(default_factory=list)  # last DIFF_LAG z, oldest first
    # Slow EWMAs of (z_t − z_{t−1})² and (z_t − z_{t−LAG})², started at 0 and bias-corrected
    # by 1 − ac_decay, ac_decay = (1 − α)^ac_n kept by multiplication (flushed to 0 once
    # it no longer changes the correction).
    diff1_sq: float = 0.0
    diff_lag_sq: float = 0.0
    ac_n: int = 0
    ac_decay: float = 1.0
    # EWMAs (the same weights) of |Δz| > 2 and > 3 times its RMS: how heavy the tails are.
    tail_low: float = 0.0
    tail_high: float = 0.0
    excursion: Excursion | None = None
    # Seasonality (see .seasonal): the samples searched for a cycle (kept until one is found
    # or the search ends: season_done), then the cycle in µs (0: none), the time its phase
    # counts from, the profile around it and the cycle's length in samples (each profile
    # point is learnt from ~period_samples / len(profile) samples a cycle). The profile is
    # fixed within a cycle: what a cycle teaches it (profile_pending) is added when the next
    # cycle (number season_cycle + 1 from the origin) begins.
    season_ts: list[int] = field(default_factory=list)
    season_xs: list[float] = field(default_factory=list)
    season_done: bool = False
    season_searched: int = 0  # how many samples the last search had
    period_us: int = 0
    season_origin: int = 0
    period_samples: float = 0.0
    profile: list[float] = field(default_factory=list)
    profile_pending: list[float] = field(default_factory=list)
    season_cycle: int = 0
    profile_smooth: bool = False  # what a cycle teaches is smoothed as the fit was

    def copy(self) -> SeriesState:
        """An independent copy (what a forked detector works on until it is adopted)."""
        excursion = self.excursion
        return replace(
            self,
            recent_z=list(self.recent_z),
            excursion=None if excursion is None else excursion.copy(),
            season_ts=list(self.season_ts),
            season_xs=list(self.season_xs),
            profile=list(self.profile),
            profile_pending=list(self.profile_pending),
        )

    def to_dict(self) -> dict[str, Any]:
        """As ``dataclasses.asdict``, field for field, at a fraction of its cost (it deep-copies
        every value through a generic recursion; this state is saved for every series a
        detector page touches)."""
        out = {name: getattr(self, name) for name in _STATE_FIELDS}
        for name in _LIST_FIELDS:
            out[name] = list(out[name])
        excursion = self.excursion
        out["excursion"] = None if excursion is None else excursion.to_dict()
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with its long number lists packed (see PACK_FROM): what is stored.
        :meth:`from_dict` reads both forms."""
        out = self.to_dict()
        for name, dtype in _PACKED_FIELDS.items():
            if len(out[name]) >= PACK_FROM:
                numbers = np.asarray(out[name], dtype=dtype)
                if numbers.any():  # all zeros (a cycle's updates, fresh) are shorter as JSON
                    packed = base64.b64encode(numbers.tobytes()).decode("ascii")
                    out[name] = PACKED_PREFIX + packed
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesState:
        values = dict(data)
        for name, dtype in _PACKED_FIELDS.items():
            packed = values.get(name)
            if isinstance(packed, str) and packed.startswith(PACKED_PREFIX):
                raw = base64.b64decode(packed[len(PACKED_PREFIX) :], validate=True)
                values[name] = np.frombuffer(raw, dtype=dtype).tolist()
        excursion = values.pop("excursion", None)
        state = cls(**values)
        state.excursion = None if excursion is None else Excursion(**excursion)
        return state


_EXCURSION_FIELDS = tuple(f.name for f in fields(Excursion))
_STATE_FIELDS = tuple(f.name for f in fields(SeriesState))
_LIST_FIELDS = ("recent_z", "season_ts", "season_xs", "profile", "profile_pending")
_PACKED_FIELDS = {
    "season_ts": np.dtype("<i8"),
    "season_xs": np.dtype("<f8"),
    "profile": np.dtype("<f8"),
    "profile_pending": np.dtype("<f8"),
}


@dataclass(frozen=True, slots=True)
class BaselineSnapshot:
    """What the reported state of an asset shows for one metric."""

    samples: int
    mean: float | None
    std: float | None
    z: float | None
    last_value: float | None
    last_ts: datetime | None
    warmed_up: bool
    open_anomaly_id: str | None
    open_kind: str | None
    #: The cycle the baseline follows (seconds), None when it has none.
    period_s: float | None = None
