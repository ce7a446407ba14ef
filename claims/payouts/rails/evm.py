"""The EVM payout rail: a USDT-like ERC-20 paid from the program's payout wallet.

Pure library, no database: it signs, broadcasts, reads receipts and verifies transfers; the
payout layer (:mod:`claims.payouts.rails.evm_exec`) decides what to pay and records every
step. The order the payout layer follows:

1. ``nonce = rail.next_nonce(at_least=highest nonce it has on record + 1)``
2. ``signed = rail.sign_batch(recipients, amounts, nonce)`` (or ``sign_transfer``) — nothing is
   sent yet; commit ``signed.raw_hex``, ``signed.tx_hash``, ``signed.nonce`` first;
3. ``rail.broadcast(signed.raw_hex)`` — idempotent: sending it again is harmless;
4. ``rail.receipt(signed.tx_hash)`` → status, gas, fee and the token's ``Transfer`` events;
5. on resume: ``rail.tx_status(hash)`` / ``rail.is_expired(signed)`` decide between
   re-broadcasting the same raw transaction and proving it can never be mined.

``pay_with_bisect`` (:mod:`~claims.payouts.rails.evm_batch`) drives a batch through callbacks
so a reverted batch is split in halves until a bad recipient fails alone and every other
recipient is paid. The encoding lives in :mod:`~claims.payouts.rails.evm_abi`.

:class:`EvmRail` is built in layers, one module each: the connection, the wallet's key, its
balances, fees, nonces and signing (:mod:`~claims.payouts.rails.evm_wallet`); receipts,
transaction status and reconciliation reads (:mod:`~claims.payouts.rails.evm_receipts`);
calldata, signing, simulating and broadcasting transfers, and the Disperse allowance
(:mod:`~claims.payouts.rails.evm_transfers`). This module adds what only the in-process chain
can do (deploy the test token, mint, blacklist, mine) and keeps one rail per settings.

Chains: ``rpc_url=None`` runs an in-process eth-tester/py-evm chain (it lives as long as the
process; ``chain_identity()`` tells one chain from another — its genesis carries random extra
data, so two processes never share an identity). ``get_rail(...)`` returns the same instance
for the same settings within a process, so later code sees the same chain.

web3 / eth-tester / eth-account are imported only inside functions: importing this module is
cheap (its dataclasses and ``pay_with_bisect`` are usable without web3).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from claims.payouts.rails.evm_abi import (
    MAX_UINT256,
    SEL_ADD_BLACKLIST,
    SEL_ALLOWANCE,
    SEL_APPROVE,
    SEL_BALANCE_OF,
    SEL_DISPERSE,
    SEL_MINT,
    SEL_TRANSFER,
    TRANSFER_TOPIC,
    address_word,
    load_artifacts,
    raw_tx_nonce,
    revert_errors,
    to_hex,
    word,
)
from claims.payouts.rails.evm_batch import (
    BatchOutcome,
    BroadcastError,
    ChainIdentity,
    ChainMismatch,
    InProcessOnly,
    NonceConsumed,
    RailConfigError,
    RailError,
    Receipt,
    SignedTx,
    Simulation,
    TokenTransfer,
    WouldRevert,
    match_transfers,
    pay_with_bisect,
    split_evenly,
)
from claims.payouts.rails.evm_transfers import EvmTransfers
from claims.payouts.rails.evm_wallet import DEFAULT_GAS_FUNDING_WEI


class EvmRail(EvmTransfers):
    """ERC-20 payouts from one wallet, on the in-process chain or through a JSON-RPC node.

    The wallet, receipts and transfers come from its bases; the methods here work on the
    in-process chain only (they raise :class:`InProcessOnly` on a node)."""

    def _require_in_process(self) -> str:
        if not self.in_process or self.issuer is None:
            raise InProcessOnly("only the in-process test chain can do this")
        return self.issuer

    def _issuer_tx(self, tx: dict[str, Any]) -> Any:
        tx = {"from": self._require_in_process(), "gas": 3_000_000, **tx}
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_transaction(tx))
        if receipt["status"] != 1:
            raise RailError("in-process chain: issuer transaction reverted")
        return receipt

    def deploy_contracts(self) -> tuple[str, str]:
        """Deploy TestUSDT (owned by the issuer) and Disperse on the in-process chain."""
        with self.lock:
            art = load_artifacts()["contracts"]
            if self.token_address is None:
                r = self._issuer_tx({"data": art["TestUSDT"]["bytecode"]})
                self.token_address = r["contractAddress"]
            if self.disperse_address is None:
                r = self._issuer_tx({"data": art["Disperse"]["bytecode"]})
                self.disperse_address = r["contractAddress"]
            return self.token_address, self.disperse_address

    def mint(self, to: str, amount_micro: int) -> None:
        """Mint test USDT (the issuer owns the token)."""
        with self.lock:
            data = SEL_MINT + address_word(to) + word(amount_micro)
            self._issuer_tx({"to": self.require_token(), "data": to_hex(data)})

    def fund_gas(self, to: str, wei: int) -> None:
        from web3 import Web3

        with self.lock:
            self._issuer_tx({"to": Web3.to_checksum_address(to), "value": wei, "gas": 21_000})

    def blacklist(self, address: str) -> None:
        """Freeze ``address`` on the test token: transfers to or from it revert."""
        with self.lock:
            data = SEL_ADD_BLACKLIST + address_word(address)
            self._issuer_tx({"to": self.require_token(), "data": to_hex(data)})

    def set_auto_mine(self, on: bool) -> None:
        """In-process chain: mine each transaction at once (default) or leave it pending until
        ``mine()`` (tests of a broadcast-but-unmined state; eth-tester then accepts only one
        pending transaction per sender — it checks nonces against the last mined block)."""
        self._require_in_process()
        assert self.tester is not None
        with self.lock:
            if on:
                self.tester.enable_auto_mine_transactions()
            else:
                self.tester.disable_auto_mine_transactions()

    def mine(self, blocks: int = 1) -> None:
        self._require_in_process()
        assert self.tester is not None
        with self.lock:
            self.tester.mine_blocks(blocks)

    def bootstrap(self, mint_micro: int, *, gas_wei: int = DEFAULT_GAS_FUNDING_WEI) -> None:
        """In-process chain: deploy both contracts (once), mint ``mint_micro`` to the payout
        wallet, top its gas up to ``gas_wei`` and approve the disperse contract."""
        with self.lock:
            self.deploy_contracts()
            if mint_micro:
                self.mint(self.address, mint_micro)
            have = int(self.w3.eth.get_balance(self.address))
            if have < gas_wei:
                self.fund_gas(self.address, gas_wei - have)
            self.ensure_allowance()


# --------------------------------------------------------------------------------------------
# One rail per settings within a process (the in-process chain lives as long as the process)
# --------------------------------------------------------------------------------------------


def _settings_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


_RAILS: dict[str, EvmRail] = {}
_RAILS_LOCK = threading.Lock()


def get_rail(
    rpc_url: str | None = None,
    *,
    private_key: str | None = None,
    keystore_path: str | None = None,
    keystore_password: str | None = None,
    token_address: str | None = None,
    disperse_address: str | None = None,
) -> EvmRail:
    """The process's rail for these settings (created on first use, then the same instance)."""
    key = _settings_key(
        rpc_url,
        hashlib.sha256(private_key.encode()).hexdigest() if private_key else None,
        keystore_path,
        token_address,
        disperse_address,
    )
    with _RAILS_LOCK:
        rail = _RAILS.get(key)
        if rail is None:
            rail = EvmRail(
                rpc_url,
                private_key=private_key,
                keystore_path=keystore_path,
                keystore_password=keystore_password,
                token_address=token_address,
                disperse_address=disperse_address,
            )
            _RAILS[key] = rail
        return rail


