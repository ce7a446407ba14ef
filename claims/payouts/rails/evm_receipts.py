"""The EVM rail's reads of what happened on chain: receipts, a transaction's status, and the
reconciliation of expected transfers against the token's ``Transfer`` events.

:class:`EvmReceipts` extends :class:`~claims.payouts.rails.evm_wallet.EvmWallet`; the payout
layer uses these reads to resume (is a recorded transaction mined, pending, unknown, or proven
never to be mined?) and to reconcile what it recorded with what the chain carries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from claims.payouts.rails.evm_abi import TRANSFER_TOPIC, check_address, to_hex
from claims.payouts.rails.evm_batch import Receipt, SignedTx, TokenTransfer, match_transfers
from claims.payouts.rails.evm_wallet import EvmWallet


class EvmReceipts(EvmWallet):
    """Receipts, transaction status and transfer verification for the payout wallet."""

    def is_known(self, tx_hash: str) -> bool:
        """Whether the chain knows the transaction (pending or mined)."""
        from web3.exceptions import TransactionNotFound

        try:
            self.w3.eth.get_transaction(tx_hash)
            return True
        except TransactionNotFound:
            return False

    def fetch_receipt(self, tx_hash: str) -> Receipt | None:
        """The decoded receipt, or None when the transaction is not mined (yet)."""
        if self.tester is not None:
            # In process: eth-tester's own API, without web3's per-field result formatting.
            from eth_tester.exceptions import TransactionNotFound as TesterNotFound

            try:
                raw = self.tester.get_transaction_receipt(tx_hash)
            except TesterNotFound:
                return None
            logs = [
                (log["address"], log["topics"], log["data"], log["log_index"])
                for log in raw["logs"]
            ]
            return self._decode_receipt(
                raw["transaction_hash"],
                raw["status"],
                raw["block_number"],
                raw["gas_used"],
                raw["effective_gas_price"],
                logs,
            )
        from web3.exceptions import TransactionNotFound

        try:
            raw = self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if raw is None:
            return None
        logs = [
            (
                log["address"],
                [to_hex(bytes(t)) for t in log["topics"]],
                to_hex(bytes(log["data"])),
                log["logIndex"],
            )
            for log in raw["logs"]
        ]
        return self._decode_receipt(
            to_hex(bytes(raw["transactionHash"])),
            raw["status"],
            raw["blockNumber"],
            raw["gasUsed"],
            raw["effectiveGasPrice"],
            logs,
        )

    def receipt(
        self, tx_hash: str, wait: bool = True, timeout: float | None = None
    ) -> Receipt | None:
        """The receipt with the token's Transfer events; None when not mined and ``wait`` is
        False. Waiting past ``timeout`` raises ``TimeoutError``."""
        deadline = time.monotonic() + (self.receipt_timeout if timeout is None else timeout)
        delay = 0.05
        while True:
            with self.lock:
                found = self.fetch_receipt(tx_hash)
            if found is not None or not wait:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no receipt for {tx_hash} yet")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _decode_receipt(
        self,
        tx_hash: str,
        status: Any,
        block_number: Any,
        gas_used: Any,
        effective_gas_price: Any,
        logs: list[tuple[str, Sequence[str], str, Any]],
    ) -> Receipt:
        """Keep the token's ``Transfer`` events; addresses in lower-case hex."""
        token = (self.token_address or "").lower()
        transfers = []
        for address, topics, data, log_index in logs:
            if (
                len(topics) == 3
                and address.lower() == token
                and topics[0].lower() == TRANSFER_TOPIC
            ):
                transfers.append(
                    TokenTransfer(
                        token=token,
                        sender="0x" + topics[1][-40:].lower(),
                        to="0x" + topics[2][-40:].lower(),
                        value=int(data, 16),
                        log_index=int(log_index),
                    )
                )
        return Receipt(
            tx_hash=tx_hash.lower(),
            status=int(status),
            block_number=int(block_number),
            gas_used=int(gas_used),
            effective_gas_price=int(effective_gas_price),
            transfers=tuple(transfers),
        )

    def tx_status(self, tx_hash: str) -> str:
        """``unknown`` | ``pending`` | ``mined_ok`` | ``reverted``."""
        with self.lock:
            found = self.fetch_receipt(tx_hash)
            if found is not None:
                return "mined_ok" if found.ok else "reverted"
            return "pending" if self.is_known(tx_hash) else "unknown"

    def is_expired(self, signed: SignedTx) -> bool:
        """True when ``signed`` can never be mined: a mined transaction of the wallet already
        used its nonce and it is not that transaction. (On a real chain, wait for finality
        before treating a payout as proven failed.)"""
        with self.lock:
            mined = int(self.w3.eth.get_transaction_count(self.address, "latest"))
            if mined <= signed.nonce:
                return False
            return self.fetch_receipt(signed.tx_hash) is None

    # ---------------------------------------------------------------- reconciliation

    def verify_transfers(
        self, tx_hash: str, expected: Sequence[tuple[str, int]]
    ) -> list[tuple[bool, str]]:
        """Check each expected (recipient, amount) against the receipt's Transfer events of the
        token from the payout wallet: ``[(ok, reason), ...]`` in the same order. An event
        matches at most one expectation (two payouts to one address need two events)."""
        with self.lock:
            receipt = self.fetch_receipt(tx_hash)
        if receipt is None:
            return [(False, f"transaction {tx_hash} not found on chain")] * len(expected)
        if not receipt.ok:
            return [(False, f"transaction {tx_hash} reverted")] * len(expected)
        return match_transfers(receipt, self.address,
                               [(check_address(to), amount) for to, amount in expected], tx_hash)

    def verify_transfer(self, tx_hash: str, to: str, amount_micro: int) -> tuple[bool, str]:
        """(ok, reason): the transaction succeeded and carries a Transfer of the token from the
        payout wallet to ``to`` of exactly ``amount_micro``."""
        return self.verify_transfers(tx_hash, [(to, amount_micro)])[0]
