"""Serves the dashboard. The page itself holds no data: it asks for an API key and then reads
`/whoami`, `/ready` and `/subscribe` like any agent, so humans see exactly what agents see."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from opstwin.web import StrictQueryRoute

router = APIRouter(route_class=StrictQueryRoute, include_in_schema=False)

_STATIC = resources.files("opstwin.dashboard") / "static"
# Everything the page loads comes from this server; no inline script, no third-party origin.
_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard")
async def dashboard() -> Response:
    page = (_STATIC / "index.html").read_bytes()
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


def mount_dashboard(app: FastAPI) -> None:
    """Add the page and its static files to ``app``."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=str(_STATIC)), name="dashboard-static")
