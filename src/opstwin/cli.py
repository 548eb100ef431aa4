"""The `opstwin` command line."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
import uvicorn
import yaml
from rich.console import Console
from rich.table import Table

from opstwin import __version__, cli_anomalies, cli_api
from opstwin.config import Settings
from opstwin.kit import jsonutil
from opstwin.kit.clock import SystemClock
from opstwin.kit.errors import OpsTwinError
from opstwin.logging import configure_logging
from opstwin.policy.principals import DEFAULT_TENANT, ApiKeyRecord, ApiKeyService, IssuedKey
from opstwin.policy.rbac import Role

app = typer.Typer(
    help="OpsTwin: operational digital twin with an AIW interface for agents.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys (principals).", no_args_is_help=True)
changelog_app = typer.Typer(help="Change-log maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(changelog_app, name="changelog")
twins_app = typer.Typer(help="Twin models (twin.v1).", no_args_is_help=True)
app.add_typer(twins_app, name="twins")
audit_app = typer.Typer(help="The audit chain (audit.v1).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
policy_app = typer.Typer(help="Action policies (policy.v1).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(cli_api.proposals_app, name="proposals")
app.add_typer(cli_api.sim_app, name="sim")
app.add_typer(cli_anomalies.anomalies_app, name="anomalies")
app.command("status")(cli_api.status)

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings)
    return settings


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(db)`` against a migrated database, turning domain errors into exit code 2."""
    from opstwin.kit.db import Database

    async def main() -> T:
        db = Database(
            settings.database_url,
            busy_timeout_s=settings.database.busy_timeout_s,
            schema_name=settings.database.schema_name,
        )
        try:
            await db.migrate()
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except OpsTwinError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = _settings()

    async def noop(_db: Any) -> None:
        return None

    _run(settings, noop)
    out.print(f"database at head ({settings.database_url.split('://', 1)[0]})")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: OPSTWIN_SERVER_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: OPSTWIN_SERVER_PORT).")] = None,
) -> None:
    """Run the API server."""
    settings = _settings()
    _serve(settings, host or settings.server.host, port or settings.server.port)


