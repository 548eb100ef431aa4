"""SchemaRegistry: every JSON Schema the service publishes, loaded from the package and checked.

Schemas are files ``opstwin/aiw/schemas/<name>.json`` (``name`` like ``event.v1``), each a
JSON Schema 2020-12 document with a stable ``$id`` (``urn:opstwin:schema:<name>``). They can
reference each other by ``$id``. The registry is built once by the app factory.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from opstwin.kit import jsonutil
from opstwin.kit.errors import FieldError, NotFound, ValidationFailed

SCHEMA_ID_PREFIX = "urn:opstwin:schema:"

# Keywords whose meaning is the same in draft 7 and 2020-12. A schema built only from these can
# be compiled by fastjsonschema (draft 7, ~20x faster than the reference validator) for hot
# paths such as validating every change-log envelope; tests check both validators agree.
_PORTABLE_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "pattern",
        "minLength",
        "maxLength",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "uniqueItems",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
    }
)
# Keywords whose value is a map of name → subschema rather than a subschema or keyword set.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties"})
DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """A published schema: its name, version, stable id and the document itself."""

    name: str
    version: int
    id: str
    title: str
    document: dict[str, Any]
    etag: str


@functools.lru_cache(maxsize=256)
def _check_against_metaschema(canonical: bytes) -> None:
    """Raise ``SchemaError`` unless the document (canonical JSON) is a valid 2020-12 schema.

    A memo of a pure function, keyed by the document's content: the reference check walks the
    whole metaschema (~40 ms per schema, ~0.4 s for the package's), and every app built in one
    process (tests, the CLI beside a server) would pay it again for the same bytes. A failure
    is not remembered (``lru_cache`` does not cache exceptions), so it is reported every time.
    """
    Draft202012Validator.check_schema(jsonutil.loads(canonical))


class SchemaRegistry:
    """The schemas of this service, with compiled validators."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        self._schemas: dict[str, SchemaInfo] = {}
        resources_: list[tuple[str, Resource[Any]]] = []
        for name, doc in sorted(documents.items()):
            expected_id = SCHEMA_ID_PREFIX + name
            if doc.get("$id") != expected_id:
                raise ValueError(f"schema {name}: $id must be {expected_id!r}")
            if doc.get("$schema") != DIALECT:
                raise ValueError(f"schema {name}: $schema must be {DIALECT!r}")
            canonical = jsonutil.canonical(doc)
            _check_against_metaschema(canonical)
            base, _, version = name.rpartition(".v")
            self._schemas[name] = SchemaInfo(
                name=name,
                version=int(version),
                id=expected_id,
                title=str(doc.get("title", base)),
                document=doc,
                etag='"' + hashlib.sha256(canonical).hexdigest()[:32] + '"',
            )
            resources_.append(
                (expected_id, Resource.from_contents(doc, default_specification=DRAFT202012))
            )
        self._registry: Registry[Any] = Registry().with_resources(resources_)
        self._fast: dict[str, Callable[[Any], bool]] = {}
        self._validators = {
            name: Draft202012Validator(info.document, registry=self._registry)
            for name, info in self._schemas.items()
        }

    @classmethod
    def from_package(cls) -> SchemaRegistry:
        """Load every ``*.json`` under ``opstwin/aiw/schemas``."""
        folder = resources.files("opstwin.aiw") / "schemas"
        documents = {
            entry.name.removesuffix(".json"): jsonutil.loads(entry.read_bytes())
            for entry in folder.iterdir()
            if entry.name.endswith(".json")
        }
        return cls(documents)

    def names(self) -> list[str]:
        return list(self._schemas)

    def all(self) -> list[SchemaInfo]:
        return list(self._schemas.values())

    def get(self, name: str) -> SchemaInfo:
        try:
            return self._schemas[name]
        except KeyError:
            raise NotFound(f"no schema named {name!r}; GET /schemas lists them") from None

    def id_of(self, name: str) -> str:
        return self.get(name).id

    def is_valid(self, name: str, instance: Any) -> bool:
        return bool(self._validators[name].is_valid(instance))

    def fast_check(self, name: str) -> Callable[[Any], bool]:
        """A fast yes/no validator for hot paths (compiled once and cached).

        Uses fastjsonschema when the schema only uses portable keywords, else the reference
        validator. On a "no", call :meth:`validate` for the detailed, pointer-carrying error.
        """
        cached = self._fast.get(name)
        if cached is not None:
            return cached
        info = self.get(name)
        if _portable(info.document):
            draft7 = {**info.document, "$schema": "http://json-schema.org/draft-07/schema#"}
            # Formats are annotations in 2020-12 (the reference validator doesn't assert them);
            # keep the compiled validator equally lenient. Patterns carry the real checks.
            compiled = fastjsonschema.compile(draft7, formats={"date-time": _any, "uri": _any})

            def check(instance: Any) -> bool:
                try:
                    compiled(instance)
                except fastjsonschema.JsonSchemaException:
                    return False
                return True

        else:
            check = self._validators[name].is_valid
        self._fast[name] = check
        return check

    def validate(self, name: str, instance: Any, *, pointer_prefix: str = "") -> None:
        """Raise ValidationFailed (422) listing every violation with its JSON pointer."""
        validator = self._validators[name]
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if not errors:
            return
        field_errors = [
            FieldError(detail=error.message, pointer=pointer_prefix + _pointer_of(error))
            for error in errors[:50]
        ]
        headline = best_match(errors)
        raise ValidationFailed(
            f"does not match schema {name}: {headline.message}", errors=field_errors
        )


def _pointer_of(error: Any) -> str:
    """JSON pointer of the offending value; for a bad property *name*, of that property."""
    parts = list(error.absolute_path)
    if "propertyNames" in error.schema_path and isinstance(error.instance, str):
        parts.append(error.instance)
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # "Additional properties are not allowed ('X' was unexpected)": point at each culprit.
        allowed = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        extra = [
            k for k in error.instance if k not in allowed and not any(p.search(k) for p in patterns)
        ]
        if extra:
            parts.append(extra[0])
    return "".join(f"/{_escape(p)}" for p in parts)


def _escape(part: Any) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return str(part).replace("~", "~0").replace("/", "~1")


def _any(_value: Any) -> bool:
    return True


def _portable(schema: Any) -> bool:
    """True when ``schema`` (recursively) uses only keywords with draft-7-identical meaning."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict):
        return False
    for key, value in schema.items():
        if key not in _PORTABLE_KEYWORDS:
            return False
        if key in _SCHEMA_MAPS:
            if not all(_portable(sub) for sub in value.values()):
                return False
        elif key in {"additionalProperties", "propertyNames", "not"}:
            if not _portable(value):
                return False
        elif key in {"anyOf", "oneOf", "allOf"} and not all(_portable(sub) for sub in value):
            return False
    return True
