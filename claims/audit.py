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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlmodel import Session

from claims.db.bulk import bind_value, bulk_insert, for_update
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


def json_default(value: Any) -> Any:
    """What the encoder cannot write itself: dates as ISO text, sets as lists, enums and
    anything else as their value or text (so what is hashed is what is stored)."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


# The chain's one JSON form: sorted keys, no spaces, UTF-8. ``canonical_text`` is it as a
# str; the stored ``before``/``after`` are that text, so what is hashed is exactly what is
# stored (any JSON reader gets the same values back).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              default=json_default)
canonical_text = _CANONICAL.encode
json_str = json.encoder.encode_basestring  # a str as JSON, as ``canonical_text`` writes it


def canonical(event: dict) -> bytes:
    return canonical_text(event).encode()


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
    head = session.execute(
        for_update(select(AuditHead).where(AuditHead.id == 1), session)).scalar_one_or_none()
    if head is None:
        raise RuntimeError("audit_head row missing: run the migrations (claims.db.ensure_schema)")
    return head


class Event(NamedTuple):
    """One audit event to append: who, what, about which subject, and the subject's
    values before and after (JSON-native values, dates, enums; ``None`` for none).
    ``claim_pk``: the id of the claim an event of subject ``claim`` is about, when the
    caller has it (else it is looked up by reference)."""

    actor: Actor
    action: str
    subject_type: str
    subject_id: object
    before: Any = None
    after: Any = None
    claim_pk: int | None = None


def record(
    session: Session,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: object,
    *,
    before: Any = None,
    after: Any = None,
    claim_pk: int | None = None,
) -> int:
    """Append one event in the caller's transaction; returns its id."""
    return record_batch(
        session, [Event(actor, action, subject_type, subject_id, before, after, claim_pk)])[0]


def record_batch(session: Session, events: Iterable[Event | tuple]) -> range:
    """Append ``events`` (:class:`Event`, or tuples in its field order) in order, with one
    head lock, one insert and one head update for the lot; returns the new ids. The
    single-event form is :func:`record`."""
    rows, pks, any_pk = [], [], False
    for ev in events:
        actor, action, subject_type, subject_id, before, after, *pk = ev
        rows.append((actor.name, actor.role, action, subject_type, str(subject_id),
                     canonical_text(before), canonical_text(after)))
        pk = pk[0] if pk else None
        any_pk = any_pk or pk is not None
        pks.append(pk)
    return _append(session, rows, pks if any_pk else None)


def _append(session: Session, rows: list[tuple[str, str, str, str, str, str, str]],
            claim_pks: Sequence[int | None] | None = None) -> range:
    """Append events given as ``(actor name, actor role, action, subject_type, subject_id,
    before_text, after_text)`` rows (the texts as :func:`canonical_text` gives them)."""
    if not rows:
        return range(0)
    head = _lock_head(session)
    mac_key = _mac_key(get_settings().secret_key)
    now = utcnow()
    at = json_str(now.astimezone(dt.UTC).isoformat())
    at_db = bind_value(session, AuditEvent.__table__.c.occurred_at, now)
    prev = head.last_hash
    first = next_id = head.last_id + 1
    digest = hmac.digest
    out = []
    # The canonical JSON of _fields(...), keys in sorted order, assembled from its parts (the
    # parts that repeat are encoded once): byte for byte what canonical() gives.
    parts: dict[tuple, tuple[str, str, str]] = {}
    for actor, role, action, subject_type, subject_id, before, after in rows:
        p = parts.get((actor, role, action, subject_type))
        if p is None:
            p = parts[(actor, role, action, subject_type)] = (
                f'{{"action":{json_str(action)},"actor":{json_str(actor)},"after":',
                f',"occurred_at":{at},"role":{json_str(role)},"subject_id":',
                f',"subject_type":{json_str(subject_type)}}}',
            )
        body = (f'{p[0]}{after},"before":{before},"id":{next_id}{p[1]}'
                f'{json_str(subject_id)}{p[2]}')
        h = digest(mac_key, (prev + body).encode(), "sha256").hex()
        out.append((next_id, at_db, actor, role, action, subject_type, subject_id, before, after,
                    prev, h, None))
        prev = h
        next_id += 1
    missing = {r[4] for r, pk in zip(rows, claim_pks or [None] * len(rows))
               if r[3] == "claim" and pk is None}
    found = _claim_pks(session, missing)
    if claim_pks is not None or found:
        pks = claim_pks or [None] * len(rows)
        out = [o if o[5] != "claim" else (*o[:-1], pk if pk is not None else found.get(o[6]))
               for o, pk in zip(out, pks)]
    bulk_insert(session, AuditEvent.__table__, _EVENT_COLUMNS, out)
    session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(last_id=next_id - 1, last_hash=prev, count=AuditHead.count + len(out))
    )
    # Keep the ORM's copy of the head in step (it may be read again in this transaction).
    session.expire(head)
    return range(first, next_id)


_EVENT_COLUMNS = ("id", "occurred_at", "actor", "role", "action", "subject_type", "subject_id",
                  "before", "after", "prev_hash", "hash", "claim_pk")
_CLAIM_PKS = None


def _claim_pks(session: Session, references: set[str]) -> dict[str, int]:
    """The ids of the claims ``references`` name (an event's ``claim_pk``: see the model)."""
    global _CLAIM_PKS
    if not references:
        return {}
    if _CLAIM_PKS is None:
        from sqlalchemy import bindparam

        from claims.models import Claim

        _CLAIM_PKS = select(Claim.reference, Claim.id).where(
            Claim.reference.in_(bindparam("refs", expanding=True)))
    refs = list(references)
    out: dict[str, int] = {}
    for i in range(0, len(refs), 1000):
        out.update(session.execute(_CLAIM_PKS, {"refs": refs[i:i + 1000]}).all())
    return out


def page(session: Session, *, action: str | None = None, limit: int,
         offset: int = 0) -> tuple[list[AuditEvent], int]:
    """A page of the trail, newest first (only ``action`` when given), and how many events
    there are in all (the console's audit page)."""
    from sqlalchemy import func

    cond = [AuditEvent.action == action] if action else []
    total = session.execute(
        select(func.count()).select_from(AuditEvent).where(*cond)).scalar_one()
    events = session.execute(
        select(AuditEvent).where(*cond).order_by(AuditEvent.id.desc())
        .limit(limit).offset(offset)
    ).scalars().all()
    return list(events), total


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
