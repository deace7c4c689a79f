"""registrations.erased_at: when a person's data was anonymised

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:00:00

Set by an erasure on request (POST /api/privacy/erase) and by the retention job; the job
skips registrations that already have it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registrations") as batch:
        batch.add_column(
            sa.Column("erased_at", scheduler.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("registrations") as batch:
        batch.drop_column("erased_at")
