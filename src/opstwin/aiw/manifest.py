"""ManifestBuilder: the AIW self-description, generated from the running app.

Nothing in the manifest is written twice: endpoints and the permission each needs come from
the app's routes and their ``RequirePermission`` dependencies, roles from the RBAC table,
schemas from the registry, feed parameters from the settings. Domains add their resource and
action types with :meth:`ManifestBuilder.add_resource` / :meth:`add_action`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from opstwin import __version__
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.config import Settings
from opstwin.kit import jsonutil
from opstwin.kit.errors import ProblemCatalog
from opstwin.policy.deps import RequirePermission, current_principal
from opstwin.policy.rbac import Permission, Role, permissions_of, role_table

AIW_VERSION = "1.0"
MANIFEST_PATH = "/.well-known/aiw-manifest.json"


@dataclass(frozen=True, slots=True)
class ResourceType:
    """A kind of resource an agent can read (and the change events that describe it)."""

    name: str
    schema: str
    collection: str | None
    description: str
    event_types: tuple[str, ...] = ()
    snapshot: bool = False  # the collection returns state + a consistent cursor


@dataclass(frozen=True, slots=True)
class ActionType:
    """A kind of change an agent can request."""

    name: str
    input_schema: str
    endpoint: str
    description: str
    needs_approval: str  # "never" | "policy" | "always"
    reversible: bool


@dataclass(frozen=True, slots=True)
class Manifest:
    body: bytes
    etag: str


def _required_permission(dependant: Dependant) -> tuple[bool, Permission | None]:
    """(needs a principal, the permission it needs) declared anywhere in a route's dependencies."""
    needs_principal = False
    for dep in dependant.dependencies:
        if isinstance(dep.call, RequirePermission):
            return True, dep.call.permission
        if dep.call is current_principal:
            needs_principal = True
        nested_principal, nested = _required_permission(dep)
        if nested is not None:
            return True, nested
        needs_principal = needs_principal or nested_principal
    return needs_principal, None


def api_routes(app: FastAPI) -> list[APIRoute]:
    """The API routes of ``app``: those of the routers the app factory included.

    Read from the routers themselves (``app.state.api_routers``) because FastAPI's own
    ``app.routes`` keeps included routers as opaque wrappers.
    """
    routers: list[APIRouter] = app.state.api_routers
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


