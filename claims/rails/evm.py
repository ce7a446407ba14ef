"""The EVM payout rail: a USDT-like ERC-20 paid from the program's payout wallet.

Pure library, no database: it signs, broadcasts, reads receipts and verifies transfers; the
payout layer decides what to pay and records every step. The order the payout layer follows:

1. ``nonce = rail.next_nonce(at_least=highest nonce it has on record + 1)``
2. ``signed = rail.sign_batch(recipients, amounts, nonce)`` (or ``sign_transfer``) — nothing is
   sent yet; commit ``signed.raw_hex``, ``signed.tx_hash``, ``signed.nonce`` first;
3. ``rail.broadcast(signed.raw_hex)`` — idempotent: sending it again is harmless;
4. ``rail.receipt(signed.tx_hash)`` → status, gas, fee and the token's ``Transfer`` events;
5. on resume: ``rail.tx_status(hash)`` / ``rail.is_expired(signed)`` decide between
   re-broadcasting the same raw transaction and proving it can never be mined.

``pay_with_bisect`` drives a batch through callbacks so a reverted batch is split in halves
until a bad recipient fails alone and every other recipient is paid.

Chains: ``rpc_url=None`` runs an in-process eth-tester/py-evm chain (it lives as long as the
process; ``chain_identity()`` tells one chain from another — its genesis carries random extra
data, so two processes never share an identity). ``get_rail(...)`` returns the same instance
for the same settings within a process, so later code sees the same chain.

web3 / eth-tester / eth-account are imported only inside functions: importing this module is
cheap (its dataclasses and ``pay_with_bisect`` are usable without web3).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

ARTIFACTS_PATH = Path(__file__).with_name("evm_artifacts.json")

# keccak("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
SEL_TRANSFER = bytes.fromhex("a9059cbb")  # transfer(address,uint256)
SEL_APPROVE = bytes.fromhex("095ea7b3")  # approve(address,uint256)
SEL_BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address)
SEL_ALLOWANCE = bytes.fromhex("dd62ed3e")  # allowance(address,address)
SEL_MINT = bytes.fromhex("40c10f19")  # mint(address,uint256)
SEL_ADD_BLACKLIST = bytes.fromhex("0ecb93c0")  # addBlackList(address)
SEL_DISPERSE = bytes.fromhex("c73a2d60")  # disperseToken(address,address[],uint256[])
ERR_TRANSFER_FAILED = "c39ba1a9"  # Disperse: TransferFailed(uint256)
ERR_STRING = "08c379a0"  # Error(string)

MAX_UINT256 = 2**256 - 1
GWEI = 10**9
ETHER = 10**18

# Gas limits set explicitly (no eth_estimateGas round trip, which py-evm runs as a binary search
# of full executions). Measured on TestUSDT with fresh recipients: a transfer ≈ 56k, a Disperse
# batch ≈ 30k + 28.6k per recipient; the limits keep a margin. On a JSON-RPC node the rail
# estimates instead (a real token may cost more), unless a limit is passed.
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


# --------------------------------------------------------------------------------------------
# Artifacts and encoding helpers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_artifacts() -> dict[str, Any]:
    """ABI + bytecode of TestUSDT and Disperse, built by ``make contracts`` (committed)."""
    return json.loads(ARTIFACTS_PATH.read_text())


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_RE = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def _address(address: str) -> str:
    """A valid 0x address as given; a mixed-case one must carry a correct EIP-55 checksum."""
    if not isinstance(address, str) or not _ADDRESS_RE.fullmatch(address):
        raise ValueError(f"not an EVM address: {address!r}")
    body = address[2:]
    if body != body.lower() and body != body.upper():
        from eth_utils import is_checksum_address

        if not is_checksum_address(address):
            raise ValueError(f"bad EIP-55 checksum: {address}")
    return address


def _addr_word(address: str) -> bytes:
    return bytes.fromhex(_address(address)[2:]).rjust(32, b"\0")


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _revert_data(exc: BaseException) -> str:
    """The revert data (hex, no 0x) of a failed call: web3's ``.data`` on a JSON-RPC node;
    eth-tester puts the bytes (or their repr, behind "execution reverted: ") in its message."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if data is None and exc.args:
        data = exc.args[0]
        if isinstance(data, str):
            text = data.removeprefix("execution reverted: ")
            if text[:2] in ("b'", 'b"'):
                try:
                    data = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    data = None
            else:
                data = text if _HEX_RE.fullmatch(text) else None
    if isinstance(data, bytes):
        return data.hex()
    return data.removeprefix("0x") if isinstance(data, str) else ""


