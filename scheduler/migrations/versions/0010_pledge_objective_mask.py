"""pledges: objectives as a bit mask, one dashboard index instead of seven

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 03:00:00

Every index on ``pledges`` is paid for by every pledge a sync writes. Measured with
tests/bench/bench_pledge_feed.py (100,000 new pledges, SQLite): the six per-column
dashboard indexes and the ``pledge_objectives`` rows cost about 0.75 s of a 2.75 s ingest;
with them gone the counts read the rows of the process (index on process_id, withdrawn_at)
at 20-30 ms per count, instead of 5-10 ms from an index alone. The objectives, kept as JSON
for display, are also kept as bits (objective n is ``1 << n``): a filter by objective is
one AND on the row, a count by objective one GROUP BY over the masks.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
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
    with op.batch_alter_table("pledges", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("objective_mask", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE pledges SET objective_mask = (SELECT coalesce(sum(1 << o.objective), 0) "
        "FROM pledge_objectives AS o WHERE o.pledge_id = pledges.id)"
    )
    with op.batch_alter_table("pledges", schema=None) as batch_op:
        for name in _INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index(
            "ix_pledges_process_active", ["process_id", "withdrawn_at"], unique=False
        )
    with op.batch_alter_table("pledge_objectives", schema=None) as batch_op:
        batch_op.drop_index("ix_pledge_objectives_objective")
    op.drop_table("pledge_objectives")


def downgrade() -> None:
    op.create_table(
        "pledge_objectives",
        sa.Column("pledge_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pledge_id"],
            ["pledges.id"],
            name=op.f("fk_pledge_objectives_pledge_id_pledges"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pledge_id", "objective", name=op.f("pk_pledge_objectives")),
    )
    with op.batch_alter_table("pledge_objectives", schema=None) as batch_op:
        batch_op.create_index(
            "ix_pledge_objectives_objective", ["objective", "pledge_id"], unique=False
        )
    # Objective n of a pledge is bit n of its mask (1-23).
    op.execute(
        "INSERT INTO pledge_objectives (pledge_id, objective) "  # noqa: S608 (numbers only)
        "SELECT p.id, n.objective FROM pledges AS p JOIN "
        "(" + " UNION ALL ".join(f"SELECT {n} AS objective" for n in range(1, 24)) + ") AS n "
        "ON (p.objective_mask & (1 << n.objective)) <> 0"
    )
    with op.batch_alter_table("pledges", schema=None) as batch_op:
        batch_op.drop_index("ix_pledges_process_active")
        for name, column in _INDEXES.items():
            batch_op.create_index(name, ["process_id", "withdrawn_at", column], unique=False)
        batch_op.drop_column("objective_mask")
