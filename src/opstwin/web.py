"""HTTP edge helpers shared by every router: services access, strict query parameters,
RFC 9457 problem responses, request metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opstwin.kit import jsonutil
from opstwin.kit.errors import (
    PROBLEM_TYPE_PREFIX,
    FieldError,
    OpsTwinError,
    UnknownParameter,
    ValidationFailed,
)
from opstwin.ops.metrics import Metrics
from opstwin.services import Services

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _query_aliases(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_aliases(sub)
    return names


class StrictQueryRoute(APIRoute):
    """An APIRoute that answers 400 to query parameters it does not declare.

    Silently ignoring ``?sinse=…`` would hand an agent the wrong data without telling it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = frozenset(_query_aliases(self.dependant))

        async def strict_handler(request: Request) -> Response:
            unknown = sorted(set(request.query_params.keys()) - allowed)
            if unknown:
                raise UnknownParameter(
                    f"unknown query parameter(s): {', '.join(unknown)}; accepted: {', '.join(sorted(allowed)) or 'none'}",
                    errors=[
                        FieldError(detail="not a parameter of this endpoint", parameter=p)
                        for p in unknown
                    ],
                )
            return await handler(request)

        return strict_handler


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` header against ``etag``."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


def problem_response(error: OpsTwinError, request: Request) -> Response:
    return Response(
        content=jsonutil.dumps(error.problem(instance=request.url.path)),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=error.headers,
    )


async def handle_opstwin_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, OpsTwinError):  # pragma: no cover - registered for OpsTwinError only
        raise exc
    if exc.status >= 500:
        log.error("request.failed", path=request.url.path, error=exc.detail)
    return problem_response(exc, request)


def _pointer(loc: tuple[Any, ...] | list[Any]) -> FieldError:
    return FieldError(
        detail="", pointer="/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in loc)
    )


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    errors: list[FieldError] = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        where, rest = (loc[0], loc[1:]) if loc else ("body", [])
        detail = str(err.get("msg", "invalid"))
        if where == "query" and rest:
            errors.append(FieldError(detail=detail, parameter=str(rest[0])))
        elif where == "header" and rest:
            errors.append(FieldError(detail=detail, header=str(rest[0])))
        elif where == "path" and rest:
            errors.append(FieldError(detail=detail, parameter=str(rest[0])))
        else:
            errors.append(FieldError(detail=detail, pointer=_pointer(rest).pointer if rest else ""))
    first = errors[0] if errors else FieldError(detail="invalid request")
    where_text = first.parameter or first.header or first.pointer or "request"
    return problem_response(
        ValidationFailed(f"{where_text}: {first.detail}", errors=errors), request
    )


_HTTP_SLUGS = {404: ("not-found", "Not found"), 405: ("method-not-allowed", "Method not allowed")}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}; the manifest at /.well-known/aiw-manifest.json lists them"
    body = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": exc.status_code,
        "detail": detail,
        "instance": request.url.path,
    }
    return Response(
        jsonutil.dumps(body),
        status_code=exc.status_code,
        media_type=PROBLEM_JSON,
        headers=dict(exc.headers or {}),
    )


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request.crashed", path=request.url.path, error_type=type(exc).__name__)
    body = OpsTwinError("an unexpected error occurred; it has been logged").problem(
        instance=request.url.path
    )
    return Response(jsonutil.dumps(body), status_code=500, media_type=PROBLEM_JSON)


class RequestMetricsMiddleware:
    """Pure ASGI middleware counting requests by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                self.metrics.http_duration.labels(scope["method"], template).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.http_requests.labels(scope["method"], template, str(status)).inc()
