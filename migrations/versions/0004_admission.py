"""admission: jobs wait for a slot (fair share across keys) before anything is published

jobs.admitted_at (null: waiting for a slot) and jobs.lane ("first": the key's only job in flight
when it was admitted). Jobs already stored were all published: they count as admitted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 05:10:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('admitted_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('jobs', sa.Column('lane', sa.String(length=8), nullable=False,
                                    server_default='first'))
    op.execute('UPDATE jobs SET admitted_at = created_at')
    op.create_index('ix_jobs_admitted_at', 'jobs', ['admitted_at'])


def downgrade() -> None:
    op.drop_index('ix_jobs_admitted_at', 'jobs')
    # Not batch mode (see 0003): SQLite drops these columns itself.
    for col in ('lane', 'admitted_at'):
        op.execute(f'ALTER TABLE jobs DROP COLUMN {col}')