def _explain_revert(exc: BaseException) -> tuple[str, int | None]:
    data = _revert_data(exc)
    if data.startswith(ERR_TRANSFER_FAILED) and len(data) >= 8 + 64:
        index = int(data[8:72], 16)
        return f"transfer #{index} of the batch failed", index
    if data.startswith(ERR_STRING) and len(data) >= 8 + 128:
        try:
            length = int(data[72:136], 16)
            text = bytes.fromhex(data[136 : 136 + 2 * length]).decode("utf-8", "replace")
            return f"reverted: {text}", None
        except ValueError:
            pass
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    return f"reverted: {message.removeprefix('execution reverted: ')}", None


def _revert_errors() -> tuple[type[BaseException], ...]:
    """What a reverting ``eth_call`` / ``eth_estimateGas`` raises (JSON-RPC node, eth-tester)."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    return (ContractLogicError, TransactionFailed)


_KNOWN_TX_MARKERS = ("already known", "known transaction", "already imported", "alreadyknown")


def raw_tx_nonce(raw: bytes) -> int:
    """The nonce of a signed transaction (typed EIP-2718 or legacy)."""
    import rlp

    typed = raw[0] <= 0x7F  # EIP-2718 type byte; a legacy transaction is an RLP list (>= 0xc0)
    fields = rlp.decode(raw[1:] if typed else raw)
    nonce = fields[1] if typed else fields[0]  # typed: [chainId, nonce, ...]
    return int.from_bytes(nonce, "big")


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
            private_key = _hex(bytes(Account.decrypt(keyfile, keystore_password)))
        if private_key is None:
            if not self.in_process:
                raise RailConfigError(
                    "a JSON-RPC node needs the payout wallet: RESTITUTION_EVM_PRIVATE_KEY "
                    "or RESTITUTION_EVM_KEYSTORE"
                )
            private_key = _hex(hashlib.sha256(DEFAULT_TEST_KEY_SEED).digest())
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
            return ChainIdentity(int(self.w3.eth.chain_id), _hex(bytes(genesis["hash"])))

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
        tx: dict[str, Any] = {"to": to, "data": _hex(data)}
        if sender:
            tx["from"] = sender
        return bytes(self.w3.eth.call(tx, "latest"))

    def token_balance(self, address: str | None = None) -> int:
        who = address or self.address
        with self._lock:
            out = self._call(self._require_token(), SEL_BALANCE_OF + _addr_word(who))
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
                SEL_ALLOWANCE + _addr_word(self.address) + _addr_word(self._require_disperse()),
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
            raw_hex=_hex(bytes(signed.raw_transaction)),
            tx_hash=_hex(bytes(signed.hash)),
            nonce=nonce,
            gas_limit=gas,
            max_fee_per_gas=max_fee,
            payouts=payouts,
        )

    def _estimate(self, to: str | None, data: bytes) -> int:
        tx = {"from": self.address, "data": _hex(data)}
        if to is not None:
            tx["to"] = to
        try:
            est = int(self.w3.eth.estimate_gas(tx))
        except _revert_errors() as exc:
            raise WouldRevert(_explain_revert(exc)[0]) from exc
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
        return SEL_TRANSFER + _addr_word(to) + _word(self._check_amount(amount_micro))

    def batch_data(self, recipients: Sequence[str], amounts: Sequence[int]) -> bytes:
        """Calldata of ``disperseToken(token, recipients, amounts)``."""
        n = len(recipients)
        if n == 0 or n != len(amounts):
            raise ValueError("a batch needs as many amounts as recipients, at least one")
        token = self._require_token()
        head = _addr_word(token) + _word(0x60) + _word(0x60 + 32 * (n + 1))
        addrs = b"".join(_addr_word(r) for r in recipients)
        values = b"".join(_word(self._check_amount(a)) for a in amounts)
        return SEL_DISPERSE + head + _word(n) + addrs + _word(n) + values

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
            except _revert_errors() as exc:
                reason, index = _explain_revert(exc)
                return Simulation(False, reason, index)
        return Simulation(True)

    def simulate_transfer(self, to: str, amount_micro: int) -> Simulation:
        with self._lock:
            data = self.transfer_data(to, amount_micro)
            try:
                self._call(self._require_token(), data, sender=self.address)
            except _revert_errors() as exc:
                return Simulation(False, _explain_revert(exc)[0])
        return Simulation(True)

    # ---------------------------------------------------------------- broadcasting

    def broadcast(self, raw_hex: str) -> str:
        """Send a signed transaction; sending one the chain already knows (pending or mined)
        returns its hash instead of failing. Raises ``NonceConsumed`` when its nonce went to
        another transaction (it can never be mined), ``BroadcastError`` otherwise (e.g. a
        nonce gap: a transaction with a lower nonce must be broadcast first)."""
        from eth_utils import keccak

        raw = bytes.fromhex(raw_hex.removeprefix("0x"))
        tx_hash = _hex(keccak(raw))
        with self._lock:
            try:
                return _hex(bytes(self.w3.eth.send_raw_transaction(raw)))
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
            # In process: eth-tester's own API, without web3's per-field result formatting
            # (a third of the time of reading a 500-transfer receipt).
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
                [_hex(bytes(t)) for t in log["topics"]],
                _hex(bytes(log["data"])),
                log["logIndex"],
            )
            for log in raw["logs"]
        ]
        return self._decode_receipt(
            _hex(bytes(raw["transactionHash"])),
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
        wallet = self.address.lower()
        unmatched = Counter((t.to, t.value) for t in receipt.transfers if t.sender == wallet)
        by_recipient: dict[str, list[int]] = {}
        for t in receipt.transfers:
            if t.sender == wallet:
                by_recipient.setdefault(t.to, []).append(t.value)
        others = {t.to for t in receipt.transfers if t.sender != wallet}
        results = []
        for to, amount in expected:
            key = (_address(to).lower(), amount)
            if unmatched[key] > 0:
                unmatched[key] -= 1
                results.append((True, "ok"))
            elif key[0] in by_recipient:
                chain = ", ".join(str(v) for v in by_recipient[key[0]])
                results.append(
                    (
                        False,
                        f"amount differs: the chain sent {chain} micro-USDT to {to}, "
                        f"{amount} recorded",
                    )
                )
            elif key[0] in others:
                results.append((False, f"the transfer to {to} is not from the payout wallet"))
            else:
                results.append((False, f"no transfer of the token to {to} in {tx_hash}"))
        return results

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
                data = SEL_APPROVE + _addr_word(disperse) + _word(value)
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
            data = SEL_MINT + _addr_word(to) + _word(amount_micro)
            self._issuer_tx({"to": self._require_token(), "data": _hex(data)})

    def fund_gas(self, to: str, wei: int) -> None:
        from web3 import Web3

        with self._lock:
            self._issuer_tx({"to": Web3.to_checksum_address(to), "value": wei, "gas": 21_000})

    def blacklist(self, address: str) -> None:
        """Freeze ``address`` on the test token: transfers to or from it revert."""
        with self._lock:
            data = SEL_ADD_BLACKLIST + _addr_word(address)
            self._issuer_tx({"to": self._require_token(), "data": _hex(data)})

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
