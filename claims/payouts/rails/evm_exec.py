"""The database-backed EVM executor: pays a round's pending EVM payouts exactly once.

:class:`EvmExecutor` drives :mod:`claims.payouts.rails.evm` for one round and records every step
before taking the next one, so a crash anywhere leaves a state that :meth:`EvmExecutor.resume`
finishes without paying anyone twice:

1. **select** — one transaction takes up to ``batch_size`` pending EVM payouts of the round
   (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two workers never take the same
   payouts; SQLite's write transaction is exclusive anyway), re-reads each claim and holds the
   payouts whose claim is not payable now (:func:`claims.payouts.records.classify`);
2. **sign + commit** — in that same transaction (and under a per-wallet advisory lock on
   PostgreSQL, so nonces are handed out one at a time): ``nonce = rail.next_nonce(at_least=
   highest nonce on record for this wallet and chain + 1)``, one Disperse batch (or one
   ``transfer`` for a single payout) is signed, and the :class:`~claims.models.ChainTx` (raw
   transaction, hash, nonce, chain id and genesis hash) is committed together with the
   payouts → ``signed`` (address, chain identity, attempt row) *before* anything is sent;
3. **broadcast** — the same raw transaction (idempotent), then payouts → ``broadcast``;
4. **receipt** — the payouts and the transaction are marked in one transaction: a mined
   transaction confirms each payout whose ``Transfer`` event (recipient, amount, from the
   payout wallet, of the token) is in the receipt (``tx_id``, gas and fee per payout,
   ``paid`` notice); a reverted batch is split in halves (``pay_with_bisect``; halves that
   were part of a reverted batch are first simulated with ``eth_call``) until each bad
   recipient fails alone (``failed`` with the reason, ``failed`` notice) and every other is
   paid.

Resume (:meth:`resume`, run first by every execution): every transaction of the round still
``signed``/``broadcast`` is checked against the recorded chain identity (another chain →
``ChainMismatch``: the caller stops the round; nothing is paid again), then, in nonce order:
mined → marked from its receipt; pending → waited for; unknown → re-broadcast as the *same*
raw transaction, or, when a mined transaction of the wallet took its nonce
(``rail.is_expired``), proven expired: its payouts go back to ``pending`` as a new attempt
(the old attempt is closed as ``expired``), never re-signed as a second transaction for the
same attempt. Payouts left in a reverted batch continue their bisection.

Crash-injection points (``on_step(name, info)``): ``after_sign`` (signed and committed, not
sent), ``after_broadcast`` (sent, not recorded), ``after_broadcast_recorded``,
``after_receipt`` (receipt read, nothing marked), ``before_mark`` (inside the marking
transaction, before its commit: raising rolls the marks back).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.db import for_update, session_scope
from claims.errors import PayoutError
from claims.models import ChainTx, DistributionRound, Payout, PayoutState, RoundStatus, utcnow
from claims import db
from claims.payouts.common import BATCH_SIZE, IN_FLIGHT, RAIL_EVM
from claims.payouts.rails.evm_batch import (
    BroadcastError,
    NonceConsumed,
    Receipt,
    SignedTx,
    match_transfers,
    pay_with_bisect,
)
from claims.payouts.reconciliation import record_mismatch
from claims.payouts.records import (
    Candidate,
    classify,
    close_attempts,
    hold_many,
    notify_outcomes,
    open_attempts,
)

P = PayoutState
STEPS = ("after_sign", "after_broadcast", "after_broadcast_recorded", "after_receipt",
         "before_mark")


class _Expired(Exception):
    """A transaction just signed can never be mined (its nonce went elsewhere)."""


def _lock_key(chain_id: int, sender: str) -> int:
    digest = hashlib.sha256(f"evm-wallet:{chain_id}:{sender.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class EvmExecutor:
    """Pays one round's EVM payouts through ``rail`` (see the module docstring)."""

    def __init__(self, engine: Engine, round_id: int, rail: Any, *, batch_size: int = BATCH_SIZE,
                 on_step: Callable[[str, dict], None] | None = None,
                 actor: Actor | None = None) -> None:
        self.engine = engine
        self.round_id = round_id
        self.rail = rail
        self.batch_size = max(1, int(batch_size))
        self.on_step = on_step
        self.actor = actor or Actor.system("payouts")
        ident = rail.chain_identity()
        self.chain_id, self.genesis = ident.chain_id, ident.genesis_hash
        self.sender = rail.address
        self.lock_key = _lock_key(self.chain_id, self.sender)
        self._open: Session | None = None  # the selection's transaction signs the first chunk
        self._signed: dict[str, tuple[int, list[Candidate]]] = {}
        self._counts: dict[str, int] = {}

    # ------------------------------------------------------------------ small helpers

    def _step(self, name: str, **info: Any) -> None:
        if self.on_step is not None:
            self.on_step(name, info)

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def _advisory_lock(self, session: Session) -> None:
        """Nonces of this wallet are handed out one transaction at a time."""
        db.advisory_xact_lock(session, self.lock_key)

    def _wallet_txs(self):
        return (ChainTx.chain_id == self.chain_id, ChainTx.genesis_hash == self.genesis,
                ChainTx.sender == self.sender)

    def _next_nonce(self, session: Session) -> int:
        top = session.execute(select(func.max(ChainTx.nonce)).where(*self._wallet_txs())).scalar()
        return self.rail.next_nonce(at_least=0 if top is None else int(top) + 1)

    def pending_totals(self) -> tuple[int, int]:
        """(count, amount) of the round's pending EVM payouts."""
        with session_scope(self.engine, write=False) as s:
            n, total = s.execute(
                select(func.count(), func.coalesce(func.sum(Payout.amount), 0)).where(
                    Payout.round_id == self.round_id, Payout.rail == RAIL_EVM,
                    Payout.state == P.pending.value)
            ).one()
        return int(n), int(total)

    # ------------------------------------------------------------------ one batch

    def pay_batch(self) -> dict[str, int] | None:
        """Select, sign, send and settle one batch (bisecting a reverted one). None when no
        pending EVM payout is left or the round is not ``released``."""
        self._counts = {}
        session = Session(self.engine, expire_on_commit=False)
        self._open = session
        try:
            self._advisory_lock(session)
            status = session.execute(
                select(DistributionRound.status).where(DistributionRound.id == self.round_id)
            ).scalar_one()
            if status != RoundStatus.released.value:
                session.commit()
                return None
            stmt = (
                select(Payout.id, Payout.claim_id, Payout.amount, Payout.attempt, Payout.network)
                .where(Payout.round_id == self.round_id, Payout.rail == RAIL_EVM,
                       Payout.state == P.pending.value)
                .order_by(Payout.id).limit(self.batch_size)
            )
            rows = session.execute(for_update(stmt, session, skip_locked=True)).all()
            if not rows:
                session.commit()
                return None
            items, hold = classify(session, [tuple(r) for r in rows])
            held = hold_many(session, hold, actor=self.actor)
            self._count("held", held)
            if not items:
                session.commit()
                return self._finish_counts()
            try:
                self._run_bisect(items)
            except _Expired:
                self.resume()  # the expired payouts are pending again; finish any split
        finally:
            if self._open is not None:
                self._open.rollback()
                self._open.close()
                self._open = None
            session.close()
        return self._finish_counts()

    def _finish_counts(self) -> dict[str, int]:
        c = self._counts
        out = {k: c.get(k, 0) for k in ("confirmed", "failed", "held", "expired",
                                         "transactions")}
        out["batches"] = 1
        out["done"] = out["confirmed"] + out["failed"] + out["held"]
        return out

    def _run_bisect(self, items: list[Candidate]) -> None:
        outcomes = pay_with_bisect(
            items, sign_and_store=self._sign, broadcast_and_wait=self._broadcast_and_wait,
            predict=self._predict,
        )
        unsent = [(o.items[0], o.reason) for o in outcomes
                  if o.kind == "failed" and o.signed is None]
        if unsent:
            self._fail_unsent(unsent)

    # ------------------------------------------------------------------ callbacks

    def _predict(self, chunk: list[Candidate]) -> str | None:
        """Chunks of a batch that reverted are simulated first (no gas spent on a doomed
        half); a fresh batch is not (it is expected to succeed)."""
        if all(c.chain_tx_id is None for c in chunk):
            return None
        if len(chunk) == 1:
            sim = self.rail.simulate_transfer(chunk[0].address, chunk[0].amount)
        else:
            sim = self.rail.simulate_batch([c.address for c in chunk], [c.amount for c in chunk])
        return None if sim.ok else sim.reason

    def _sign(self, chunk: list[Candidate]) -> SignedTx:
        """Sign one transaction for the chunk and commit it with its payouts → ``signed``
        before anything is sent (the selection's transaction signs the first chunk)."""
        session, self._open = self._open, None
        fresh_session = session is None
        if session is None:
            session = Session(self.engine, expire_on_commit=False)
        signed = None
        try:
            if fresh_session:
                self._advisory_lock(session)
            nonce = self._next_nonce(session)
            # classify() checked each EIP-55 checksum already: lower case spares the rail
            # a second keccak per recipient (the same 20 bytes are paid either way).
            if len(chunk) == 1:
                signed = self.rail.sign_transfer(chunk[0].address.lower(), chunk[0].amount, nonce)
            else:
                signed = self.rail.sign_batch([c.address.lower() for c in chunk],
                                              [c.amount for c in chunk], nonce)
            ctx_id, attempts = self._record_signed(session, chunk, signed)
            session.commit()
        except BaseException:
            session.rollback()
            if signed is not None:
                self.rail.reset_nonce()  # signed but not recorded: never sent, nonce unused
            raise
        finally:
            session.close()
        for c in chunk:
            c.attempt = attempts[c.payout_id]
            c.chain_tx_id = ctx_id
        self._signed[signed.tx_hash] = (ctx_id, list(chunk))
        self._count("transactions")
        self._step("after_sign", chain_tx=ctx_id, tx_hash=signed.tx_hash, nonce=signed.nonce,
                   payouts=len(chunk))
        return signed

    def _record_signed(self, session: Session, chunk: list[Candidate],
                       signed: SignedTx) -> tuple[int, dict[int, int]]:
        """The :class:`~claims.models.ChainTx`, its payouts → ``signed`` (a split half as a
        new attempt), their attempt rows and the audit event, in the caller's transaction.
        Returns the transaction's id and each payout's attempt."""
        now = utcnow()
        ctx = ChainTx(round_id=self.round_id, chain_id=self.chain_id,
                      genesis_hash=self.genesis, sender=self.sender, nonce=signed.nonce,
                      tx_hash=signed.tx_hash, raw_tx=signed.raw_hex,
                      kind="transfer" if len(chunk) == 1 else "batch", state="signed",
                      created_at=now, updated_at=now)
        session.add(ctx)
        session.flush()
        table = Payout.__table__
        values = dict(state=P.signed.value, address=bindparam("b_addr"),
                      chain_tx_id=ctx.id, chain_id=self.chain_id,
                      genesis_hash=self.genesis, attempt=bindparam("b_attempt"),
                      updated_at=now)
        fresh = [c for c in chunk if c.chain_tx_id is None]
        split = [c for c in chunk if c.chain_tx_id is not None]
        moved = 0
        if fresh:
            moved += session.connection().execute(
                update(table).where(table.c.id == bindparam("b_id"),
                                    table.c.state == P.pending.value,
                                    table.c.attempt == bindparam("b_old"))
                .values(**values),
                [{"b_id": c.payout_id, "b_addr": c.address, "b_attempt": c.attempt,
                  "b_old": c.attempt} for c in fresh],
            ).rowcount
        if split:
            moved += session.connection().execute(
                update(table).where(table.c.id == bindparam("b_id"),
                                    table.c.state == P.broadcast.value,
                                    table.c.chain_tx_id == bindparam("b_prev"))
                .values(**values),
                [{"b_id": c.payout_id, "b_addr": c.address, "b_attempt": c.attempt + 1,
                  "b_prev": c.chain_tx_id} for c in split],
            ).rowcount
        if moved != len(chunk):
            raise PayoutError(f"{len(chunk) - moved} payout(s) of round {self.round_id} "
                              "changed while being signed; nothing was sent")
        attempts = {c.payout_id: c.attempt + (1 if c.chain_tx_id is not None else 0)
                    for c in chunk}
        open_attempts(session, [(c.payout_id, attempts[c.payout_id], ctx.id, c.address)
                                for c in chunk])
        audit.record(session, self.actor, "payouts.signed", "chain_tx", ctx.id, after={
            "round": self.round_id, "tx_hash": signed.tx_hash, "nonce": signed.nonce,
            "chain_id": self.chain_id, "payouts": [c.payout_id for c in chunk],
            "amount": sum(c.amount for c in chunk)})
        return ctx.id, attempts

    def _broadcast_and_wait(self, signed: SignedTx) -> Receipt:
        ctx_id, chunk = self._signed[signed.tx_hash]
        try:
            self._send(signed.raw_hex, signed.nonce)
        except NonceConsumed as exc:
            self._expire(ctx_id, str(exc))
            raise _Expired(str(exc)) from exc
        self._step("after_broadcast", chain_tx=ctx_id, tx_hash=signed.tx_hash)
        self._record_broadcast(ctx_id)
        self._step("after_broadcast_recorded", chain_tx=ctx_id, tx_hash=signed.tx_hash)
        receipt = self.rail.receipt(signed.tx_hash)
        assert receipt is not None
        self._step("after_receipt", chain_tx=ctx_id, tx_hash=signed.tx_hash, ok=receipt.ok)
        self._mark(ctx_id, signed.tx_hash, receipt)
        return receipt

    # ------------------------------------------------------------------ steps

    def _send(self, raw_hex: str, nonce: int) -> None:
        """Broadcast; a refusal because a lower nonce of the wallet is signed but not yet sent
        (another worker, or a resumed run) sends those first — re-broadcasting is harmless."""
        last: BroadcastError | None = None
        for attempt in range(5):
            try:
                self.rail.broadcast(raw_hex)
                return
            except NonceConsumed:
                raise
            except BroadcastError as exc:
                last = exc
                with session_scope(self.engine, write=False) as s:
                    lower = s.execute(
                        select(ChainTx.raw_tx).where(*self._wallet_txs(), ChainTx.nonce < nonce,
                                                     ChainTx.state == "signed")
                        .order_by(ChainTx.nonce)
                    ).scalars().all()
                for raw in lower:
                    try:
                        self.rail.broadcast(raw)
                    except BroadcastError:
                        pass
                if not lower:
                    time.sleep(0.1 * (attempt + 1))
        assert last is not None
        raise last

    def _record_broadcast(self, ctx_id: int) -> None:
        with session_scope(self.engine) as s:
            now = utcnow()
            s.execute(update(ChainTx).where(ChainTx.id == ctx_id, ChainTx.state == "signed")
                      .values(state="broadcast", updated_at=now)
                      .execution_options(synchronize_session=False))
            s.execute(update(Payout).where(Payout.chain_tx_id == ctx_id,
                                           Payout.state == P.signed.value)
                      .values(state=P.broadcast.value, updated_at=now)
                      .execution_options(synchronize_session=False))

    def _linked(self, s: Session, ctx_id: int) -> list[tuple]:
        stmt = (select(Payout.id, Payout.claim_id, Payout.amount, Payout.attempt, Payout.address,
                       Payout.network, Payout.state)
                .where(Payout.chain_tx_id == ctx_id, Payout.state.in_(IN_FLIGHT))
                .order_by(Payout.id))
        return s.execute(for_update(stmt, s)).all()

    def _mark(self, ctx_id: int, tx_hash: str, receipt: Receipt) -> None:
        """Record a mined transaction's outcome for its payouts (one transaction)."""
        with session_scope(self.engine, write=False) as s:
            linked_preview = s.execute(
                select(Payout.id, Payout.address, Payout.amount)
                .where(Payout.chain_tx_id == ctx_id, Payout.state.in_(IN_FLIGHT))
                .order_by(Payout.id)
            ).all()
        n_linked = len(linked_preview)
        checks = {}
        if receipt.ok and linked_preview:
            results = match_transfers(receipt, self.sender,
                                      [(r[1], r[2]) for r in linked_preview])
            checks = {r[0]: res for r, res in zip(linked_preview, results, strict=True)}
        revert_reason = None
        if not receipt.ok and n_linked == 1:
            r = linked_preview[0]
            sim = self.rail.simulate_transfer(r[1], r[2])
            revert_reason = sim.reason if not sim.ok else None
        with session_scope(self.engine) as s:
            now = utcnow()
            rows = self._linked(s, ctx_id)
            s.execute(update(ChainTx).where(ChainTx.id == ctx_id).values(
                state="mined" if receipt.ok else "reverted", gas_used=receipt.gas_used,
                fee_wei=receipt.fee_wei, block_number=receipt.block_number, updated_at=now,
            ).execution_options(synchronize_session=False))
            # It was mined, so it was broadcast (a crash may have skipped the record).
            s.execute(update(Payout).where(Payout.chain_tx_id == ctx_id,
                                           Payout.state == P.signed.value)
                      .values(state=P.broadcast.value, updated_at=now)
                      .execution_options(synchronize_session=False))
            if receipt.ok:
                self._mark_mined(s, ctx_id, tx_hash, receipt, rows, checks, now)
            elif len(rows) == 1:
                pid, claim_id, amount, attempt = rows[0][:4]
                why = (f"the transaction {tx_hash} reverted"
                       + (f" ({revert_reason})" if revert_reason else ""))
                self._fail_rows(s, [(pid, claim_id, amount, attempt, why)], now,
                                from_state=P.broadcast.value, ctx_id=ctx_id)
            elif rows:
                close_attempts(s, [(r[0], r[3], "failed", f"batch {tx_hash} reverted; split")
                                   for r in rows])
                audit.record(s, self.actor, "payouts.batch_reverted", "chain_tx", ctx_id, after={
                    "round": self.round_id, "tx_hash": tx_hash,
                    "payouts": [r[0] for r in rows]})
            self._step("before_mark", chain_tx=ctx_id, tx_hash=tx_hash, ok=receipt.ok)

    def _mark_mined(self, s: Session, ctx_id: int, tx_hash: str, receipt: Receipt,
                    rows: Sequence[tuple], checks: dict, now) -> None:
        shares = receipt.per_payout(len(rows)) if rows else []
        good, bad = [], []
        for row, share in zip(rows, shares, strict=True):
            ok, why = checks.get(row[0], (False, "not checked against the receipt"))
            (good if ok else bad).append((row, share, why))
        if good:
            table = Payout.__table__
            s.connection().execute(
                update(table).where(table.c.id == bindparam("b_id"),
                                    table.c.chain_tx_id == ctx_id,
                                    table.c.state == P.broadcast.value)
                .values(state=P.confirmed.value, tx_id=tx_hash, gas_used=bindparam("b_gas"),
                        fee_wei=bindparam("b_fee"), confirmed_at=now, reconciled_at=now,
                        failure_reason=None, updated_at=now),
                [{"b_id": r[0], "b_gas": g, "b_fee": f} for r, (g, f), _ in good],
            )
            close_attempts(s, [(r[0], r[3], "confirmed", None) for r, _, _ in good])
            audit.record_batch(s, [
                (self.actor, "payout.confirmed", "payout", r[0], {"state": r[6]},
                 {"state": P.confirmed.value, "tx_id": tx_hash, "address": r[4],
                  "amount": r[2], "gas_used": g, "fee_wei": f})
                for r, (g, f), _ in good
            ])
            notify_outcomes(s, [(r[1], r[2], tx_hash, r[5], self.chain_id) for r, _, _ in good],
                            [])
            self._count("confirmed", len(good))
        for r, _, why in bad:
            # The transaction succeeded but does not carry this payout: stop, never guess.
            record_mismatch(s, self.round_id, payout_id=r[0], source="chain",
                            reason=f"payout {r[0]}: {why}",
                            detail={"tx_id": tx_hash, "address": r[4], "amount": r[2]},
                            actor=self.actor)

    def _fail_rows(self, s: Session, rows: Sequence[tuple[int, int, int, int, str]], now,
                   *, from_state: str, ctx_id: int | None) -> None:
        table = Payout.__table__
        cond = [table.c.id == bindparam("b_id"), table.c.state == from_state]
        if ctx_id is not None:
            cond.append(table.c.chain_tx_id == ctx_id)
        res = s.connection().execute(
            update(table).where(*cond).values(state=P.failed.value,
                                              failure_reason=bindparam("b_why"), updated_at=now),
            [{"b_id": pid, "b_why": why} for pid, _, _, _, why in rows],
        )
        if res.rowcount != len(rows):
            raise PayoutError("payouts changed while being marked failed; run again")
        close_attempts(s, [(pid, attempt, "failed", why) for pid, _, _, attempt, why in rows])
        audit.record_batch(s, [
            (self.actor, "payout.failed", "payout", pid, {"state": from_state},
             {"state": P.failed.value, "reason": why}) for pid, _, _, _, why in rows
        ])
        notify_outcomes(s, [], [(claim_id, amount) for _, claim_id, amount, _, _ in rows])
        self._count("failed", len(rows))

    def _fail_unsent(self, items: Sequence[tuple[Candidate, str]]) -> None:
        """Payouts refused before any transaction carried them on this attempt (their half
        of a reverted batch was simulated to fail, or a node's gas estimate reverted)."""
        with session_scope(self.engine) as s:
            now = utcnow()
            fresh = [(c.payout_id, c.claim_id, c.amount, c.attempt,
                      f"the transfer would revert: {why}") for c, why in items
                     if c.chain_tx_id is None]
            split = [(c, why) for c, why in items if c.chain_tx_id is not None]
            if fresh:
                self._fail_rows(s, fresh, now, from_state=P.pending.value, ctx_id=None)
            for c, why in split:
                self._fail_rows(s, [(c.payout_id, c.claim_id, c.amount, c.attempt,
                                     f"its batch reverted and the transfer alone would revert: "
                                     f"{why}")], now,
                                from_state=P.broadcast.value, ctx_id=c.chain_tx_id)

    def _expire(self, ctx_id: int, reason: str) -> int:
        """The transaction can never be mined: its payouts go back to ``pending`` as a new
        attempt (the old one closed ``expired``)."""
        with session_scope(self.engine) as s:
            now = utcnow()
            rows = self._linked(s, ctx_id)
            s.execute(update(ChainTx).where(ChainTx.id == ctx_id)
                      .values(state="expired", updated_at=now)
                      .execution_options(synchronize_session=False))
            if rows:
                table = Payout.__table__
                s.connection().execute(
                    update(table).where(table.c.id == bindparam("b_id"),
                                        table.c.chain_tx_id == ctx_id)
                    .values(state=P.pending.value, attempt=table.c.attempt + 1,
                            chain_tx_id=None, updated_at=now),
                    [{"b_id": r[0]} for r in rows],
                )
                close_attempts(s, [(r[0], r[3], "expired", reason[:500]) for r in rows])
                audit.record(s, self.actor, "payouts.expired", "chain_tx", ctx_id, after={
                    "round": self.round_id, "reason": reason, "payouts": [r[0] for r in rows]})
        self._count("expired", len(rows))
        return len(rows)

    # ------------------------------------------------------------------ resume

    def resume(self) -> dict[str, int]:
        """Finish every transaction of the round left signed or broadcast (see the module
        docstring); raises ``ChainMismatch`` when one was recorded on another chain."""
        outer, self._counts = self._counts, {}
        with session_scope(self.engine, write=False) as s:
            txs = s.execute(
                select(ChainTx.id, ChainTx.chain_id, ChainTx.genesis_hash, ChainTx.nonce,
                       ChainTx.tx_hash, ChainTx.raw_tx, ChainTx.state)
                .where(ChainTx.round_id == self.round_id,
                       ChainTx.state.in_(("signed", "broadcast", "reverted")))
                .order_by(ChainTx.chain_id, ChainTx.genesis_hash, ChainTx.nonce)
            ).all()
            linked: dict[int, list] = {}
            if txs:
                for row in s.execute(
                    select(Payout.chain_tx_id, Payout.id, Payout.claim_id, Payout.amount,
                           Payout.attempt, Payout.network, Payout.address)
                    .where(Payout.round_id == self.round_id,
                           Payout.chain_tx_id.in_([t[0] for t in txs]),
                           Payout.state.in_(IN_FLIGHT))
                    .order_by(Payout.id)
                ):
                    linked.setdefault(row[0], []).append(row)
        txs = [t for t in txs if linked.get(t[0])]
        for t in txs:  # first of all: the same chain, or nothing at all
            self.rail.assert_same_chain(t[1], t[2])
        for ctx_id, _, _, nonce, tx_hash, raw, state in txs:
            items = [Candidate(r[1], r[2], r[3], r[4], r[5], r[6] or "", ctx_id)
                     for r in linked[ctx_id]]
            self._signed[tx_hash] = (ctx_id, items)
            if state == "reverted":
                self._continue_split(items)
                continue
            status = self.rail.tx_status(tx_hash)
            if status == "unknown":
                signed = SignedTx(raw_hex=raw, tx_hash=tx_hash, nonce=nonce, payouts=len(items))
                if self.rail.is_expired(signed):
                    self._expire(ctx_id, f"nonce {nonce} was used by another transaction; "
                                         f"{tx_hash} can never be mined")
                    continue
                try:
                    self._send(raw, nonce)
                except NonceConsumed as exc:
                    self._expire(ctx_id, str(exc))
                    continue
                self._step("after_broadcast", chain_tx=ctx_id, tx_hash=tx_hash)
            if state == "signed":
                self._record_broadcast(ctx_id)
                self._step("after_broadcast_recorded", chain_tx=ctx_id, tx_hash=tx_hash)
            receipt = self.rail.receipt(tx_hash)
            assert receipt is not None
            self._step("after_receipt", chain_tx=ctx_id, tx_hash=tx_hash, ok=receipt.ok)
            self._mark(ctx_id, tx_hash, receipt)
            if not receipt.ok and len(items) > 1:
                self._continue_split(items)
        counts, self._counts = self._counts, outer
        for k, v in counts.items():
            self._counts[k] = self._counts.get(k, 0) + v
        counts.setdefault("done", counts.get("confirmed", 0) + counts.get("failed", 0))
        return counts

    def _continue_split(self, items: list[Candidate]) -> None:
        """Payouts of a reverted batch: pay each half the bisecting way."""
        if len(items) == 1:
            self._run_bisect(items)  # simulated first: a bad recipient fails without gas
            return
        mid = len(items) // 2
        for half in (items[:mid], items[mid:]):
            self._run_bisect(half)
