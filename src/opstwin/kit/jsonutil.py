"""Fast, strict JSON (orjson): UTF-8 bytes, no NaN, sorted keys where a stable hash is needed."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_str(value: Any) -> str:
    return orjson.dumps(value).decode()


def canonical(value: Any) -> bytes:
    """Deterministic bytes (sorted keys) for hashing and ETags."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
