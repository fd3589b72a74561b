"""stage runs: every stage (personas, synthesis, critique) is a claimed, leased row

persona_runs becomes stage_runs (persona -> stage) with a claim id and a lease; the synthesis
and the critique move from columns of jobs into rows of it; jobs get the recovery clock
(check_at, redrives).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:30:00
"""
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def _stage_runs(name: str, stage_col: str) -> None:
    lease: list[sa.Column[Any]] = [
        sa.Column('claim_id', sa.String(length=32), nullable=True),
        sa.Column('lease_until', _TS, nullable=True),
        sa.Column('not_before', _TS, nullable=True)] if name == 'stage_runs' else []
    op.create_table(name,
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column(stage_col, sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('output', sa.JSON(), nullable=True),
    sa.Column('provider', sa.String(length=64), nullable=True),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('claimed_at', _TS, nullable=True),
    *lease,
    sa.Column('started_at', _TS, nullable=True),
    sa.Column('finished_at', _TS, nullable=True),
    sa.Column('latency_ms', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', stage_col, name=f'uq_{name}_job_{stage_col}')
    )


_COMMON = "job_id, status, output, provider, model, attempts, error, claimed_at, started_at, " \
          "finished_at, latency_ms"


def upgrade() -> None:
    _stage_runs('stage_runs', 'stage')
    op.create_index('ix_stage_runs_lease', 'stage_runs', ['status', 'lease_until'])
    op.execute(f"INSERT INTO stage_runs (stage, {_COMMON}) SELECT persona, {_COMMON} FROM persona_runs")
    for stage in ('synthesis', 'critique'):
        # A stored output is a succeeded stage; a job that ended without one failed there.
        op.execute(
            f"INSERT INTO stage_runs (job_id, stage, status, output, provider, attempts, finished_at) "
            f"SELECT id, '{stage}', CASE WHEN {stage} IS NOT NULL THEN 'succeeded' "
            f"WHEN status IN ('succeeded', 'failed') THEN 'failed' ELSE 'pending' END, "
            f"{stage}, {stage}_provider, CASE WHEN {stage} IS NOT NULL THEN 1 ELSE 0 END, "
            f"CASE WHEN {stage} IS NOT NULL OR status IN ('succeeded', 'failed') "
            f"THEN finished_at END FROM jobs")
    op.drop_table('persona_runs')
    # Not batch mode: on SQLite it would recreate `jobs`, and dropping the old table would
    # cascade to the stage rows just written. SQLite (3.35+) adds and drops these columns itself.
    for col in ('synthesis', 'synthesis_provider', 'critique', 'critique_provider'):
        op.execute(f'ALTER TABLE jobs DROP COLUMN {col}')
    op.add_column('jobs', sa.Column('check_at', _TS, nullable=True))
    op.add_column('jobs', sa.Column('redrives', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_jobs_check_at', 'jobs', ['check_at'])


def downgrade() -> None:
    op.drop_index('ix_jobs_check_at', 'jobs')
    for col in ('redrives', 'check_at'):
        op.execute(f'ALTER TABLE jobs DROP COLUMN {col}')
    op.add_column('jobs', sa.Column('synthesis', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('synthesis_provider', sa.String(length=64), nullable=True))
    op.add_column('jobs', sa.Column('critique', sa.JSON(), nullable=True))
    op.add_column('jobs', sa.Column('critique_provider', sa.String(length=64), nullable=True))
    for stage in ('synthesis', 'critique'):
        op.execute(f"UPDATE jobs SET {stage} = (SELECT output FROM stage_runs r WHERE "
                   f"r.job_id = jobs.id AND r.stage = '{stage}'), {stage}_provider = (SELECT "
                   f"provider FROM stage_runs r WHERE r.job_id = jobs.id AND r.stage = '{stage}')")
    _stage_runs('persona_runs', 'persona')
    op.execute(f"INSERT INTO persona_runs (persona, {_COMMON}) SELECT stage, {_COMMON} FROM "
               "stage_runs WHERE stage NOT IN ('synthesis', 'critique')")
    op.drop_index('ix_stage_runs_lease', 'stage_runs')
    op.drop_table('stage_runs')
