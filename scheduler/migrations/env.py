"""Alembic environment. Migrations run on a connection handed in by ``scheduler.schema``."""

from __future__ import annotations

from alembic import context

from scheduler.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `scheduler migrate` (scheduler.schema.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
