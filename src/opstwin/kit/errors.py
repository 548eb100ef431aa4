"""The one error hierarchy. Services raise these; one handler turns them into RFC 9457 problems.

::

    OpsTwinError                    500  internal          (unexpected; never for expected failures)
    ├── BadRequest                  400  bad-request
    │   ├── UnknownParameter        400  unknown-parameter
    │   └── InvalidCursor           400  invalid-cursor    (malformed or forged cursor)
    ├── Unauthenticated             401  unauthenticated
    ├── PermissionDenied            403  forbidden
    ├── NotFound                    404  not-found
    ├── Conflict                    409  conflict
    ├── Gone                        410  gone
    │   └── CursorExpired           410  cursor-expired    (compacted past, or another epoch)
    ├── PayloadTooLarge             413  payload-too-large
    ├── ValidationFailed            422  validation-failed (with field pointers)
    └── ServiceUnavailable          503  unavailable

Every class has a stable ``slug``; the problem ``type`` is ``urn:opstwin:problem:<slug>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

PROBLEM_TYPE_PREFIX = "urn:opstwin:problem:"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One offending input, located by a JSON pointer (body), a parameter name or a header."""

    detail: str
    pointer: str | None = None
    parameter: str | None = None
    header: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"detail": self.detail}
        if self.pointer is not None:
            out["pointer"] = self.pointer
        if self.parameter is not None:
            out["parameter"] = self.parameter
        if self.header is not None:
            out["header"] = self.header
        return out


class OpsTwinError(Exception):
    """Base of every error OpsTwin raises on purpose."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        extensions: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extensions = extensions or {}
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        body.update(self.extensions)
        return body


class BadRequest(OpsTwinError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class UnknownParameter(BadRequest):
    slug = "unknown-parameter"
    title = "Unknown query parameter"


class InvalidCursor(BadRequest):
    slug = "invalid-cursor"
    title = "Invalid cursor"


class Unauthenticated(OpsTwinError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"


class PermissionDenied(OpsTwinError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(OpsTwinError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(OpsTwinError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Gone(OpsTwinError):
    status = 410
    slug = "gone"
    title = "Gone"


class CursorExpired(Gone):
    slug = "cursor-expired"
    title = "Cursor no longer valid"


class PayloadTooLarge(OpsTwinError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class ValidationFailed(OpsTwinError):
    status = 422
    slug = "validation-failed"
    title = "Validation failed"


class ServiceUnavailable(OpsTwinError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


@dataclass(slots=True)
class ProblemCatalog:
    """Every problem type the service can answer with, for the manifest."""

    kinds: list[type[OpsTwinError]] = field(
        default_factory=lambda: [
            OpsTwinError,
            BadRequest,
            UnknownParameter,
            InvalidCursor,
            Unauthenticated,
            PermissionDenied,
            NotFound,
            Conflict,
            Gone,
            CursorExpired,
            PayloadTooLarge,
            ValidationFailed,
            ServiceUnavailable,
        ]
    )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"type": PROBLEM_TYPE_PREFIX + k.slug, "status": k.status, "title": k.title}
            for k in self.kinds
        ]
