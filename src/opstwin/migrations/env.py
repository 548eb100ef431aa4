"""Alembic environment: always run programmatically with a connection we hand in."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `opstwin migrate` (it passes the connection in)")

context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
