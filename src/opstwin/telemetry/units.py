"""Unit conversion for ingest: a value sent in another unit of the same quantity is converted
to the unit the twin model declares for the metric (``units: {"temp": "degF"}`` on an event).

Each unit is an affine map to a base unit of its quantity, ``base = value × scale + offset``.
Only units listed here convert; anything else must be sent in the model's unit.
"""

from __future__ import annotations

from dataclasses import dataclass

_TORR_PA = 101_325.0 / 760.0


@dataclass(frozen=True, slots=True)
class UnitDef:
    quantity: str
    scale: float
    offset: float = 0.0


UNITS: dict[str, UnitDef] = {
    # temperature → kelvin
    "K": UnitDef("temperature", 1.0),
    "degC": UnitDef("temperature", 1.0, 273.15),
    "degF": UnitDef("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    # pressure → pascal
    "Pa": UnitDef("pressure", 1.0),
    "kPa": UnitDef("pressure", 1e3),
    "MPa": UnitDef("pressure", 1e6),
    "mbar": UnitDef("pressure", 100.0),
    "bar": UnitDef("pressure", 1e5),
    "atm": UnitDef("pressure", 101_325.0),
    "psi": UnitDef("pressure", 6_894.757293168361),
    "Torr": UnitDef("pressure", _TORR_PA),
    "mTorr": UnitDef("pressure", _TORR_PA / 1000.0),
    # power → watt
    "mW": UnitDef("power", 1e-3),
    "W": UnitDef("power", 1.0),
    "kW": UnitDef("power", 1e3),
    "MW": UnitDef("power", 1e6),
    # gas flow → sccm
    "sccm": UnitDef("gas_flow", 1.0),
    "slm": UnitDef("gas_flow", 1000.0),
    # length → metre
    "m": UnitDef("length", 1.0),
    "mm": UnitDef("length", 1e-3),
    "um": UnitDef("length", 1e-6),
    "nm": UnitDef("length", 1e-9),
    # time → second
    "ms": UnitDef("time", 1e-3),
    "s": UnitDef("time", 1.0),
    "min": UnitDef("time", 60.0),
    "h": UnitDef("time", 3600.0),
}

#: Other spellings devices use.
SPELLINGS: dict[str, str] = {
    "°C": "degC",
    "C": "degC",
    "celsius": "degC",
    "°F": "degF",
    "F": "degF",
    "fahrenheit": "degF",
    "kelvin": "K",
    "torr": "Torr",
    "mtorr": "mTorr",
    "µm": "um",
}


def conversion(source: str, target: str) -> tuple[float, float] | str:
    """``(a, b)`` with ``target_value = a × value + b``, or why there is none."""
    if SPELLINGS.get(source, source) == SPELLINGS.get(target, target):
        return 1.0, 0.0
    src = UNITS.get(SPELLINGS.get(source, source))
    dst = UNITS.get(SPELLINGS.get(target, target))
    if src is None:
        return f"unknown unit {source!r}; convertible units: {', '.join(sorted(UNITS))}"
    if dst is None:
        return f"the model's unit {target!r} has no conversions; send values in {target!r}"
    if src.quantity != dst.quantity:
        return f"{source!r} ({src.quantity}) cannot be converted to {target!r} ({dst.quantity})"
    return src.scale / dst.scale, (src.offset - dst.offset) / dst.scale
