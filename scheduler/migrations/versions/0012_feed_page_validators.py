"""feeds: the validators of every page, so that a paged feed can answer 304 too

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 03:30:00

Until now only a one-page feed kept its ETag and Last-Modified: a paged feed was read in
full on every run. ``next_pages`` keeps [url, etag, last_modified] for each page after the
first; when the first page and each of those answer 304, nothing changed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feeds", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("next_pages", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("feeds", schema=None) as batch_op:
        batch_op.drop_column("next_pages")