class ManifestBuilder:
    """Builds (once per app) the manifest document and its ETag."""

    def __init__(self, settings: Settings, schemas: SchemaRegistry) -> None:
        self._settings = settings
        self._schemas = schemas
        self._resources: list[ResourceType] = []
        self._actions: list[ActionType] = []
        self._cached: Manifest | None = None

    def add_resource(self, resource: ResourceType) -> None:
        self._resources.append(resource)
        self._cached = None

    def add_action(self, action: ActionType) -> None:
        self._actions.append(action)
        self._cached = None

    def snapshot_collections(self) -> list[str]:
        """Collections that return state with a consistent cursor (for resync after a 410)."""
        return [self._link(r.collection) for r in self._resources if r.snapshot and r.collection]

    def _link(self, path: str) -> str:
        base = self._settings.server.public_url
        return f"{base.rstrip('/')}{path}" if base else path

    def endpoints(self, app: FastAPI) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for route in api_routes(app):
            if not route.include_in_schema:
                continue
            needs_principal, permission = _required_permission(route.dependant)
            roles = (
                sorted(r.value for r in Role if permission in permissions_of(r))
                if permission is not None
                else ([r.value for r in Role] if needs_principal else [])
            )
            out.extend(
                {
                    "method": method,
                    "path": route.path,
                    "summary": route.summary or route.name.replace("_", " "),
                    "public": not needs_principal,
                    "permission": permission.value if permission else None,
                    "roles": roles,
                }
                for method in sorted(route.methods or ())
            )
        return sorted(out, key=lambda e: (e["path"], e["method"]))

    def build(self, app: FastAPI) -> Manifest:
        if self._cached is not None:
            return self._cached
        feed = self._settings.feed
        schemas = [
            {
                "name": s.name,
                "version": s.version,
                "id": s.id,
                "title": s.title,
                "url": self._link(f"/schemas/{s.name}"),
            }
            for s in self._schemas.all()
        ]
        endpoints = self.endpoints(app)
        doc: dict[str, Any] = {
            "aiw": AIW_VERSION,
            "service": {
                "name": self._settings.service_name,
                "product": "OpsTwin",
                "version": __version__,
                "description": (
                    "Operational digital twin: telemetry → twin state → anomaly → simulation → "
                    "proposal → confidence → policy decision → execution → verification → rollback, "
                    "every step in the change log."
                ),
            },
            "links": {
                "self": self._link(MANIFEST_PATH),
                "openapi": self._link(app.openapi_url or "/openapi.json"),
                "docs": self._link(app.docs_url or "/docs"),
                "schemas": self._link("/schemas"),
                "diff": self._link("/diff"),
                "subscribe": self._link("/subscribe"),
                "whoami": self._link("/whoami"),
                "health": self._link("/health"),
                "ready": self._link("/ready"),
                "metrics": self._link("/metrics"),
            },
            "auth": {
                "schemes": [
                    {
                        "type": "http",
                        "scheme": "bearer",
                        "header": "Authorization",
                        "token_format": "otk_<key_id>_<secret>",
                        "description": "API key issued by an admin (`opstwin keys create` or POST /keys); shown once.",
                    }
                ],
                "tenancy": "Every key belongs to one tenant; every read and write is scoped to it.",
                "roles": role_table(),
                "public_endpoints": sorted({e["path"] for e in endpoints if e["public"]}),
            },
            "endpoints": endpoints,
            "resources": [
                {
                    "name": r.name,
                    "schema": r.schema,
                    "schema_id": self._schemas.id_of(r.schema),
                    "collection": self._link(r.collection) if r.collection else None,
                    "snapshot": r.snapshot,
                    "event_types": list(r.event_types),
                    "description": r.description,
                }
                for r in self._resources
            ],
            "actions": [
                {
                    "name": a.name,
                    "input_schema": a.input_schema,
                    "endpoint": a.endpoint,
                    "needs_approval": a.needs_approval,
                    "reversible": a.reversible,
                    "description": a.description,
                }
                for a in self._actions
            ],
            "events": {
                "format": "CloudEvents 1.0, structured JSON",
                "envelope_schema": "event.v1",
                "type_pattern": "opstwin.<resource>.<verb>; caller-defined: ext.*",
                "types": sorted({t for r in self._resources for t in r.event_types}),
            },
            "change_feed": {
                "diff": {
                    "path": self._link("/diff"),
                    "parameters": ["since", "limit", "types", "twin_id", "wait"],
                    "page_size_default": feed.page_size_default,
                    "page_size_max": feed.page_size_max,
                    "max_wait_s": feed.max_wait_s,
                },
                "subscribe": {
                    "path": self._link("/subscribe"),
                    "parameters": ["since", "types", "twin_id"],
                    "resume_header": "Last-Event-ID",
                    "heartbeat_s": feed.heartbeat_s,
                    "bookmark_interval_s": feed.bookmark_interval_s,
                    "subscriber_buffer": feed.subscriber_buffer,
                },
                "cursor": {
                    "opaque": True,
                    "compare": "equality only",
                    "since_absent": "oldest retained change",
                    "since_now": "the head of the log",
                    "invalid_status": 400,
                    "expired_status": 410,
                    "expires": "when the change after it is compacted (retention) or the database is restored",
                },
                "retention_s": feed.retention_s,
                "types_filter": "comma-separated exact types, or a prefix ending in .* (opstwin.proposal.*)",
            },
            "schemas": schemas,
            "problems": ProblemCatalog().describe(),
            "limits": {
                "max_event_bytes": feed.max_event_bytes,
                "page_size_max": feed.page_size_max,
                "max_wait_s": feed.max_wait_s,
            },
        }
        self._schemas.validate("manifest.v1", doc)
        body = jsonutil.dumps(doc)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self._cached = Manifest(body=body, etag=etag)
        return self._cached
