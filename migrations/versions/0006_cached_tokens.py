"""prompt caching: llm_calls.cached_input_tokens and llm_calls.cache_write_tokens (parts of
input_tokens, read from and written to the provider's prompt cache; 0 for the rows before)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 06:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_COLUMNS = ('cached_input_tokens', 'cache_write_tokens')


def upgrade() -> None:
    for col in _COLUMNS:
        op.add_column('llm_calls', sa.Column(col, sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    # Not batch mode (see 0003): SQLite drops these columns itself.
    for col in reversed(_COLUMNS):
        op.execute(f'ALTER TABLE llm_calls DROP COLUMN {col}')
