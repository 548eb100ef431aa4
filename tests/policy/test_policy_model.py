"""policy.v1: defaults, validation, overrides, and the committed schema in sync with the model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from opstwin.policy.policy import (
    SCHEMA_ID,
    DecisionBands,
    Policy,
    most_restrictive,
    policy_json_schema,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "src" / "opstwin" / "aiw" / "schemas" / "policy.v1.json"
REGENERATE = (
    '.venv/bin/python -c "import json; from opstwin.policy.policy import policy_json_schema; '
    "open('src/opstwin/aiw/schemas/policy.v1.json', 'w').write("
    "json.dumps(policy_json_schema(), indent=2, ensure_ascii=False) + '\\n')\""
)

LITHOGRAPHY = {
    "policy_id": "fab",
    "version": 2,
    "overrides": [
        {
            "match": {"asset_class": "lithography"},
            "cap": "require_approval",
            "reason": "never auto-execute on lithography",
        },
        {
            "match": {"action_type": "setpoint_change", "asset_id": "etch_tool_7"},
            "bands": {"auto_execute": 0.95, "require_approval": 0.8, "analyze": 0.6},
            "allow_ramp_split": True,
            "reason": "etch tool 7 is touchy",
        },
    ],
}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


def test_committed_schema_matches_the_model(schema: dict[str, Any]) -> None:
    assert schema == policy_json_schema(), f"policy.v1.json is stale; regenerate with: {REGENERATE}"


def test_schema_is_valid_2020_12_with_its_identity(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SCHEMA_ID == "urn:opstwin:schema:policy.v1"
    assert schema["title"] == "policy.v1"


@pytest.mark.parametrize("document", [{}, LITHOGRAPHY])
def test_model_output_validates_against_the_schema(
    schema: dict[str, Any], document: dict[str, Any]
) -> None:
    policy = Policy.model_validate(document)
    dumped = policy.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert list(Draft202012Validator(schema).iter_errors(dumped)) == []
    assert Policy.model_validate(dumped) == policy


def test_defaults_are_the_documented_ones() -> None:
    policy = Policy()
    assert policy.weights.normalised() == {
        "historical_success": 0.25,
        "data_quality": 0.25,
        "simulation_consistency": 0.30,
        "ai_consensus": 0.20,
    }
    assert (policy.bands.auto_execute, policy.bands.require_approval, policy.bands.analyze) == (
        0.90,
        0.70,
        0.50,
    )
    assert policy.ref() == {"policy_id": "default", "version": 1}


def test_weights_renormalise_and_zero_disables() -> None:
    policy = Policy.model_validate(
        {
            "weights": {
                "historical_success": 0,
                "data_quality": 0.5,
                "simulation_consistency": 0.5,
                "ai_consensus": 0,
            }
        }
    )
    assert policy.weights.normalised() == {
        "historical_success": 0.0,
        "data_quality": 0.5,
        "simulation_consistency": 0.5,
        "ai_consensus": 0.0,
    }
    weights = Policy.model_validate({"weights": {"historical_success": 0.1}}).weights.normalised()
    assert math.isclose(sum(weights.values()), 1.0)


@pytest.mark.parametrize(
    "document",
    [
        {
            "weights": {
                "historical_success": 0,
                "data_quality": 0,
                "simulation_consistency": 0,
                "ai_consensus": 0,
            }
        },
        {"weights": {"data_quality": -0.1}},
        {"weights": {"data_quality": math.nan}},
        {"bands": {"auto_execute": 0.6, "require_approval": 0.7, "analyze": 0.5}},
        {"bands": {"analyze": math.nan}},
        {"bands": {"auto_execute": 1.1}},
        {"approval_expiry_s": 0},
        {"overrides": [{"match": {}, "cap": "reject", "reason": "x"}]},
        {"overrides": [{"match": {"asset_id": "a"}, "reason": "no effect"}]},
        {"overrides": [{"match": {"asset_id": "a"}, "cap": "auto_execute", "reason": "x"}]},
        {"colour": "red"},
        {"version": "2"},
    ],
)
def test_invalid_policies_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate(document)


def test_equal_edges_empty_a_band() -> None:
    bands = DecisionBands(auto_execute=1.0, require_approval=1.0, analyze=0.5)
    assert bands.outcome_for(0.999) == "analyze"
    assert bands.outcome_for(1.0) == "auto_execute"


def test_overrides_cap_by_asset_class_and_replace_bands_in_order() -> None:
    policy = Policy.model_validate(LITHOGRAPHY)
    litho = policy.effective_for("setpoint_change", "scanner_1", "lithography")
    assert litho.cap == "require_approval"
    assert litho.bands == policy.bands
    assert litho.overrides == ({"index": 0, "reason": "never auto-execute on lithography"},)
    etch = policy.effective_for("setpoint_change", "etch_tool_7", "plasma_etch_chamber")
    assert etch.cap == "auto_execute"
    assert etch.bands.auto_execute == 0.95
    assert etch.allow_ramp_split is True
    other = policy.effective_for("recipe_change", "etch_tool_7", None)
    assert other.overrides == ()
    assert other.allow_ramp_split is False


def test_most_restrictive_orders_outcomes() -> None:
    assert most_restrictive("auto_execute", "require_approval") == "require_approval"
    assert most_restrictive("analyze", "require_approval") == "analyze"
    assert most_restrictive("reject", "auto_execute", "analyze") == "reject"
