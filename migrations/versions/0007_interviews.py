"""interviews: interviews and interview_turns; llm_calls rows for an interview's turns
(llm_calls.interview_id, llm_calls.job_id now nullable) and when each attempt began
(llm_calls.started_at, null for the rows before)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'interviews',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('idea', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.Column('evaluation', sa.JSON(), nullable=True),
        sa.Column('assumptions', sa.JSON(), nullable=True),
        sa.Column('job_id', sa.String(length=36), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_interviews_owner_created', 'interviews', ['owner', 'created_at'])
    op.create_index('ix_interviews_updated_at', 'interviews', ['updated_at'])
    op.create_table(
        'interview_turns',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('interview_id', sa.String(length=36), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False),
        sa.Column('answer', sa.Text(), nullable=True),
        sa.Column('question', sa.Text(), nullable=True),
        sa.Column('structured', sa.JSON(), nullable=True),
        sa.Column('structured_error', sa.Text(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('provider', sa.String(length=64), nullable=True),
        sa.Column('model', sa.String(length=128), nullable=True),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('finished_at', _TS, nullable=True),
        sa.Column('first_token_ms', sa.Integer(), nullable=True),
        sa.Column('usage', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['interview_id'], ['interviews.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('interview_id', 'n', name='uq_interview_turns_n'),
    )
    # Batch mode recreates llm_calls on SQLite (nothing references it, so nothing cascades).
    with op.batch_alter_table('llm_calls') as b:
        b.alter_column('job_id', existing_type=sa.String(length=36), nullable=True)
        b.add_column(sa.Column('interview_id', sa.String(length=36), nullable=True))
        b.add_column(sa.Column('started_at', _TS, nullable=True))
        b.create_foreign_key('fk_llm_calls_interview_id', 'interviews', ['interview_id'], ['id'],
                             ondelete='CASCADE')
        b.create_index('ix_llm_calls_interview_id', ['interview_id'])


def downgrade() -> None:
    op.execute('DELETE FROM llm_calls WHERE job_id IS NULL')
    with op.batch_alter_table('llm_calls') as b:
        b.drop_index('ix_llm_calls_interview_id')
        b.drop_constraint('fk_llm_calls_interview_id', type_='foreignkey')
        b.drop_column('started_at')
        b.drop_column('interview_id')
        b.alter_column('job_id', existing_type=sa.String(length=36), nullable=False)
    op.drop_table('interview_turns')
    op.drop_index('ix_interviews_updated_at', 'interviews')
    op.drop_index('ix_interviews_owner_created', 'interviews')
    op.drop_table('interviews')
