"""The EVM rail's transfers: calldata, signing, simulating and broadcasting payouts.

:class:`EvmTransfers` extends :class:`~claims.payouts.rails.evm_receipts.EvmReceipts`. A payout
is a signed ``token.transfer(to, amount)`` or a Disperse batch ``disperseToken(token,
recipients, amounts)``; signing and broadcasting are separate steps so that the payout layer
records the signed transaction before anything is sent, and broadcasting the same transaction
again is harmless. The Disperse contract needs the wallet's allowance once
(:meth:`EvmTransfers.ensure_allowance`).
"""

from __future__ import annotations

from collections.abc import Sequence

from claims.payouts.rails.evm_abi import (
    MAX_UINT256,
    SEL_APPROVE,
    SEL_DISPERSE,
    SEL_TRANSFER,
    address_word,
    explain_revert,
    load_artifacts,
    raw_tx_nonce,
    revert_errors,
    to_hex,
    word,
)
from claims.payouts.rails.evm_batch import (
    BatchOutcome,
    BroadcastError,
    NonceConsumed,
    RailError,
    Receipt,
    SignedTx,
    Simulation,
    WouldRevert,
    pay_with_bisect,
)
from claims.payouts.rails.evm_receipts import EvmReceipts
from claims.payouts.rails.evm_wallet import GAS_APPROVE, GAS_ESTIMATE_MARGIN, GAS_TRANSFER

#: what nodes answer when sent a transaction they already hold
_KNOWN_TX_MARKERS = ("already known", "known transaction", "already imported", "alreadyknown")