def _serve(settings: Settings, host: str, port: int) -> None:
    from opstwin.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="Role of the key.")],
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")] = DEFAULT_TENANT,
    expires: Annotated[
        datetime | None, typer.Option(help="Expiry (ISO 8601, with timezone).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    settings = _settings()
    if expires is not None and expires.tzinfo is None:
        err.print("[red]error:[/red] --expires needs a timezone, e.g. 2027-01-01T00:00:00+00:00")
        raise typer.Exit(2)

    async def work(db: Any) -> IssuedKey:
        service = ApiKeyService(db, SystemClock())
        async with db.write() as tx:
            return await service.create(
                tx.conn, name=name, role=role, tenant_id=tenant, expires_at=expires
            )

    issued = _run(settings, work)
    record = issued.record
    if as_json:
        out.print_json(json.dumps({**_key_json(issued.record), "token": issued.token}))
        return
    out.print(
        f"key {record.key_id} ({record.role.value}, tenant {record.tenant_id}) — shown once, store it now:"
    )
    out.print(issued.token, highlight=False)


def _key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "tenant_id": record.tenant_id,
        "role": record.role.value,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
    }


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (never their secrets)."""
    settings = _settings()

    async def work(db: Any) -> list[Any]:
        async with db.read() as conn:
            return await ApiKeyService(db, SystemClock()).list(conn, tenant_id=tenant)

    records = _run(settings, work)
    if as_json:
        out.print_json(json.dumps([_key_json(r) for r in records]))
        return
    table = Table("key_id", "name", "tenant", "role", "created", "expires", "revoked")
    for r in records:
        table.add_row(
            r.key_id,
            r.name,
            r.tenant_id,
            r.role.value,
            f"{r.created_at:%Y-%m-%d %H:%M}",
            f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "—",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "—",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key_id to revoke.")]) -> None:
    """Revoke a key; requests with it are refused from now on."""
    settings = _settings()

    async def work(db: Any) -> None:
        async with db.write() as tx:
            await ApiKeyService(db, SystemClock()).revoke(tx.conn, key_id)

    _run(settings, work)
    out.print(f"revoked {key_id}")


@changelog_app.command("rotate-epoch")
def changelog_rotate_epoch() -> None:
    """After restoring a backup: give the log a new epoch so clients' cursors get 410 and resync."""
    settings = _settings()

    async def work(db: Any) -> str:
        from opstwin.aiw.changelog import ChangeLog
        from opstwin.aiw.schema_registry import SchemaRegistry
        from opstwin.kit.ids import UlidSource

        clock = SystemClock()
        changelog = ChangeLog(db, SchemaRegistry.from_package(), clock, UlidSource(clock))
        return await changelog.rotate_epoch()

    out.print(f"new epoch {_run(settings, work)}: cursors issued before it now answer 410")


@app.command()
def tail(
    key: Annotated[str, typer.Option(envvar="OPSTWIN_KEY", help="API key (viewer or above).")],
    url: Annotated[
        str, typer.Option(envvar="OPSTWIN_URL", help="Base URL of the server.")
    ] = "http://127.0.0.1:8000",
    since: Annotated[
        str | None,
        typer.Option(
            help="Cursor to start after; `now` for new changes only (default: oldest retained)."
        ),
    ] = None,
    types: Annotated[
        str | None, typer.Option(help="Comma-separated event types; `prefix.*` allowed.")
    ] = None,
    twin: Annotated[str | None, typer.Option(help="Only changes of this twin.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each event's raw JSON (one per line).")
    ] = False,
) -> None:
    """Follow the change feed (/subscribe), one readable line per event; resumes after disconnects."""
    configure_logging(Settings())
    from opstwin.aiw.client import StreamFailed, follow

    async def main() -> None:
        seen = 0
        async with httpx.AsyncClient(base_url=url) as client:
            async for frame in follow(client, token=key, since=since, types=types, twin_id=twin):
                if as_json:
                    out.print(frame.data, highlight=False, soft_wrap=True)
                else:
                    event = frame.json()
                    summary = jsonutil.dumps_str(event.get("data"))
                    if len(summary) > 100:
                        summary = summary[:99] + "…"
                    out.print(
                        f"{event.get('time', '')[:23]:<23} {int(event['sequence']):>8} "
                        f"{event['type']:<32} {event.get('subject', ''):<36} {summary}",
                        highlight=False,
                        soft_wrap=True,
                        markup=False,
                    )
                seen += 1
                if count is not None and seen >= count:
                    return

    try:
        asyncio.run(main())
    except StreamFailed as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        return


@twins_app.command("load")
def twins_load(
    file: Annotated[Path, typer.Argument(help="Twin file (.yaml, .yml or .json).")],
    tenant: Annotated[str, typer.Option(help="Tenant the twins belong to.")] = DEFAULT_TENANT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Validate a twin file and store each twin in it (a new version when it changed)."""
    from opstwin.twins.loader import load_twin_file

    settings = _settings()
    try:
        document = load_twin_file(file)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from exc
    except OpsTwinError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        for field_error in exc.errors:
            err.print(f"  {field_error.pointer or '/'}: {field_error.detail}", highlight=False)
        raise typer.Exit(2) from exc

    async def work(db: Any) -> list[tuple[str, int, bool]]:
        from opstwin.aiw.changelog import ChangeLog
        from opstwin.aiw.schema_registry import SchemaRegistry
        from opstwin.kit.ids import UlidSource
        from opstwin.twins.registry import TwinRegistry

        clock = SystemClock()
        schemas = SchemaRegistry.from_package()
        changelog = ChangeLog(db, schemas, clock, UlidSource(clock))
        await changelog.load()
        registry = TwinRegistry(changelog, schemas, clock)
        async with db.write() as tx:
            before = {t.id: t.version for t in await registry.list(tx.conn, tenant)}
            stored = await registry.put(tx, tenant, document)
        return [(t.id, t.version, before.get(t.id) != t.version) for t in stored]

    results = _run(settings, work)
    if as_json:
        out.print_json(
            json.dumps([{"twin_id": t, "version": v, "changed": c} for t, v, c in results])
        )
        return
    for twin_id, version, changed in results:
        state = "stored" if changed else "unchanged"
        out.print(f"twin {twin_id} (tenant {tenant}): version {version}, {state}")


DEMO_KEYS_FILE = cli_api.DEMO_KEYS_FILE
DEMO_TWIN_FILE = Path("examples/fab-line.yaml")
DEMO_POLICY_FILE = Path("examples/demo-policy.yaml")


def _demo_keys(settings: Settings) -> dict[str, str]:
    """One key per role for the demo, created once and kept (0600) under the data dir."""
    path: Path = settings.data_dir / DEMO_KEYS_FILE
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored

    async def work(db: Any) -> dict[str, str]:
        service = ApiKeyService(db, SystemClock())
        tokens: dict[str, str] = {}
        async with db.write() as tx:
            for role in Role:
                issued = await service.create(tx.conn, name=f"demo-{role.value}", role=role)
                tokens[role.value] = issued.token
        return tokens

    tokens = _run(settings, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokens, indent=2))
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return tokens


def _demo_setup(settings: Settings, twin_file: Path, policy_file: Path) -> list[str]:
    """Load the example twin and the demo policy unless the database has them already."""
    from opstwin.twins.loader import load_twin_file

    document = load_twin_file(twin_file)
    policy_document = yaml.safe_load(policy_file.read_text())

    async def work(db: Any) -> list[str]:
        from opstwin.aiw.changelog import ChangeLog
        from opstwin.aiw.schema_registry import SchemaRegistry
        from opstwin.audit.store import AuditLog
        from opstwin.kit.ids import UlidSource
        from opstwin.policy.principals import Principal
        from opstwin.policy.store import PolicyStore
        from opstwin.twins.registry import TwinRegistry

        clock = SystemClock()
        ids = UlidSource(clock)
        schemas = SchemaRegistry.from_package()
        changelog = ChangeLog(db, schemas, clock, ids)
        await changelog.load()
        registry = TwinRegistry(changelog, schemas, clock)
        policies = PolicyStore(changelog, AuditLog(schemas, clock), schemas, clock, ids)
        done: list[str] = []
        async with db.write() as tx:
            present = {t.id for t in await registry.list(tx.conn, DEFAULT_TENANT)}
            if not {t.id for t in document.twins} <= present:
                await registry.put(tx, DEFAULT_TENANT, document)
                done.append(f"loaded twin model {twin_file}")
            if (await policies.current(tx.conn, DEFAULT_TENANT)).builtin:
                admin = Principal(
                    key_id="demo", name="opstwin demo", tenant_id=DEFAULT_TENANT, role=Role.admin
                )
                await policies.put(tx, DEFAULT_TENANT, policy_document, admin)
                done.append(f"stored policy {policy_file}")
        return done

    return _run(settings, work)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    twin_file: Annotated[Path, typer.Option(help="Twin model to simulate.")] = DEMO_TWIN_FILE,
    policy_file: Annotated[
        Path, typer.Option(help="Policy stored when the tenant has none.")
    ] = DEMO_POLICY_FILE,
) -> None:
    """The whole loop on the embedded defaults: the example fab twin, a simulated plant with a
    drift fault every few tens of seconds, the automation loop, the server; one key per role.

    Runs again from the stored state (keys, setpoints, history). ``OPSTWIN_DATABASE_URL`` and
    ``OPSTWIN_MQTT_URL`` move the same demo to PostgreSQL and a broker.
    """
    settings = _settings()
    plant = settings.plant.model_copy(
        update={
            "enabled": True,
            "transport": "mqtt" if settings.mqtt.url is not None else "in_process",
        }
    )
    settings = settings.model_copy(update={"plant": plant})
    for needed in (twin_file, policy_file):
        if not needed.is_file():
            err.print(
                f"[red]error:[/red] {needed} not found: run the demo from the root of a clone "
                "(`make demo`), or give --twin-file and --policy-file",
                highlight=False,
            )
            raise typer.Exit(2)
    try:
        notes = _demo_setup(settings, twin_file, policy_file)
    except OpsTwinError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        for field_error in exc.errors:
            err.print(f"  {field_error.pointer or '/'}: {field_error.detail}", highlight=False)
        raise typer.Exit(2) from exc
    for note in notes:
        out.print(note)
    tokens = _demo_keys(settings)
    base = f"http://{host}:{port}"
    out.rule("OpsTwin demo")
    out.print(
        f"dashboard  {base}/dashboard#key={tokens['viewer']}", highlight=False, soft_wrap=True
    )
    out.print(f"API        {base}/docs")
    out.print(f"manifest   {base}/.well-known/aiw-manifest.json")
    out.print(f"feed       {base}/diff   {base}/subscribe")
    out.print(f"database   {settings.database_url}")
    interval = settings.plant.fault_interval_s
    out.print(
        f"plant      {settings.plant.twin_id}, {plant.transport}; "
        + (
            "no faults"
            if interval is None
            else f"a drift fault after {settings.plant.first_fault_after_s:g} s, "
            f"then every {interval:g} s"
        )
    )
    out.print(f"keys       (also in {settings.data_dir / DEMO_KEYS_FILE})")
    for role, token in tokens.items():
        out.print(f"  {role:<11}{token}", highlight=False, soft_wrap=True)
    out.print(
        f'try        curl -H "Authorization: Bearer {tokens["viewer"]}" {base}/diff',
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        "           opstwin status      opstwin proposals list      opstwin tail "
        f"--key {tokens['viewer']}",
        highlight=False,
        soft_wrap=True,
    )
    out.print("approve    opstwin proposals approve <proposal_id>   (a supervisor's key)")
    out.rule()
    _serve(settings, host, port)


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[str, typer.Option(help="Tenant whose chain to verify.")] = DEFAULT_TENANT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Verify a tenant's audit chain in the database: exit 0 when intact, 1 when broken (the
    first bad record is printed)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from opstwin.audit.chain import SealedRecord, Verification

    settings = _settings()

    async def work(db: Any) -> tuple[Verification, SealedRecord | None]:
        from opstwin.aiw.schema_registry import SchemaRegistry
        from opstwin.audit.store import AuditLog

        audit = AuditLog(SchemaRegistry.from_package(), SystemClock())
        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task(f"verifying {tenant}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            async with db.snapshot() as conn:
                result = await audit.verify(conn, tenant, progress=progress)
                found = result.first_break
                bad = None if found is None else await audit.record(conn, tenant, found.seq)
        return result, bad

    result, bad = _run(settings, work)
    stored = None
    if bad is not None:
        stored = {
            "seq": bad.seq,
            "prev_hash": bad.prev_hash,
            "hash": bad.hash,
            "body": bad.body.decode("utf-8", errors="replace"),
        }
    if as_json:
        out.print_json(json.dumps({"tenant_id": tenant, **result.to_dict(), "record": stored}))
    elif result.first_break is None:
        out.print(
            f"audit chain of tenant {tenant} intact: {result.checked} records, "
            f"head {result.head.seq} {result.head.hash}",
            highlight=False,
        )
    else:
        found = result.first_break
        out.print(
            f"[red]audit chain of tenant {tenant} is broken[/red]: {found.kind} — {found.detail}",
            highlight=False,
        )
        out.print(
            f"records 1…{result.head.seq} verify; the first bad record is {found.seq}",
            highlight=False,
        )
        if stored is not None:
            out.print(f"record {found.seq} as stored:", highlight=False)
            out.print(
                json.dumps(stored, indent=2, ensure_ascii=False), highlight=False, markup=False
            )
    if not result.ok:
        raise typer.Exit(1)


@policy_app.command("show")
def policy_show(
    tenant: Annotated[str, typer.Option(help="Tenant whose policy to show.")] = DEFAULT_TENANT,
    version: Annotated[
        int | None, typer.Option(min=1, help="This version (default: the one in force).")
    ] = None,
) -> None:
    """Print a tenant's action policy (policy.v1) with its version, as JSON."""
    settings = _settings()

    async def work(db: Any) -> dict[str, Any]:
        from opstwin.aiw.changelog import ChangeLog
        from opstwin.aiw.schema_registry import SchemaRegistry
        from opstwin.audit.store import AuditLog
        from opstwin.kit.ids import UlidSource
        from opstwin.policy.store import PolicyStore

        clock = SystemClock()
        schemas = SchemaRegistry.from_package()
        ids = UlidSource(clock)
        changelog = ChangeLog(db, schemas, clock, ids)
        store = PolicyStore(changelog, AuditLog(schemas, clock), schemas, clock, ids)
        async with db.read() as conn:
            stored = (
                await store.current(conn, tenant)
                if version is None
                else await store.get(conn, tenant, version)
            )
        return {
            "tenant_id": tenant,
            "version": stored.version,
            "builtin": stored.builtin,
            "created_by": stored.created_by,
            "created_at": None if stored.created_at is None else stored.created_at.isoformat(),
            "policy": stored.document(),
        }

    out.print_json(json.dumps(_run(settings, work)))


def main() -> None:
    app()
