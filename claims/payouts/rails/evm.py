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

Chains: ``rpc_url=None`` runs an in-process eth-tester/py-evm chain (it lives as long as the
process; ``chain_identity()`` tells one chain from another — its genesis carries random extra
data, so two processes never share an identity). ``get_rail(...)`` returns the same instance
for the same settings within a process, so later code sees the same chain.

web3 / eth-tester / eth-account are imported only inside functions: importing this module is
cheap (its dataclasses and ``pay_with_bisect`` are usable without web3).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
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
    check_address,
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

GWEI = 10**9
ETHER = 10**18

# Gas limits set explicitly (no eth_estimateGas round trip, which py-evm runs as a binary search
# of full executions), with a margin over what TestUSDT costs with fresh recipients (the gas
# measured per payout: bench/RESULTS.md). On a JSON-RPC node the rail estimates instead (a real
# token may cost more), unless a limit is passed.
GAS_TRANSFER = 90_000
GAS_APPROVE = 100_000
GAS_BATCH_BASE = 60_000
GAS_BATCH_PER_RECIPIENT = 36_000
GAS_ESTIMATE_MARGIN = (5, 4)  # estimate × 5/4 on a JSON-RPC node

# The in-process chain: the issuer (eth-tester's first funded account) deploys the contracts,
# owns the token (mint, blacklist) and funds the payout wallet with gas.
DEFAULT_TEST_KEY_SEED = b"restitution in-process payout wallet"
DEFAULT_GAS_FUNDING_WEI = 1_000 * ETHER
IN_PROCESS_PRIORITY_FEE_WEI = 1 * GWEI

_KNOWN_TX_MARKERS = ("already known", "known transaction", "already imported", "alreadyknown")


def _settings_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# The rail
# --------------------------------------------------------------------------------------------


