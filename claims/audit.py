"""The tamper-evident audit trail (table ``audit_event``).

Each event carries ``hash = HMAC-SHA256(secret key, prev_hash || canonical JSON of the event)``
and the previous event's hash, so editing, deleting, inserting or reordering rows breaks the
chain, and rewriting it needs the key, not only database access. Writers lock the single
``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's IMMEDIATE transaction
already serializes writers), so concurrent writers never fork the chain. Ids are assigned
from the head, so the chain order is the id order.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session

from claims.models import AuditEvent, AuditHead, utcnow
from claims.settings import get_settings

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who did it: a staff member, a claimant, the operator at a terminal, or a rule."""

    name: str
    role: str
    staff_id: int | None = None

    @classmethod
    def system(cls, name: str = "system") -> "Actor":
        return cls(name, "system")

    @classmethod
    def operator(cls) -> "Actor":
        try:
            user = getpass.getuser()
        except Exception:  # pragma: no cover - no login name in some containers
            user = "unknown"
        return cls(f"operator:{user}", "operator")

    @classmethod
    def claimant(cls, reference: str) -> "Actor":
        return cls(f"claimant:{reference}", "claimant")


def jsonable(value: Any) -> Any:
    """Make ``value`` JSON-native (dates → ISO strings) so what is hashed is what is stored."""
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):  # pragma: no cover - nothing should pass floats
        raise TypeError("floats are not allowed in audit events")
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "value"):  # enums
        return jsonable(value.value)
    return str(value)


def canonical(event: dict) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _fields(
    id_: int, occurred_at: dt.datetime, actor: str, role: str, action: str,
    subject_type: str, subject_id: str, before: Any, after: Any,
) -> dict:
    return {
        "id": id_,
        "occurred_at": occurred_at.astimezone(dt.UTC).isoformat(),
        "actor": actor,
        "role": role,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "before": before,
        "after": after,
    }


@lru_cache(maxsize=4)
def _mac_key(key: str) -> bytes:
    return hmac.new(key.encode(), b"restitution/audit-chain", hashlib.sha256).digest()


def chain_hash(prev_hash: str, fields: dict, key: str | None = None) -> str:
    mac_key = _mac_key(key or get_settings().secret_key)
    return hmac.new(mac_key, prev_hash.encode() + canonical(fields), hashlib.sha256).hexdigest()


def _lock_head(session: Session) -> AuditHead:
    stmt = select(AuditHead).where(AuditHead.id == 1)
    if session.get_bind().dialect.name != "sqlite":
        stmt = stmt.with_for_update()
    head = session.execute(stmt).scalar_one_or_none()
    if head is None:
        raise RuntimeError("audit_head row missing: run the migrations (claims.db.ensure_schema)")
    return head


def record(
    session: Session,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: object,
    *,
    before: Any = None,
    after: Any = None,
) -> int:
    """Append one event in the caller's transaction; returns its id."""
    return record_many(
        session,
        actor,
        [(action, subject_type, subject_id, before, after)],
    )[0]


def record_many(
    session: Session,
    actor: Actor,
    events: Iterable[tuple[str, str, object, Any, Any]],
) -> list[int]:
    """Append many events (action, subject_type, subject_id, before, after) of one actor."""
    return record_each(session, [(actor, *e) for e in events])


def record_each(
    session: Session,
    events: Iterable[tuple[Actor, str, str, object, Any, Any]],
) -> list[int]:
    """Append events (actor, action, subject_type, subject_id, before, after) in order, with
    one head lock, one insert and one head update for the lot."""
    events = list(events)
    if not events:
        return []
    head = _lock_head(session)
    key = get_settings().secret_key
    now = utcnow()
    prev = head.last_hash
    next_id = head.last_id
    rows = []
    for actor, action, subject_type, subject_id, before, after in events:
        next_id += 1
        fields = _fields(
            next_id, now, actor.name, actor.role, action, subject_type, str(subject_id),
            jsonable(before), jsonable(after),
        )
        h = chain_hash(prev, fields, key)
        rows.append(
            {
                "id": next_id,
                "occurred_at": now,
                "actor": actor.name,
                "role": actor.role,
                "action": action,
                "subject_type": subject_type,
                "subject_id": str(subject_id),
                "before": fields["before"],
                "after": fields["after"],
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
    session.connection().execute(insert(AuditEvent.__table__), rows)
    session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(last_id=next_id, last_hash=prev, count=AuditHead.count + len(rows))
    )
    # Keep the ORM's copy of the head in step (it may be read again in this transaction).
    session.expire(head)
    return [r["id"] for r in rows]


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str | None = None


def _iter_events(session: Session, chunk: int = 5000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        batch = session.execute(
            select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(chunk)
        ).scalars().all()
        if not batch:
            return
        yield from batch
        last = batch[-1].id
        session.expunge_all()


def verify_chain(session: Session) -> VerifyResult:
    """Walk the chain; name the first broken event (edited, deleted, inserted, reordered)."""
    key = get_settings().secret_key
    prev = GENESIS
    expected_id = 0
    checked = 0
    for ev in _iter_events(session):
        expected_id += 1
        if ev.id != expected_id:
            if ev.id > expected_id:
                return VerifyResult(False, checked, expected_id,
                                    f"event {expected_id} is missing (deleted), next is {ev.id}")
            return VerifyResult(False, checked, ev.id, "event id out of sequence")
        if ev.prev_hash != prev:
            return VerifyResult(False, checked, ev.id,
                                "prev_hash does not match the previous event (inserted, deleted or reordered)")
        fields = _fields(ev.id, ev.occurred_at, ev.actor, ev.role, ev.action, ev.subject_type,
                         ev.subject_id, ev.before, ev.after)
        if not hmac.compare_digest(chain_hash(prev, fields, key), ev.hash):
            return VerifyResult(False, checked, ev.id, "hash does not match the event's content (edited)")
        prev = ev.hash
        checked += 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.last_id != expected_id or head.last_hash != prev):
        if head.last_id > expected_id:
            return VerifyResult(False, checked, expected_id + 1,
                                f"the chain ends at event {expected_id} but the head says {head.last_id} (events deleted at the end)")
        return VerifyResult(False, checked, head.last_id or None, "the chain head does not match the last event")
    return VerifyResult(True, checked)
