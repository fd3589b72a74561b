"""idempotency key

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 06:41:34.176247
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=128), nullable=True))
        batch_op.create_unique_constraint('uq_jobs_owner_idempotency_key', ['owner', 'idempotency_key'])



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_jobs_owner_idempotency_key', type_='unique')
        batch_op.drop_column('idempotency_key')

