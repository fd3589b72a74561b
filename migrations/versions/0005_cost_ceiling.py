"""cost ceiling: jobs.max_cost_usd, and jobs.held_usd (the worst case of its calls in flight);
an index on jobs.created_at (which keys were active lately: the fair-share headroom)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('max_cost_usd', sa.Float(), nullable=True))
    op.add_column('jobs', sa.Column('held_usd', sa.Float(), nullable=False, server_default='0'))
    op.create_index('ix_jobs_created_at', 'jobs', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_jobs_created_at', 'jobs')
    # Not batch mode (see 0003): SQLite drops these columns itself.
    for col in ('held_usd', 'max_cost_usd'):
        op.execute(f'ALTER TABLE jobs DROP COLUMN {col}')