class EvmRail:
    """ERC-20 payouts from one wallet, on the in-process chain or through a JSON-RPC node."""

    def __init__(
        self,
        rpc_url: str | None = None,
        *,
        private_key: str | None = None,
        keystore_path: str | None = None,
        keystore_password: str | None = None,
        token_address: str | None = None,
        disperse_address: str | None = None,
        max_priority_fee_wei: int | None = None,
        receipt_timeout: float = 180.0,
    ) -> None:
        from eth_account import Account
        from web3 import Web3

        self._lock = threading.RLock()
        self.in_process = rpc_url is None
        self.receipt_timeout = receipt_timeout
        self._tester = None
        self._issuer: str | None = None
        if self.in_process:
            from eth_tester import EthereumTester, PyEVMBackend
            from web3 import EthereumTesterProvider

            # Random extra data makes this chain's genesis — its identity — unique.
            genesis = PyEVMBackend.generate_genesis_params(
                overrides={"extra_data": secrets.token_bytes(32)}
            )
            self._tester = EthereumTester(backend=PyEVMBackend(genesis_parameters=genesis))
            self.w3 = Web3(EthereumTesterProvider(ethereum_tester=self._tester))
            self._issuer = self.w3.eth.accounts[0]
        else:
            self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        # What the rail never needs: ENS name resolution, web3's own gas price/estimate fillers.
        for name in ("ens_name_to_address", "gas_price_strategy", "gas_estimate"):
            try:
                self.w3.middleware_onion.remove(name)
            except (ValueError, KeyError):
                pass

        if private_key and keystore_path:
            raise RailConfigError("give either a private key or a keystore, not both")
        if keystore_path:
            if keystore_password is None:
                raise RailConfigError("the keystore needs its password")
            keyfile = json.loads(Path(keystore_path).read_text())
            private_key = to_hex(bytes(Account.decrypt(keyfile, keystore_password)))
        if private_key is None:
            if not self.in_process:
                raise RailConfigError(
                    "a JSON-RPC node needs the payout wallet: RESTITUTION_EVM_PRIVATE_KEY "
                    "or RESTITUTION_EVM_KEYSTORE"
                )
            private_key = to_hex(hashlib.sha256(DEFAULT_TEST_KEY_SEED).digest())
        self._account = Account.from_key(private_key)
        del private_key
        self.address: str = self._account.address

        if not self.in_process and not token_address:
            raise RailConfigError("a JSON-RPC node needs the token contract's address")
        self.token_address = Web3.to_checksum_address(token_address) if token_address else None
        self.disperse_address = (
            Web3.to_checksum_address(disperse_address) if disperse_address else None
        )
        self.max_priority_fee_wei = max_priority_fee_wei
        self._chain_id: int | None = None
        self._local_next_nonce = 0

    def __repr__(self) -> str:  # never the key
        where = "in-process" if self.in_process else "json-rpc"
        return f"EvmRail({where}, wallet={self.address}, token={self.token_address})"

    # ---------------------------------------------------------------- identity and balances

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def chain_identity(self) -> ChainIdentity:
        """(chain id, genesis block hash): record it with every payout."""
        with self._lock:
            genesis = self.w3.eth.get_block(0)
            return ChainIdentity(int(self.w3.eth.chain_id), to_hex(bytes(genesis["hash"])))

    def assert_same_chain(self, chain_id: int, genesis_hash: str) -> None:
        """Refuse to reconcile or resume against another chain than the recorded one."""
        current = self.chain_identity()
        if (current.chain_id, current.genesis_hash.lower()) != (chain_id, genesis_hash.lower()):
            raise ChainMismatch(
                f"payouts were made on chain {chain_id} (genesis {genesis_hash}); this rail is "
                f"on chain {current.chain_id} (genesis {current.genesis_hash})"
            )

    def _require_token(self) -> str:
        if self.token_address is None:
            raise RailConfigError("no token contract yet: call bootstrap() on the in-process chain")
        return self.token_address

    def _require_disperse(self) -> str:
        if self.disperse_address is None:
            raise RailConfigError("no disperse contract: give its address or deploy_disperse()")
        return self.disperse_address

    def _call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        tx: dict[str, Any] = {"to": to, "data": to_hex(data)}
        if sender:
            tx["from"] = sender
        return bytes(self.w3.eth.call(tx, "latest"))

    def token_balance(self, address: str | None = None) -> int:
        who = address or self.address
        with self._lock:
            out = self._call(self._require_token(), SEL_BALANCE_OF + address_word(who))
        return int.from_bytes(out, "big")

    def balances(self) -> dict[str, Any]:
        """The payout wallet: ``{"address", "token_micro", "gas_wei"}``."""
        with self._lock:
            gas = int(self.w3.eth.get_balance(self.address, "latest"))
            token = self.token_balance() if self.token_address else 0
        return {"address": self.address, "token_micro": token, "gas_wei": gas}

    def allowance(self) -> int:
        with self._lock:
            out = self._call(
                self._require_token(),
                SEL_ALLOWANCE + address_word(self.address) + address_word(self._require_disperse()),
            )
        return int.from_bytes(out, "big")

    # ---------------------------------------------------------------- fees and funds

    def fees(self) -> tuple[int, int]:
        """(max fee per gas, max priority fee per gas) for the next transaction."""
        with self._lock:
            base = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
            if self.max_priority_fee_wei is not None:
                tip = self.max_priority_fee_wei
            elif self.in_process:
                tip = IN_PROCESS_PRIORITY_FEE_WEI
            else:
                tip = int(self.w3.eth.max_priority_fee)
        return 2 * base + tip, tip

    @staticmethod
    def batch_gas_limit(n: int) -> int:
        return GAS_BATCH_BASE + GAS_BATCH_PER_RECIPIENT * n

    def check_funds(self, total_micro: int, payouts: int, batch_size: int) -> list[str]:
        """Why the wallet cannot pay ``payouts`` transfers adding up to ``total_micro`` in
        batches of ``batch_size`` (empty when it can): run it before the first transfer."""
        from claims.money import format_amount

        problems = []
        bal = self.balances()
        if bal["token_micro"] < total_micro:
            problems.append(
                f"the payout wallet holds {format_amount(bal['token_micro'])} USDT, "
                f"{format_amount(total_micro)} needed"
            )
        batches, rest = divmod(payouts, max(batch_size, 1))
        gas = batches * self.batch_gas_limit(batch_size) + (
            self.batch_gas_limit(rest) if rest else 0
        )
        max_fee, _ = self.fees()
        need_wei = gas * max_fee + 2 * GAS_APPROVE * max_fee
        if bal["gas_wei"] < need_wei:
            problems.append(
                f"the payout wallet holds {bal['gas_wei']} wei for gas, up to {need_wei} needed"
            )
        return problems

    # ---------------------------------------------------------------- nonces

    def next_nonce(self, at_least: int = 0) -> int:
        """The nonce for the next transaction: the highest of the chain's pending count, one
        past the highest nonce this process has signed with, and ``at_least`` (the payout
        layer's highest recorded nonce + 1, which survives restarts). Asking does not reserve:
        signing does. Signed transactions must be broadcast in nonce order (a gap holds back
        every later one). Callers that sign from several threads or processes for one wallet
        must serialize "next_nonce + sign + record" themselves (e.g. a row lock)."""
        with self._lock:
            chain = int(self.w3.eth.get_transaction_count(self.address, "pending"))
            return max(chain, self._local_next_nonce, at_least)

    def reset_nonce(self) -> None:
        """Forget the nonces signed in this process (what was signed was dropped, not sent)."""
        with self._lock:
            self._local_next_nonce = 0

    # ---------------------------------------------------------------- signing

    def _sign(
        self, to: str | None, data: bytes, nonce: int | None, gas: int, payouts: int
    ) -> SignedTx:
        if nonce is None:
            nonce = self.next_nonce()
        max_fee, tip = self.fees()
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "value": 0,
            "data": data,
            "gas": gas,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
        }
        if to is not None:
            tx["to"] = to
        signed = self._account.sign_transaction(tx)
        self._local_next_nonce = max(self._local_next_nonce, nonce + 1)
        return SignedTx(
            raw_hex=to_hex(bytes(signed.raw_transaction)),
            tx_hash=to_hex(bytes(signed.hash)),
            nonce=nonce,
            gas_limit=gas,
            max_fee_per_gas=max_fee,
            payouts=payouts,
        )

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
        token = self._require_token()
        head = address_word(token) + word(0x60) + word(0x60 + 32 * (n + 1))
        addrs = b"".join(address_word(r) for r in recipients)
        values = b"".join(word(self._check_amount(a)) for a in amounts)
        return SEL_DISPERSE + head + word(n) + addrs + word(n) + values

    def sign_transfer(
        self, to: str, amount_micro: int, nonce: int | None = None, *, gas_limit: int | None = None
    ) -> SignedTx:
        """A signed ``token.transfer(to, amount)`` — signed only, not broadcast. Without a
        nonce it takes ``next_nonce()`` under the rail's lock."""
        with self._lock:
            token = self._require_token()
            data = self.transfer_data(to, amount_micro)
            if gas_limit is None:
                gas_limit = GAS_TRANSFER if self.in_process else self._estimate(token, data)
            return self._sign(token, data, nonce, gas_limit, 1)

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
        with self._lock:
            disperse = self._require_disperse()
            data = self.batch_data(recipients, amounts)
            if gas_limit is None:
                gas_limit = (
                    self.batch_gas_limit(len(recipients))
                    if self.in_process
                    else self._estimate(disperse, data)
                )
            return self._sign(disperse, data, nonce, gas_limit, len(recipients))

    def simulate_batch(self, recipients: Sequence[str], amounts: Sequence[int]) -> Simulation:
        """Predict a batch (``eth_call`` from the wallet, no gas spent)."""
        with self._lock:
            data = self.batch_data(recipients, amounts)
            try:
                self._call(self._require_disperse(), data, sender=self.address)
            except revert_errors() as exc:
                reason, index = explain_revert(exc)
                return Simulation(False, reason, index)
        return Simulation(True)

    def simulate_transfer(self, to: str, amount_micro: int) -> Simulation:
        with self._lock:
            data = self.transfer_data(to, amount_micro)
            try:
                self._call(self._require_token(), data, sender=self.address)
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
        with self._lock:
            try:
                return to_hex(bytes(self.w3.eth.send_raw_transaction(raw)))
            except Exception as exc:  # node-specific errors: decide by what the chain knows
                # Count first, then look the hash up: a transaction mined in between is found.
                mined = int(self.w3.eth.get_transaction_count(self.address, "latest"))
                if self._known(tx_hash):
                    return tx_hash
                if any(m in str(exc).lower() for m in _KNOWN_TX_MARKERS):
                    return tx_hash  # in the node's pool, not served by hash (yet)
                if raw_tx_nonce(raw) < mined:
                    raise NonceConsumed(
                        f"nonce {raw_tx_nonce(raw)} already used; {tx_hash} can never be mined"
                    ) from exc
                raise BroadcastError(f"broadcast of {tx_hash} refused: {exc}") from exc

    def _known(self, tx_hash: str) -> bool:
        from web3.exceptions import TransactionNotFound

        try:
            self.w3.eth.get_transaction(tx_hash)
            return True
        except TransactionNotFound:
            return False

    def _fetch_receipt(self, tx_hash: str) -> Receipt | None:
        """The decoded receipt, or None when the transaction is not mined (yet)."""
        if self._tester is not None:
            # In process: eth-tester's own API, without web3's per-field result formatting.
            from eth_tester.exceptions import TransactionNotFound as TesterNotFound

            try:
                raw = self._tester.get_transaction_receipt(tx_hash)
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
            with self._lock:
                found = self._fetch_receipt(tx_hash)
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
        with self._lock:
            found = self._fetch_receipt(tx_hash)
            if found is not None:
                return "mined_ok" if found.ok else "reverted"
            return "pending" if self._known(tx_hash) else "unknown"

    def is_expired(self, signed: SignedTx) -> bool:
        """True when ``signed`` can never be mined: a mined transaction of the wallet already
        used its nonce and it is not that transaction. (On a real chain, wait for finality
        before treating a payout as proven failed.)"""
        with self._lock:
            mined = int(self.w3.eth.get_transaction_count(self.address, "latest"))
            if mined <= signed.nonce:
                return False
            return self._fetch_receipt(signed.tx_hash) is None

    def send_and_wait(self, signed: SignedTx) -> Receipt:
        self.broadcast(signed.raw_hex)
        receipt = self.receipt(signed.tx_hash)
        assert receipt is not None
        return receipt

    # ---------------------------------------------------------------- reconciliation

    def verify_transfers(
        self, tx_hash: str, expected: Sequence[tuple[str, int]]
    ) -> list[tuple[bool, str]]:
        """Check each expected (recipient, amount) against the receipt's Transfer events of the
        token from the payout wallet: ``[(ok, reason), ...]`` in the same order. An event
        matches at most one expectation (two payouts to one address need two events)."""
        with self._lock:
            receipt = self._fetch_receipt(tx_hash)
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

    # ---------------------------------------------------------------- allowance

    def ensure_allowance(self, minimum: int = 2**200) -> list[Receipt]:
        """Approve the disperse contract for an unlimited allowance once (USDT needs a reset to
        0 before changing a non-zero allowance). Broadcasts and waits; returns the receipts."""
        done = []
        with self._lock:
            current = self.allowance()
            if current >= minimum:
                return done
            token, disperse = self._require_token(), self._require_disperse()
            steps = ([0] if current else []) + [MAX_UINT256]
            for value in steps:
                data = SEL_APPROVE + address_word(disperse) + word(value)
                signed = self._sign(token, data, None, GAS_APPROVE, 0)
                receipt = self.send_and_wait(signed)
                if not receipt.ok:
                    raise RailError(f"approve of the disperse contract reverted ({signed.tx_hash})")
                done.append(receipt)
        return done

    def deploy_disperse(self) -> str:
        """Deploy the Disperse contract from the payout wallet (any chain: it holds nothing and
        only ever moves its caller's own tokens) and use it. Returns its address."""
        with self._lock:
            code = bytes.fromhex(load_artifacts()["contracts"]["Disperse"]["bytecode"][2:])
            gas = 400_000 if self.in_process else self._estimate(None, code)
            signed = self._sign(None, code, None, gas, 0)
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

    # ---------------------------------------------------------------- in-process chain only

    def _require_in_process(self) -> str:
        if not self.in_process or self._issuer is None:
            raise InProcessOnly("only the in-process test chain can do this")
        return self._issuer

    def _issuer_tx(self, tx: dict[str, Any]) -> Any:
        tx = {"from": self._require_in_process(), "gas": 3_000_000, **tx}
        receipt = self.w3.eth.wait_for_transaction_receipt(self.w3.eth.send_transaction(tx))
        if receipt["status"] != 1:
            raise RailError("in-process chain: issuer transaction reverted")
        return receipt

    def deploy_contracts(self) -> tuple[str, str]:
        """Deploy TestUSDT (owned by the issuer) and Disperse on the in-process chain."""
        with self._lock:
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
        with self._lock:
            data = SEL_MINT + address_word(to) + word(amount_micro)
            self._issuer_tx({"to": self._require_token(), "data": to_hex(data)})

    def fund_gas(self, to: str, wei: int) -> None:
        from web3 import Web3

        with self._lock:
            self._issuer_tx({"to": Web3.to_checksum_address(to), "value": wei, "gas": 21_000})

    def blacklist(self, address: str) -> None:
        """Freeze ``address`` on the test token: transfers to or from it revert."""
        with self._lock:
            data = SEL_ADD_BLACKLIST + address_word(address)
            self._issuer_tx({"to": self._require_token(), "data": to_hex(data)})

    def set_auto_mine(self, on: bool) -> None:
        """In-process chain: mine each transaction at once (default) or leave it pending until
        ``mine()`` (tests of a broadcast-but-unmined state; eth-tester then accepts only one
        pending transaction per sender — it checks nonces against the last mined block)."""
        self._require_in_process()
        assert self._tester is not None
        with self._lock:
            if on:
                self._tester.enable_auto_mine_transactions()
            else:
                self._tester.disable_auto_mine_transactions()

    def mine(self, blocks: int = 1) -> None:
        self._require_in_process()
        assert self._tester is not None
        with self._lock:
            self._tester.mine_blocks(blocks)

    def bootstrap(self, mint_micro: int, *, gas_wei: int = DEFAULT_GAS_FUNDING_WEI) -> None:
        """In-process chain: deploy both contracts (once), mint ``mint_micro`` to the payout
        wallet, top its gas up to ``gas_wei`` and approve the disperse contract."""
        with self._lock:
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
