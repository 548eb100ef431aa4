"""twin.v1: the example loads, and every kind of mistake is reported with a pointer to it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opstwin.kit.errors import ValidationFailed
from opstwin.twins import load_twin_file, parse_twin_document
from opstwin.twins.model import ID_PATTERN, AnomalyThresholds, EwmaDrift

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fab-line.yaml"


def base_document() -> dict[str, Any]:
    """A small valid twin; each test breaks one thing in a copy of it."""
    return {
        "twins": [
            {
                "id": "line_1",
                "products": [{"id": "wafer"}, {"id": "die"}],
                "processes": [{"id": "etch", "products": ["wafer"]}],
                "assets": [
                    {
                        "id": "etch_7",
                        "process": "etch",
                        "products": ["wafer"],
                        "metrics": {
                            "temp_c": {
                                "unit": "degC",
                                "aliases": ["temp"],
                                "normal_range": {"low": 55.0, "high": 65.0},
                                "hard_limits": {"low": 15.0, "high": 90.0},
                                "sampling_period_s": 1.0,
                            },
                            "pressure_mtorr": {"unit": "mTorr", "aliases": ["pressure"]},
                        },
                        "setpoints": {
                            "esc_temp_sp": {
                                "unit": "degC",
                                "metric": "temp_c",
                                "bounds": {"low": 40.0, "high": 80.0},
                                "max_step": 5.0,
                                "ramp_rate_per_s": 0.5,
                                "actuator": "simulated_plant",
                                "default": 60.0,
                            }
                        },
                    }
                ],
                "process_models": [
                    {
                        "id": "etch_yield",
                        "process": "etch",
                        "inputs": {
                            "temp": {"asset": "etch_7", "metric": "temp_c"},
                            "sp": {"asset": "etch_7", "setpoint": "esc_temp_sp"},
                            "d0": {"dist": "normal", "mean": 0.06, "std": 0.01},
                        },
                        "outputs": {
                            "yield_pct": {
                                "expression": "100 * exp(-(d0 + 0.001 * (temp - sp) ** 2))",
                                "goal": "maximize",
                            }
                        },
                    }
                ],
                "playbooks": [
                    {
                        "id": "temp_drift",
                        "asset": "etch_7",
                        "metric": "temp_c",
                        "kinds": ["drift", "spike"],
                        "actions": [
                            {"setpoint": "esc_temp_sp", "candidates": [58.0, 60.0, 62.0]},
                            {
                                "setpoint": "esc_temp_sp",
                                "search": {"low": 55, "high": 65, "steps": 5},
                            },
                        ],
                        "objective": {
                            "process_model": "etch_yield",
                            "kpi": "yield_pct",
                            "goal": "maximize",
                        },
                    }
                ],
            }
        ]
    }


def errors_of(document: object) -> list[tuple[str | None, str]]:
    with pytest.raises(ValidationFailed) as caught:
        parse_twin_document(document)
    assert caught.value.status == 422
    return [(e.pointer, e.detail) for e in caught.value.errors]


def broken(mutate: Any) -> list[tuple[str | None, str]]:
    document = base_document()
    mutate(document["twins"][0])
    return errors_of(document)


def test_the_base_document_is_valid() -> None:
    document = parse_twin_document(base_document())
    twin = document.twins[0]
    assert twin.asset("etch_7") is not None
    assert twin.asset("nope") is None
    assert document.twin("line_1") is twin


def test_the_fab_line_example_loads_with_its_links() -> None:
    document = load_twin_file(EXAMPLE)
    twin = document.twins[0]
    assert twin.id == "fab_line_3"
    assert {a.id for a in twin.assets} == {
        "litho_scanner_2",
        "etch_tool_7",
        "cvd_chamber_2",
        "inspection_tool_1",
    }
    etch = twin.asset("etch_tool_7")
    assert etch is not None
    assert etch.process == "poly_etch"
    assert "logic_wafer_28nm" in etch.products
    assert etch.canonical_metric("chamber_temp") == "temp_c"
    assert etch.canonical_metric("temp_c") == "temp_c"
    assert etch.canonical_metric("unknown") is None
    temp = etch.metrics["temp_c"]
    assert temp.hard_limits is not None
    assert temp.hard_limits.high == 90.0
    rf = etch.setpoints["rf_source_power_sp"]
    assert (rf.bounds.low, rf.bounds.high, rf.max_step, rf.ramp_rate_per_s) == (1000, 2500, 100, 50)
    assert {m.id for m in twin.process_models} == {
        "litho_cd_model",
        "etch_yield_model",
        "liner_film_model",
    }
    cross_asset = next(p for p in twin.playbooks if p.id == "gate_cd_drift")
    assert cross_asset.actions[0].asset == "litho_scanner_2"
    # Metric thresholds layer over the twin's defaults, key by key.
    thresholds = twin.anomaly_thresholds(temp)
    assert thresholds.baseline_halflife_samples == 300  # twin default
    assert thresholds.drift.method == "cusum"
    assert thresholds.drift.h == 10.0
    cd = twin.anomaly_thresholds(twin.asset("inspection_tool_1").metrics["gate_cd_nm"])  # type: ignore[union-attr]
    assert isinstance(cd.drift, EwmaDrift)
    assert cd.warmup_samples == 25


def test_the_example_also_loads_as_json(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "fab-line.json"
    path.write_text(json.dumps(yaml.safe_load(EXAMPLE.read_text())), encoding="utf-8")
    assert load_twin_file(path) == load_twin_file(EXAMPLE)


def test_thresholds_without_any_setting_are_the_built_in_defaults() -> None:
    twin = parse_twin_document(base_document()).twins[0]
    assert twin.anomaly_thresholds(None) == AnomalyThresholds()


# --- shape errors (pydantic), each with its pointer -------------------------------------------


def test_unknown_key_points_at_the_key() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["metrics"]["temp_c"]["unitt"] = "K"

    assert broken(mutate) == [
        ("/twins/0/assets/0/metrics/temp_c/unitt", "Extra inputs are not permitted")
    ]


def test_missing_field_points_where_it_belongs() -> None:
    def mutate(t: dict[str, Any]) -> None:
        del t["assets"][0]["setpoints"]["esc_temp_sp"]["bounds"]

    assert broken(mutate) == [("/twins/0/assets/0/setpoints/esc_temp_sp/bounds", "Field required")]


def test_bad_id_and_bad_map_key() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["id"] = "Etch 7"
        t["assets"][0]["metrics"]["Temp C"] = {"unit": "degC"}

    (first, first_detail), (second, second_detail) = broken(mutate)
    assert first == "/twins/0/assets/0/id"
    assert "pattern" in first_detail
    assert second == "/twins/0/assets/0/metrics/Temp C"
    assert second_detail.startswith("invalid key")


def test_reversed_range_points_at_the_range() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["metrics"]["temp_c"]["normal_range"] = {"low": 65.0, "high": 55.0}

    assert broken(mutate) == [
        ("/twins/0/assets/0/metrics/temp_c/normal_range", "low (65) must be below high (55)")
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "60", True])
def test_numbers_must_be_finite_numbers(value: object) -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["setpoints"]["esc_temp_sp"]["default"] = value

    [(pointer, _)] = broken(mutate)
    assert pointer == "/twins/0/assets/0/setpoints/esc_temp_sp/default"


def test_distribution_errors_point_into_the_input() -> None:
    def mutate(t: dict[str, Any]) -> None:
        inputs = t["process_models"][0]["inputs"]
        inputs["d0"]["std"] = 0.0
        inputs["u"] = {"dist": "uniform", "low": 2.0, "high": 1.0}
        inputs["g"] = {"dist": "gamma", "k": 2.0}
        inputs["nothing"] = {"mean": 1.0}

    assert broken(mutate) == [
        ("/twins/0/process_models/0/inputs/d0/std", "Input should be greater than 0"),
        ("/twins/0/process_models/0/inputs/u", "low (2) must be below high (1)"),
        (
            "/twins/0/process_models/0/inputs/g/dist",
            "Input tag 'gamma' found using 'dist' does not match any of the expected tags: "
            "'normal', 'uniform', 'triangular', 'lognormal'",
        ),
        (
            "/twins/0/process_models/0/inputs/nothing",
            "an input is {asset, metric}, {asset, setpoint} or {dist: ...}",
        ),
    ]


def test_playbook_action_needs_exactly_one_source_of_values() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["playbooks"][0]["actions"][0]["search"] = {"low": 50, "high": 60, "steps": 3}

    assert broken(mutate) == [
        ("/twins/0/playbooks/0/actions/0", "give exactly one of candidates or search")
    ]


def test_unknown_drift_method_points_at_method() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["metrics"]["temp_c"]["anomaly"] = {"drift": {"method": "page_hinkley"}}

    [(pointer, _)] = broken(mutate)
    assert pointer == "/twins/0/assets/0/metrics/temp_c/anomaly/drift/method"


def test_document_needs_at_least_one_twin() -> None:
    assert errors_of({"twins": []}) == [
        ("/twins", "List should have at least 1 item after validation, not 0")
    ]
    assert errors_of([]) == [("", "Input should be a valid dictionary or instance of TwinDocument")]


# --- whole-document errors (references, ranges, expressions) --------------------------------


def test_normal_range_outside_hard_limits_points_at_the_hard_limits() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["metrics"]["temp_c"]["hard_limits"] = {"low": 15.0, "high": 60.0}

    assert broken(mutate) == [
        (
            "/twins/0/assets/0/metrics/temp_c/hard_limits",
            "hard limits [15, 60] must contain the normal range [55, 65]",
        )
    ]


def test_duplicate_ids_point_at_the_second_one() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"].append(copy.deepcopy(t["assets"][0]))
        t["products"].append({"id": "wafer"})

    assert broken(mutate) == [
        ("/twins/0/products/2/id", "duplicate product id 'wafer'"),
        ("/twins/0/assets/1/id", "duplicate asset id 'etch_7'"),
    ]


def test_dangling_ppr_links() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["process"] = "deposition"
        t["assets"][0]["products"] = ["wafer", "chip"]
        t["processes"][0]["products"] = ["reticle"]
        t["process_models"][0]["process"] = "litho"

    assert broken(mutate) == [
        ("/twins/0/processes/0/products/0", "unknown product 'reticle'"),
        ("/twins/0/assets/0/process", "unknown process 'deposition'"),
        ("/twins/0/assets/0/products/1", "unknown product 'chip'"),
        ("/twins/0/process_models/0/process", "unknown process 'litho'"),
    ]


def test_setpoint_values_outside_bounds_and_unknown_metric() -> None:
    def mutate(t: dict[str, Any]) -> None:
        setpoint = t["assets"][0]["setpoints"]["esc_temp_sp"]
        setpoint["default"] = 85.0
        setpoint["current"] = 30.0
        setpoint["metric"] = "temp_k"
        setpoint["max_step"] = 50.0

    assert broken(mutate) == [
        ("/twins/0/assets/0/setpoints/esc_temp_sp/metric", "asset 'etch_7' has no metric 'temp_k'"),
        (
            "/twins/0/assets/0/setpoints/esc_temp_sp/default",
            "default 85 is outside the bounds [40, 80]",
        ),
        (
            "/twins/0/assets/0/setpoints/esc_temp_sp/current",
            "current 30 is outside the bounds [40, 80]",
        ),
        (
            "/twins/0/assets/0/setpoints/esc_temp_sp/max_step",
            "max_step 50 is wider than the bounds (40)",
        ),
    ]


def test_alias_used_twice_on_an_asset() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["metrics"]["pressure_mtorr"]["aliases"] = ["temp", "temp_c"]

    assert broken(mutate) == [
        (
            "/twins/0/assets/0/metrics/pressure_mtorr/aliases/0",
            "alias 'temp' is already used by metric 'temp_c' of this asset",
        ),
        (
            "/twins/0/assets/0/metrics/pressure_mtorr/aliases/1",
            "alias 'temp_c' is already used by metric 'temp_c' of this asset",
        ),
    ]


def test_process_model_input_references() -> None:
    def mutate(t: dict[str, Any]) -> None:
        inputs = t["process_models"][0]["inputs"]
        inputs["temp"] = {"asset": "etch_7", "metric": "temp_k"}
        inputs["sp"] = {"asset": "etch_9", "setpoint": "esc_temp_sp"}
        inputs["other"] = {"asset": "etch_7", "setpoint": "rf_sp"}

    assert broken(mutate) == [
        ("/twins/0/process_models/0/inputs/temp/metric", "asset 'etch_7' has no metric 'temp_k'"),
        ("/twins/0/process_models/0/inputs/sp/asset", "unknown asset 'etch_9'"),
        (
            "/twins/0/process_models/0/inputs/other/setpoint",
            "asset 'etch_7' has no setpoint 'rf_sp'",
        ),
    ]


def test_expressions_are_parsed_not_run() -> None:
    def mutate(t: dict[str, Any]) -> None:
        outputs = t["process_models"][0]["outputs"]
        outputs["broken"] = {"expression": "temp * (sp + "}
        outputs["sneaky"] = {"expression": "__import__('os').system('true') + temp"}
        outputs["undeclared"] = {"expression": "max(temp, pressure) + sin(sp)"}

    errors = broken(mutate)
    assert [pointer for pointer, _ in errors] == [
        "/twins/0/process_models/0/outputs/broken/expression",
        "/twins/0/process_models/0/outputs/sneaky/expression",
        "/twins/0/process_models/0/outputs/undeclared/expression",
    ]
    assert errors[0][1].startswith("not a valid expression")
    assert errors[1][1].startswith("unknown name(s) __import__:")
    assert errors[2][1].startswith("unknown name(s) pressure, sin:")


def test_reserved_input_and_output_names() -> None:
    def mutate(t: dict[str, Any]) -> None:
        model = t["process_models"][0]
        model["inputs"]["exp"] = {"dist": "normal", "mean": 0.0, "std": 1.0}
        model["inputs"]["if"] = {"dist": "normal", "mean": 0.0, "std": 1.0}
        model["outputs"]["temp"] = {"expression": "temp"}

    assert [p for p, _ in broken(mutate)] == [
        "/twins/0/process_models/0/inputs/exp",
        "/twins/0/process_models/0/inputs/if",
        "/twins/0/process_models/0/outputs/temp",
    ]


def test_playbook_references_and_values() -> None:
    def mutate(t: dict[str, Any]) -> None:
        playbook = t["playbooks"][0]
        playbook["metric"] = "rf_power_w"
        playbook["kinds"] = ["drift", "drift"]
        playbook["actions"][0]["candidates"] = [60.0, 95.0]
        playbook["actions"][1]["search"] = {"low": 30.0, "high": 65.0, "steps": 5}
        playbook["actions"].append({"setpoint": "rf_sp", "candidates": [1.0]})
        playbook["actions"].append({"asset": "cvd_2", "setpoint": "x", "candidates": [1.0]})
        playbook["objective"]["kpi"] = "throughput"

    assert broken(mutate) == [
        ("/twins/0/playbooks/0/metric", "asset 'etch_7' has no metric 'rf_power_w'"),
        ("/twins/0/playbooks/0/kinds", "anomaly kinds are listed more than once"),
        (
            "/twins/0/playbooks/0/actions/0/candidates/1",
            "candidate 95 is outside the setpoint bounds [40, 80]",
        ),
        (
            "/twins/0/playbooks/0/actions/1/search/low",
            "search low 30 is outside the setpoint bounds [40, 80]",
        ),
        ("/twins/0/playbooks/0/actions/2/setpoint", "asset 'etch_7' has no setpoint 'rf_sp'"),
        ("/twins/0/playbooks/0/actions/3/asset", "unknown asset 'cvd_2'"),
        (
            "/twins/0/playbooks/0/objective/kpi",
            "process model 'etch_yield' has no KPI 'throughput'",
        ),
    ]


def test_playbook_on_unknown_asset_is_reported_once() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["playbooks"][0]["asset"] = "etch_9"
        t["playbooks"][0]["objective"]["process_model"] = "nope"

    assert broken(mutate) == [
        ("/twins/0/playbooks/0/asset", "unknown asset 'etch_9'"),
        ("/twins/0/playbooks/0/objective/process_model", "unknown process model 'nope'"),
    ]


def test_hysteresis_is_checked_after_merging_twin_and_metric_settings() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["anomaly_defaults"] = {"z_threshold": 3.0}
        t["assets"][0]["metrics"]["temp_c"]["anomaly"] = {"z_clear": 3.5}

    assert broken(mutate) == [
        (
            "/twins/0/assets/0/metrics/temp_c/anomaly/z_clear",
            "z_clear (3.5) must be below z_threshold (3) for hysteresis",
        )
    ]


def test_all_problems_are_reported_at_once() -> None:
    def mutate(t: dict[str, Any]) -> None:
        t["assets"][0]["process"] = "nope"
        t["assets"][0]["setpoints"]["esc_temp_sp"]["default"] = 100.0
        t["playbooks"][0]["asset"] = "nope"

    document = base_document()
    mutate(document["twins"][0])
    with pytest.raises(ValidationFailed) as caught:
        parse_twin_document(document)
    assert caught.value.detail == "twin model is invalid: 3 errors"
    problem = caught.value.problem()
    assert problem["type"] == "urn:opstwin:problem:validation-failed"
    assert [e["pointer"] for e in problem["errors"]] == [
        "/twins/0/assets/0/process",
        "/twins/0/assets/0/setpoints/esc_temp_sp/default",
        "/twins/0/playbooks/0/asset",
    ]


# --- files ------------------------------------------------------------------------------------------


def test_yaml_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "twin.yaml"
    path.write_text("twins:\n  - id: a\n    id: b\n", encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_twin_file(path)
    [error] = caught.value.errors
    assert "found duplicate key 'id'" in error.detail
    assert "line 3" in error.detail


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "twin.yml"
    path.write_text(
        "limits: &limits {low: 0.0, high: 10.0}\n"
        "twins:\n"
        "  - id: a\n"
        "    assets:\n"
        "      - id: b\n"
        "        metrics:\n"
        "          m: {unit: V, hard_limits: {<<: *limits, high: 12.0}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValidationFailed) as caught:  # the extra top-level key, nothing else
        load_twin_file(path)
    assert [(e.pointer, e.detail) for e in caught.value.errors] == [
        ("/limits", "Extra inputs are not permitted")
    ]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "twin.yaml"
    path.write_text("twins: [\n", encoding="utf-8")
    with pytest.raises(ValidationFailed, match=r"twin\.yaml is not valid YAML"):
        load_twin_file(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"twins": [], "twins": []}', "duplicate key 'twins'"),
        ('{"twins": NaN}', "NaN is not a number"),
    ],
)
def test_json_duplicates_and_nan_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "twin.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationFailed) as caught:
        load_twin_file(path)
    assert message in caught.value.errors[0].detail


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "twin.toml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValidationFailed, match=r"unsupported twin file type \.toml"):
        load_twin_file(path)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=150, derandomize=True)
@given(st.text(alphabet="abcXYZ019_-. é/~", max_size=70))
def test_asset_ids_are_accepted_exactly_when_they_match_the_pattern(asset_id: str) -> None:
    document = base_document()
    document["twins"][0]["assets"].append({"id": asset_id})
    matches = re.fullmatch(ID_PATTERN.strip("^$"), asset_id) is not None and asset_id != "etch_7"
    if matches:
        parse_twin_document(document)
    else:
        pointers = [pointer for pointer, _ in errors_of(document)]
        assert pointers == ["/twins/0/assets/1/id"]


def test_a_playbook_setpoint_its_objective_model_does_not_take_is_rejected() -> None:
    # The loop could only ever fail to simulate it: candidates of a setpoint the judging model
    # ignores cannot change its KPI.
    def mutate(t: dict[str, Any]) -> None:
        setpoints = t["assets"][0]["setpoints"]
        setpoints["rf_sp"] = {**setpoints["esc_temp_sp"]}
        t["playbooks"][0]["actions"].append({"setpoint": "rf_sp", "candidates": [58.0]})

    assert broken(mutate) == [
        (
            "/twins/0/playbooks/0/actions/2/setpoint",
            "process model 'etch_yield' (the playbook's objective) does not take setpoint "
            "etch_7/rf_sp as an input, so no candidate value could change its KPI: add the "
            "setpoint to the model's inputs, or judge the playbook by a model that takes it",
        )
    ]
