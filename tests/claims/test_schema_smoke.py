from sqlalchemy import text

from claims import audit
from claims.audit import Actor
from claims.db import session_scope


def test_schema_at_head_and_audit_chain_appends(engine):
    with session_scope(engine) as s:
        audit.record(s, Actor.operator(), "test.event", "case", "x", after={"n": 1})
    with session_scope(engine) as s:
        assert s.execute(text("select count(*) from audit_event")).scalar() == 1
        assert audit.verify_chain(s).ok
