"""The committed twin.v1 JSON Schema is the pydantic model's, and it judges documents alike."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from opstwin.twins.model import SCHEMA_ID, twin_json_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "src" / "opstwin" / "aiw" / "schemas" / "twin.v1.json"
EXAMPLE = ROOT / "examples" / "fab-line.yaml"
REGENERATE = (
    '.venv/bin/python -c "import json; from opstwin.twins.model import twin_json_schema; '
    "open('src/opstwin/aiw/schemas/twin.v1.json', 'w').write("
    "json.dumps(twin_json_schema(), indent=2, ensure_ascii=False) + '\\n')\""
)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return loaded


def test_committed_schema_matches_the_model(schema: dict[str, Any]) -> None:
    assert schema == twin_json_schema(), f"twin.v1.json is stale; regenerate with: {REGENERATE}"


def test_schema_is_valid_2020_12_with_its_identity(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID == "urn:opstwin:schema:twin.v1"
    assert schema["title"] == "twin.v1"
    assert schema["description"]


def test_example_validates(schema: dict[str, Any], example: dict[str, Any]) -> None:
    assert list(Draft202012Validator(schema).iter_errors(example)) == []


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(document)
    *parents, last = path.split("/")
    node: Any = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "schema_path"),
    [
        ("twins/0/assets/1/id", "Etch Tool", "pattern"),
        ("twins/0/assets/1/metrics/temp_c/unit", 5, "type"),
        ("twins/0/assets/1/metrics/temp_c/colour", "red", "additionalProperties"),
        ("twins/0/assets/1/metrics/Temp C", {"unit": "degC"}, "additionalProperties"),
        ("twins/0/assets/1/setpoints/esc_temp_sp/max_step", -1.0, "exclusiveMinimum"),
        ("twins/0/process_models/1/inputs/incoming_d0", {"dist": "gamma"}, "oneOf"),
        ("twins/0/playbooks/0/kinds", ["wobble"], "enum"),
        ("twins", [], "minItems"),
    ],
)
def test_broken_documents_are_rejected_by_the_schema(
    schema: dict[str, Any], example: dict[str, Any], path: str, value: Any, schema_path: str
) -> None:
    errors = list(Draft202012Validator(schema).iter_errors(_set(example, path, value)))
    assert errors, f"{path}={value!r} should be rejected"
    assert any(schema_path in e.schema_path for e in errors)
