"""Seed an approved round straight through the models, for the payout tests and the bench.

``seed_round(engine, specs)`` makes a case, one approved claim per spec and an approved round
whose allocations are the specs' amounts. A spec is ``(network, amount_micro)`` or
``(network, amount_micro, address)``; addresses default to fresh valid ones (EIP-55 for
Ethereum, base58check for TRON). Inserts are bulk (the bench seeds whole rounds).

Importable from every test module (``tests/`` is on ``sys.path`` through its conftest).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
from dataclasses import dataclass, field

from sqlalchemy import insert, select

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_counter = itertools.count(1)
USDT = 1_000_000


def fresh_eth() -> str:
    from claims.validators import make_eth_address

    return make_eth_address(secrets.token_bytes(20))


def fresh_tron() -> str:
    from claims.validators import make_tron_address

    return make_tron_address(secrets.token_bytes(20))


def _reference() -> str:
    n = secrets.randbits(40)
    chars = "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(8))
    return f"KZR-{chars[:4]}-{chars[4:]}"


@dataclass
class SeededClaim:
    id: int
    reference: str
    network: str
    address: str
    amount: int


@dataclass
class SeededRound:
    round_id: int
    case_id: int
    claims: list[SeededClaim] = field(default_factory=list)

    @property
    def evm(self) -> list[SeededClaim]:
        return [c for c in self.claims if c.network == "ethereum"]

    @property
    def tron(self) -> list[SeededClaim]:
        return [c for c in self.claims if c.network == "tron"]

    def by_address(self) -> dict[str, SeededClaim]:
        return {c.address: c for c in self.claims}


def seed_round(engine, specs, *, case: str | None = None, status: str = "approved",
               extra_pool: int = 0, language: str = "en") -> SeededRound:
    from claims.db import session_scope
    from claims.models import Allocation, Case, Claim, DistributionRound, utcnow
    from claims.validators import normalize_address_key

    case = case or f"pay-{next(_counter)}-{secrets.token_hex(3)}"
    now = utcnow()
    rows = []
    for i, spec in enumerate(specs):
        network, amount = spec[0], spec[1]
        address = spec[2] if len(spec) > 2 else (fresh_eth() if network == "ethereum"
                                                else fresh_tron())
        rows.append((network, amount, address))
    with session_scope(engine) as s:
        c = Case(code=case, name=f"Case {case}", created_at=now)
        s.add(c)
        s.flush()
        case_id = c.id
        values = []
        for i, (network, amount, address) in enumerate(rows):
            values.append({
                "case_id": case_id, "reference": _reference(), "status": "approved",
                "full_name": f"Victim {i}", "name_key": f"victim {i}",
                "iin_hash": hashlib.sha256(f"{case}:{i}".encode()).hexdigest(),
                "iin_encrypted": b"-", "iin_masked": "00******0000",
                "birth_date": dt.date(1980, 1, 1), "email": f"v{i}@example.org",
                "email_key": f"v{i}@example.org", "phone": "+77011234567",
                "language": language, "claimed_amount": amount, "evidence_tx_hashes": [],
                "payout_network": network, "payout_address": address,
                "payout_address_key": normalize_address_key(network, address),
                "access_token_hash": "0" * 64, "consent_at": now, "source": "import",
                "recognized_loss": amount, "invested": amount, "withdrawn": 0, "version": 1,
                "created_at": now, "updated_at": now,
            })
        for i in range(0, len(values), 5000):
            s.execute(insert(Claim), values[i : i + 5000])
        ids = dict(s.execute(select(Claim.reference, Claim.id)
                             .where(Claim.case_id == case_id)).all())
        allocated = sum(r[1] for r in rows)
        rnd = DistributionRound(
            case_id=case_id, number=1, status=status, method="pro-rata",
            pool=allocated + extra_pool, min_payout=0, rate="1/1", allocated=allocated,
            reserved=0, released=0, undistributed=extra_pool, claims_count=len(rows),
            prepared_at=now, approved_at=now if status == "approved" else None,
        )
        s.add(rnd)
        s.flush()
        seeded = SeededRound(rnd.id, case_id)
        allocs = []
        for v, (network, amount, address) in zip(values, rows, strict=True):
            cid = ids[v["reference"]]
            seeded.claims.append(SeededClaim(cid, v["reference"], network, address, amount))
            allocs.append({"round_id": rnd.id, "claim_id": cid, "claim_version": 1,
                           "invested": amount, "withdrawn": 0, "net_loss": amount,
                           "paid_before": 0, "amount": amount, "reserved": 0, "released": 0})
        for i in range(0, len(allocs), 5000):
            s.execute(insert(Allocation), allocs[i : i + 5000])
    return seeded


def make_staff_actor(engine, role: str = "finance", name: str | None = None):
    """A staff row (for foreign keys such as ``resolved_by``) and its ``Actor``."""
    from claims.audit import Actor
    from claims.db import session_scope
    from claims.models import StaffUser, utcnow

    name = name or f"{role}-{next(_counter)}-{secrets.token_hex(2)}"
    with session_scope(engine) as s:
        u = StaffUser(username=name, role=role, password_hash="x", created_at=utcnow(),
                      password_changed_at=utcnow())
        s.add(u)
        s.flush()
        return Actor(name, role, u.id)
