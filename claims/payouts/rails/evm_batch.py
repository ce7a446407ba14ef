"""What the EVM rail and the payout layer exchange, without web3: the rail's errors, a signed
transaction, a receipt and its token ``Transfer`` events, the check of expected transfers
against a receipt (:func:`match_transfers`), and paying a batch with bisection
(:func:`pay_with_bisect`): a reverted batch is split in halves until each bad recipient fails
alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

class RailError(Exception):
    """Base of the EVM rail's errors."""


class RailConfigError(RailError):
    """Settings that cannot make a rail (e.g. a JSON-RPC node without a token address)."""


class BroadcastError(RailError):
    """The node refused the transaction and it is not known on chain."""


class NonceConsumed(BroadcastError):
    """The transaction's nonce was used by another transaction: it can never be mined."""


class WouldRevert(RailError):
    """Estimating or simulating the transaction showed that it would revert."""


class ChainMismatch(RailError):
    """The rail is connected to another chain than the one on record."""


class InProcessOnly(RailError):
    """An operation that only the in-process test chain allows (mint, blacklist, deploy)."""


@dataclass(frozen=True)
class SignedTx:
    """A signed, not yet broadcast transaction: commit it before broadcasting."""

    raw_hex: str
    tx_hash: str
    nonce: int
    gas_limit: int = 0
    max_fee_per_gas: int = 0
    payouts: int = 1  # how many transfers it carries


@dataclass(frozen=True)
class TokenTransfer:
    """One ERC-20 ``Transfer`` event."""

    token: str
    sender: str
    to: str
    value: int
    log_index: int


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    status: int  # 1 success, 0 reverted
    block_number: int
    gas_used: int
    effective_gas_price: int
    transfers: tuple[TokenTransfer, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == 1

    @property
    def fee_wei(self) -> int:
        return self.gas_used * self.effective_gas_price

    def per_payout(self, n: int | None = None) -> list[tuple[int, int]]:
        """``(gas, fee_wei)`` of each of ``n`` payouts (default: one per Transfer event); the
        shares add up exactly to the transaction's gas and fee."""
        n = len(self.transfers) if n is None else n
        if n <= 0:
            return []
        return list(zip(split_evenly(self.gas_used, n), split_evenly(self.fee_wei, n), strict=True))


@dataclass(frozen=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str

    def __iter__(self):  # allows ``chain_id, genesis = rail.chain_identity()``
        return iter((self.chain_id, self.genesis_hash))


@dataclass(frozen=True)
class Simulation:
    ok: bool
    reason: str = ""
    failed_index: int | None = None  # Disperse's TransferFailed(index), when it says so


def split_evenly(total: int, n: int) -> list[int]:
    """``total`` in ``n`` integer shares that differ by at most 1 and add up to ``total``."""
    q, r = divmod(total, n)
    return [q + 1 if i < r else q for i in range(n)]


def match_transfers(
    receipt: Receipt, wallet: str, expected: Sequence[tuple[str, int]], tx_hash: str | None = None
) -> list[tuple[bool, str]]:
    """Each expected ``(recipient, amount)`` against the receipt's token ``Transfer`` events
    from ``wallet``: ``[(ok, reason), ...]`` in the same order. An event matches at most one
    expectation (two payouts to one address need two events). The one rule for a payout
    carried by a mined transaction: when it is marked, and when it is reconciled."""
    wallet = wallet.lower()
    unmatched = Counter((t.to, t.value) for t in receipt.transfers if t.sender == wallet)
    sent: dict[str, list[int]] = {}
    for t in receipt.transfers:
        if t.sender == wallet:
            sent.setdefault(t.to, []).append(t.value)
    others = {t.to for t in receipt.transfers if t.sender != wallet}
    results = []
    for to, amount in expected:
        key = (to.lower(), amount)
        if unmatched[key] > 0:
            unmatched[key] -= 1
            results.append((True, "ok"))
        elif key[0] in sent:
            chain = ", ".join(str(v) for v in sent[key[0]])
            results.append((False, f"amount differs: the chain sent {chain} micro-USDT to {to}, "
                                   f"{amount} recorded"))
        elif key[0] in others:
            results.append((False, f"the transfer to {to} is not from the payout wallet"))
        else:
            results.append((False, f"no transfer of the token to {to} in "
                                   f"{tx_hash or receipt.tx_hash}"))
    return results


# --------------------------------------------------------------------------------------------
# Bisection: a reverted batch is split in halves until each bad recipient fails alone.
# --------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass
class BatchOutcome(Generic[T]):
    """What happened to a chunk of items.

    ``kind``: ``paid`` (its transaction succeeded), ``failed`` (a single item whose transaction
    reverted, or that the prediction refused — then ``signed`` is None: nothing was sent), or
    ``split`` (its transaction reverted; its halves were tried again as new attempts)."""

    kind: str
    items: list[T]
    signed: SignedTx | None = None
    receipt: Receipt | None = None
    reason: str = ""


def pay_with_bisect(
    items: Sequence[T],
    *,
    sign_and_store: Callable[[list[T]], SignedTx],
    broadcast_and_wait: Callable[[SignedTx], Receipt],
    predict: Callable[[list[T]], str | None] | None = None,
) -> list[BatchOutcome[T]]:
    """Pay ``items`` in one transaction; when it reverts, pay each half the same way.

    - ``sign_and_store(chunk)`` signs one transaction for the chunk and records it durably
      before returning (the payout layer commits raw tx, hash and nonce here);
    - ``broadcast_and_wait(signed)`` broadcasts it and returns its receipt (and records it);
    - ``predict(chunk)`` (optional, e.g. an ``eth_call`` through ``EvmRail.simulate_batch``)
      returns None when the chunk should succeed, else why not: a chunk predicted to fail is
      split without spending gas, and a single item predicted to fail is reported ``failed``
      without a transaction. ``sign_and_store`` raising ``WouldRevert`` (a JSON-RPC node's gas
      estimate reverted) counts the same; nothing was signed then.

    Returns the outcomes in order of decision; every item ends in exactly one ``paid`` or
    ``failed`` outcome. Exceptions from the callbacks propagate (the caller resumes later).
    """
    outcomes: list[BatchOutcome[T]] = []
    stack: list[list[T]] = [list(items)] if items else []
    while stack:
        chunk = stack.pop()
        if predict is not None:
            why = predict(chunk)
            if why is not None:
                if len(chunk) == 1:
                    outcomes.append(BatchOutcome("failed", chunk, reason=why))
                else:
                    mid = len(chunk) // 2
                    stack.extend((chunk[mid:], chunk[:mid]))  # first half runs first
                continue
        try:
            signed = sign_and_store(chunk)
        except WouldRevert as exc:  # a node's gas estimate is a prediction too
            if len(chunk) == 1:
                outcomes.append(BatchOutcome("failed", chunk, reason=str(exc)))
            else:
                mid = len(chunk) // 2
                stack.extend((chunk[mid:], chunk[:mid]))
            continue
        receipt = broadcast_and_wait(signed)
        if receipt.ok:
            outcomes.append(BatchOutcome("paid", chunk, signed, receipt))
        elif len(chunk) == 1:
            outcomes.append(BatchOutcome("failed", chunk, signed, receipt, "transaction reverted"))
        else:
            outcomes.append(
                BatchOutcome("split", chunk, signed, receipt, "batch reverted; split in halves")
            )
            mid = len(chunk) // 2
            stack.extend((chunk[mid:], chunk[:mid]))
    return outcomes
