"""Narrowband twins: a wideband sample's vector through a simulated telephone line, and each
speaker's narrowband centroid (calls are scored against them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch_op:
        batch_op.add_column(sa.Column("narrow_vector", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("speakers") as batch_op:
        batch_op.add_column(sa.Column("narrow_centroid", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("speakers") as batch_op:
        batch_op.drop_column("narrow_centroid")
    with op.batch_alter_table("samples") as batch_op:
        batch_op.drop_column("narrow_vector")