def rail_from_settings(settings: Any) -> EvmRail:
    """``get_rail`` from ``claims.settings.Settings`` (``evm_rpc_url``, ``evm_private_key``,
    ``evm_keystore``; token/disperse addresses and keystore password where settings have them)."""
    return get_rail(
        getattr(settings, "evm_rpc_url", None),
        private_key=getattr(settings, "evm_private_key", None),
        keystore_path=getattr(settings, "evm_keystore", None),
        keystore_password=getattr(settings, "evm_keystore_password", None),
        token_address=getattr(settings, "evm_token_address", None),
        disperse_address=getattr(settings, "evm_disperse_address", None),
    )


def forget_rails() -> None:
    """Drop the cached rails (tests): the next ``get_rail`` starts a new in-process chain."""
    with _RAILS_LOCK:
        _RAILS.clear()


def default_rail() -> EvmRail:
    """The process's EVM rail from the settings (``RESTITUTION_EVM_*``; the in-process chain
    by default)."""
    from claims.settings import get_settings

    return rail_from_settings(get_settings())


__all__ = [
    "MAX_UINT256", "SEL_ADD_BLACKLIST", "SEL_ALLOWANCE", "SEL_APPROVE", "SEL_BALANCE_OF",
    "SEL_DISPERSE", "SEL_MINT", "SEL_TRANSFER", "TRANSFER_TOPIC", "BatchOutcome",
    "BroadcastError", "ChainIdentity", "ChainMismatch", "EvmRail", "InProcessOnly",
    "NonceConsumed", "RailConfigError", "RailError", "Receipt", "SignedTx", "Simulation",
    "TokenTransfer", "WouldRevert", "address_word", "default_rail", "forget_rails", "get_rail",
    "load_artifacts", "match_transfers", "pay_with_bisect", "rail_from_settings",
    "raw_tx_nonce", "revert_errors", "split_evenly", "word",
]
