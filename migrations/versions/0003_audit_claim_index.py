"""audit events indexed by claim id; allocation's redundant round index dropped

A claim's events (its status page timeline) were found through an index on (subject_type,
subject_id), the claim's random reference: each new event went to a random leaf page, and every
commit of a bulk stage rewrote a page per claim event. They are now found by ``claim_pk`` (the
claim's id, derived when the event is written; not part of the hashed content), which rises
with the work. ``ix_allocation_round_id`` duplicated the unique (round_id, claim_id) index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:45:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('audit_event') as batch:
        batch.add_column(sa.Column('claim_pk', sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE audit_event SET claim_pk = (SELECT c.id FROM claim c "
        "WHERE c.reference = audit_event.subject_id) WHERE subject_type = 'claim'"
    )
    op.create_index('ix_audit_event_claim_pk', 'audit_event', ['claim_pk'], unique=False)
    op.drop_index('ix_audit_event_subject', table_name='audit_event')
    op.drop_index('ix_allocation_round_id', table_name='allocation')


def downgrade() -> None:
    op.create_index('ix_allocation_round_id', 'allocation', ['round_id'], unique=False)
    op.create_index('ix_audit_event_subject', 'audit_event', ['subject_type', 'subject_id'],
                    unique=False)
    op.drop_index('ix_audit_event_claim_pk', table_name='audit_event')
    with op.batch_alter_table('audit_event') as batch:
        batch.drop_column('claim_pk')
