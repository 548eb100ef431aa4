"""SchemaRegistry: the fast validator agrees with the reference one; errors carry pointers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.kit.errors import ValidationFailed

registry = SchemaRegistry.from_package()
VALID = {
    "specversion": "1.0",
    "id": "evt_1",
    "source": "/x",
    "type": "opstwin.telemetry.appended",
    "time": "2026-01-01T00:00:00Z",
    "sequence": "0" * 20,
    "data": {"a": 1},
}
primitive = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
values = st.recursive(
    primitive,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
attribute_names = st.sampled_from(
    [
        *VALID,
        "subject",
        "dataschema",
        "datacontenttype",
        "cursor",
        "traceparent",
        "Bad",
        "x" * 21,
        "",
    ]
)
type_values = st.sampled_from(
    ["opstwin.a.b", "opstwin.a", "ext.x", "ext.", "Opstwin.a.b", "ext.A-b.c", "opstwin.a.b.c"]
)


@settings(max_examples=400)
@given(
    changes=st.dictionaries(
        attribute_names, values | type_values | st.just("2026-01-01T00:00:00+02:00"), max_size=4
    ),
    removals=st.sets(st.sampled_from(list(VALID)), max_size=2),
)
def test_fast_and_reference_validators_agree(changes: dict[str, Any], removals: set[str]) -> None:
    instance = {k: v for k, v in {**VALID, **changes}.items() if k not in removals}
    assert registry.fast_check("event.v1")(instance) == registry.is_valid("event.v1", instance)


def test_validation_errors_point_at_fields() -> None:
    with pytest.raises(ValidationFailed) as caught:
        registry.validate(
            "event.v1", {**VALID, "type": "nope", "sequence": 5}, pointer_prefix="/body"
        )
    pointers = {e.pointer for e in caught.value.errors}
    assert pointers == {"/body/type", "/body/sequence"}


def test_registry_refuses_a_schema_without_a_stable_id() -> None:
    with pytest.raises(ValueError, match=r"\$id"):
        SchemaRegistry(
            {"x.v1": {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "other"}}
        )


def test_a_schema_that_breaks_the_metaschema_is_refused_every_time() -> None:
    """The metaschema check is remembered per document, but only a pass is remembered."""
    from jsonschema.exceptions import SchemaError

    broken = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:opstwin:schema:x.v1",
        "type": "no-such-type",
    }
    for _ in range(2):
        with pytest.raises(SchemaError):
            SchemaRegistry({"x.v1": broken})
    fine = {**broken, "type": "object"}
    assert SchemaRegistry({"x.v1": fine}).names() == ["x.v1"]
    assert SchemaRegistry({"x.v1": dict(fine)}).names() == ["x.v1"]


async def test_changelog_rejects_invalid_envelopes_even_after_remembering_valid_ones() -> None:
    from opstwin.aiw.changelog import ChangeLog, NewEvent
    from opstwin.kit.clock import ManualClock
    from opstwin.kit.ids import SequentialIds

    changelog = ChangeLog(None, registry, ManualClock(), SequentialIds())  # type: ignore[arg-type]
    good = NewEvent(tenant_id="t", type="ext.ok", source="/s", subject="twin/a/asset/b", data={})
    changelog._validate(good, changelog.envelope(good))
    changelog._validate(good, changelog.envelope(good))  # remembered: same verdict
    for bad in (
        NewEvent(tenant_id="t", type="Not.valid", source="/s", data={}),
        NewEvent(tenant_id="t", type="ext.ok", source="/s", data={}, extensions={"Upper": "x"}),
        NewEvent(tenant_id="t", type="ext.ok", source="/s", data={}, id=""),
        NewEvent(
            tenant_id="t",
            type="ext.ok",
            source="/s",
            subject="twin/a/asset/b",
            data={},
            extensions={"n": 1.5},
        ),  # type: ignore[dict-item]
    ):
        with pytest.raises(ValidationFailed):
            changelog._validate(bad, changelog.envelope(bad))