class EvmTransfers(EvmReceipts):
    """Payouts from the wallet: signed, simulated, broadcast, and the contracts they need."""

    def _estimate(self, to: str | None, data: bytes) -> int:
        tx = {"from": self.address, "data": to_hex(data)}
        if to is not None:
            tx["to"] = to
        try:
            est = int(self.w3.eth.estimate_gas(tx))
        except revert_errors() as exc:
            raise WouldRevert(explain_revert(exc)[0]) from exc
        return est * GAS_ESTIMATE_MARGIN[0] // GAS_ESTIMATE_MARGIN[1]

    @staticmethod
    def _check_amount(amount: int) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError("amounts are integers of micro-USDT")
        if not 0 < amount < 2**255:
            raise ValueError("an amount must be a positive number of micro-USDT")
        return amount

    def transfer_data(self, to: str, amount_micro: int) -> bytes:
        """Calldata of ``transfer(to, amount)``."""
        return SEL_TRANSFER + address_word(to) + word(self._check_amount(amount_micro))

    def batch_data(self, recipients: Sequence[str], amounts: Sequence[int]) -> bytes:
        """Calldata of ``disperseToken(token, recipients, amounts)``."""
        n = len(recipients)
        if n == 0 or n != len(amounts):
            raise ValueError("a batch needs as many amounts as recipients, at least one")
        token = self.require_token()
        head = address_word(token) + word(0x60) + word(0x60 + 32 * (n + 1))
        addrs = b"".join(address_word(r) for r in recipients)
        values = b"".join(word(self._check_amount(a)) for a in amounts)
        return SEL_DISPERSE + head + word(n) + addrs + word(n) + values

    def sign_transfer(
        self, to: str, amount_micro: int, nonce: int | None = None, *, gas_limit: int | None = None
    ) -> SignedTx:
        """A signed ``token.transfer(to, amount)`` — signed only, not broadcast. Without a
        nonce it takes ``next_nonce()`` under the rail's lock."""
        with self.lock:
            token = self.require_token()
            data = self.transfer_data(to, amount_micro)
            if gas_limit is None:
                gas_limit = GAS_TRANSFER if self.in_process else self._estimate(token, data)
            return self.sign_tx(token, data, nonce, gas_limit, 1)

    def sign_batch(
        self,
        recipients: Sequence[str],
        amounts: Sequence[int],
        nonce: int | None = None,
        *,
        gas_limit: int | None = None,
    ) -> SignedTx:
        """A signed Disperse batch — signed only, not broadcast. Needs ``ensure_allowance()``.
        Without a nonce it takes ``next_nonce()`` under the rail's lock."""
        with self.lock:
            disperse = self.require_disperse()
            data = self.batch_data(recipients, amounts)
            if gas_limit is None:
                gas_limit = (
                    self.batch_gas_limit(len(recipients))
                    if self.in_process
                    else self._estimate(disperse, data)
                )
            return self.sign_tx(disperse, data, nonce, gas_limit, len(recipients))

    def simulate_batch(self, recipients: Sequence[str], amounts: Sequence[int]) -> Simulation:
        """Predict a batch (``eth_call`` from the wallet, no gas spent)."""
        with self.lock:
            data = self.batch_data(recipients, amounts)
            try:
                self.eth_call(self.require_disperse(), data, sender=self.address)
            except revert_errors() as exc:
                reason, index = explain_revert(exc)
                return Simulation(False, reason, index)
        return Simulation(True)

    def simulate_transfer(self, to: str, amount_micro: int) -> Simulation:
        with self.lock:
            data = self.transfer_data(to, amount_micro)
            try:
                self.eth_call(self.require_token(), data, sender=self.address)
            except revert_errors() as exc:
                return Simulation(False, explain_revert(exc)[0])
        return Simulation(True)

    # ---------------------------------------------------------------- broadcasting

    def broadcast(self, raw_hex: str) -> str:
        """Send a signed transaction; sending one the chain already knows (pending or mined)
        returns its hash instead of failing. Raises ``NonceConsumed`` when its nonce went to
        another transaction (it can never be mined), ``BroadcastError`` otherwise (e.g. a
        nonce gap: a transaction with a lower nonce must be broadcast first)."""
        from eth_utils import keccak

        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        tx_hash = to_hex(keccak(raw))
        with self.lock:
            try:
                return to_hex(bytes(self.w3.eth.send_raw_transaction(raw)))
            except Exception as exc:  # node-specific errors: decide by what the chain knows
                # Count first, then look the hash up: a transaction mined in between is found.
                mined = int(self.w3.eth.get_transaction_count(self.address, "latest"))
                if self.is_known(tx_hash):
                    return tx_hash
                if any(m in str(exc).lower() for m in _KNOWN_TX_MARKERS):
                    return tx_hash  # in the node's pool, not served by hash (yet)
                if raw_tx_nonce(raw) < mined:
                    raise NonceConsumed(
                        f"nonce {raw_tx_nonce(raw)} already used; {tx_hash} can never be mined"
                    ) from exc
                raise BroadcastError(f"broadcast of {tx_hash} refused: {exc}") from exc

    def send_and_wait(self, signed: SignedTx) -> Receipt:
        """Broadcast ``signed`` and wait for its receipt (raises ``TimeoutError`` past the
        rail's ``receipt_timeout``)."""
        self.broadcast(signed.raw_hex)
        receipt = self.receipt(signed.tx_hash)
        assert receipt is not None
        return receipt

    # ---------------------------------------------------------------- allowance

    def ensure_allowance(self, minimum: int = 2**200) -> list[Receipt]:
        """Approve the disperse contract for an unlimited allowance once (USDT needs a reset to
        0 before changing a non-zero allowance). Broadcasts and waits; returns the receipts."""
        done = []
        with self.lock:
            current = self.allowance()
            if current >= minimum:
                return done
            token, disperse = self.require_token(), self.require_disperse()
            steps = ([0] if current else []) + [MAX_UINT256]
            for value in steps:
                data = SEL_APPROVE + address_word(disperse) + word(value)
                signed = self.sign_tx(token, data, None, GAS_APPROVE, 0)
                receipt = self.send_and_wait(signed)
                if not receipt.ok:
                    raise RailError(f"approve of the disperse contract reverted ({signed.tx_hash})")
                done.append(receipt)
        return done

    def deploy_disperse(self) -> str:
        """Deploy the Disperse contract from the payout wallet (any chain: it holds nothing and
        only ever moves its caller's own tokens) and use it. Returns its address."""
        with self.lock:
            code = bytes.fromhex(load_artifacts()["contracts"]["Disperse"]["bytecode"][2:])
            gas = 400_000 if self.in_process else self._estimate(None, code)
            signed = self.sign_tx(None, code, None, gas, 0)
            receipt = self.send_and_wait(signed)
            if not receipt.ok:
                raise RailError(f"deploying the disperse contract reverted ({signed.tx_hash})")
            address = self.w3.eth.get_transaction_receipt(signed.tx_hash)["contractAddress"]
            self.disperse_address = address
            return address

    # ---------------------------------------------------------------- convenience

    def pay_batch_with_bisect(
        self, payments: Sequence[tuple[str, int]], *, simulate: bool = False
    ) -> list[BatchOutcome[tuple[str, int]]]:
        """Pay (recipient, amount) pairs without a database (tests, bench): one Disperse batch,
        bisected on revert; a single payment goes as a plain ``transfer``."""

        def sign(chunk: list[tuple[str, int]]) -> SignedTx:
            if len(chunk) == 1:
                return self.sign_transfer(chunk[0][0], chunk[0][1])
            return self.sign_batch([p[0] for p in chunk], [p[1] for p in chunk])

        def predict(chunk: list[tuple[str, int]]) -> str | None:
            if len(chunk) == 1:
                sim = self.simulate_transfer(chunk[0][0], chunk[0][1])
            else:
                sim = self.simulate_batch([p[0] for p in chunk], [p[1] for p in chunk])
            return None if sim.ok else sim.reason

        return pay_with_bisect(
            payments,
            sign_and_store=sign,
            broadcast_and_wait=self.send_and_wait,
            predict=predict if simulate else None,
        )
