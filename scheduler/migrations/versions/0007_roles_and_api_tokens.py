"""roles per process (viewer, organizer, owner) and API tokens as their own rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00

Each organizer's one token (organizers.token_hash) becomes an unscoped, writable row of
api_tokens, so every token issued before keeps working; the column goes. A process that
had no owner (its members were added by `scheduler organizer create --process`) gets its
longest-standing member as owner, so that someone can manage its membership.

Downgrading keeps each organizer's oldest live unscoped token (others get an unusable
hash) and drops viewer memberships: before this revision every member could change the
process, and a read-only member must not come out of a downgrade able to write.
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from alembic import op

import scheduler.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organizer_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("process_id", sa.Integer(), nullable=True),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("created_at", scheduler.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", scheduler.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organizer_id"],
            ["organizers.id"],
            name=op.f("fk_api_tokens_organizer_id_organizers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["process_id"],
            ["processes.id"],
            name=op.f("fk_api_tokens_process_id_processes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_organizer_id"), "api_tokens", ["organizer_id"])
    op.create_index(op.f("ix_api_tokens_process_id"), "api_tokens", ["process_id"])
    op.create_index(
        op.f("ix_process_organizers_organizer_id"), "process_organizers", ["organizer_id"]
    )

    organizers = sa.table(
        "organizers",
        sa.column("id", sa.Integer()),
        sa.column("token_hash", sa.String()),
        sa.column("created_at", scheduler.models.UTCDateTime(timezone=True)),
    )
    api_tokens = sa.table(
        "api_tokens",
        sa.column("organizer_id", sa.Integer()),
        sa.column("token_hash", sa.String()),
        sa.column("label", sa.String()),
        sa.column("read_only", sa.Boolean()),
        sa.column("created_at", scheduler.models.UTCDateTime(timezone=True)),
    )
    op.execute(
        api_tokens.insert().from_select(
            ["organizer_id", "token_hash", "label", "read_only", "created_at"],
            sa.select(
                organizers.c.id,
                organizers.c.token_hash,
                sa.literal("issued before roles (0007)"),
                sa.false(),
                organizers.c.created_at,
            ).order_by(organizers.c.id),
        )
    )
    op.execute(
        "UPDATE process_organizers SET role = 'owner' "
        "WHERE NOT EXISTS (SELECT 1 FROM process_organizers o "
        "  WHERE o.process_id = process_organizers.process_id AND o.role = 'owner') "
        "AND organizer_id = (SELECT min(m.organizer_id) FROM process_organizers m "
        "  WHERE m.process_id = process_organizers.process_id)"
    )
    with op.batch_alter_table("organizers") as batch:
        batch.drop_constraint("uq_organizers_token_hash", type_="unique")
        batch.drop_column("token_hash")


def downgrade() -> None:
    with op.batch_alter_table("organizers") as batch:
        batch.add_column(sa.Column("token_hash", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    kept: dict[int, str] = dict(
        conn.execute(
            sa.text(
                "SELECT t.organizer_id, t.token_hash FROM api_tokens t "
                "WHERE t.process_id IS NULL AND NOT t.read_only AND t.revoked_at IS NULL "
                "AND t.id = (SELECT min(u.id) FROM api_tokens u "
                "  WHERE u.organizer_id = t.organizer_id AND u.process_id IS NULL "
                "  AND NOT u.read_only AND u.revoked_at IS NULL)"
            )
        ).all()
    )
    for (organizer_id,) in conn.execute(sa.text("SELECT id FROM organizers")).all():
        # No token to keep: a hash no secret has (nobody knows the random input).
        unusable = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        conn.execute(
            sa.text("UPDATE organizers SET token_hash = :h WHERE id = :id"),
            {"h": kept.get(organizer_id, unusable), "id": organizer_id},
        )
    op.execute("DELETE FROM process_organizers WHERE role = 'viewer'")
    with op.batch_alter_table("organizers") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_organizers_token_hash", ["token_hash"])
    op.drop_index(op.f("ix_process_organizers_organizer_id"), table_name="process_organizers")
    op.drop_index(op.f("ix_api_tokens_process_id"), table_name="api_tokens")
    op.drop_index(op.f("ix_api_tokens_organizer_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
