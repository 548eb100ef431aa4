"""The setpoint and the proposed change the DecisionMaker tests decide on."""

from __future__ import annotations

from typing import Any

from opstwin.policy.decision import ProposedChange
from opstwin.twins.model import SetpointSpec


def esc_temp_spec(**extra: Any) -> SetpointSpec:
    """The etch tool's ESC temperature setpoint: 40-80 degC, at most 2 degC a step, plus
    ``extra`` fields (``ramp_rate_per_s`` for the ramp guards)."""
    return SetpointSpec.model_validate(
        {
            "unit": "degC",
            "bounds": {"low": 40.0, "high": 80.0},
            "max_step": 2.0,
            **extra,
            "actuator": "plant",
            "default": 60.0,
        }
    )


def esc_temp_change(spec: SetpointSpec) -> ProposedChange:
    """A one-degree raise (60 → 61 degC) of ``spec`` on etch_tool_7."""
    return ProposedChange(
        proposal_id="prp_1",
        action_type="setpoint_change",
        twin_id="fab",
        asset_id="etch_tool_7",
        asset_class="plasma_etch_chamber",
        setpoint="esc_temp_sp",
        spec=spec,
        value=61.0,
        current=60.0,
    )
