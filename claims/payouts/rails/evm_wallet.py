"""The EVM rail's connection and payout wallet: set-up, keys, chain identity, balances, fees,
nonces and signing.

:class:`EvmWallet` is the base of :class:`~claims.payouts.rails.evm.EvmRail`: it connects (an
in-process eth-tester/py-evm chain when ``rpc_url`` is None, else a JSON-RPC node), loads the
payout wallet's key (a private key, a keystore, or on the in-process chain a fixed test key) and
signs transactions with it — the key never leaves this module. Everything built on it
(:mod:`~claims.payouts.rails.evm_receipts`, :mod:`~claims.payouts.rails.evm_transfers`) talks
to the chain through :attr:`EvmWallet.w3` under :attr:`EvmWallet.lock`.

web3 / eth-tester / eth-account are imported only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from pathlib import Path
from typing import Any

from claims.payouts.rails.evm_abi import SEL_ALLOWANCE, SEL_BALANCE_OF, address_word, to_hex
from claims.payouts.rails.evm_batch import ChainIdentity, ChainMismatch, RailConfigError, SignedTx

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


def connect(rpc_url: str | None) -> tuple[Any, Any, str | None]:
    """``(w3, tester, issuer)``: a web3 connection to the JSON-RPC node at ``rpc_url``, or to a
    new in-process chain when it is None (then ``tester`` is its EthereumTester and ``issuer``
    its first funded account; both None on a node).

    The in-process chain's genesis carries random extra data, so its identity is unique: two
    processes never mistake each other's chains. Middleware the rail never needs (ENS name
    resolution, web3's own gas price and estimate fillers) is removed."""
    from web3 import Web3

    tester = None
    issuer = None
    if rpc_url is None:
        from eth_tester import EthereumTester, PyEVMBackend
        from web3 import EthereumTesterProvider

        # Random extra data makes this chain's genesis — its identity — unique.
        genesis = PyEVMBackend.generate_genesis_params(
            overrides={"extra_data": secrets.token_bytes(32)}
        )
        tester = EthereumTester(backend=PyEVMBackend(genesis_parameters=genesis))
        w3 = Web3(EthereumTesterProvider(ethereum_tester=tester))
        issuer = w3.eth.accounts[0]
    else:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    # What the rail never needs: ENS name resolution, web3's own gas price/estimate fillers.
    for name in ("ens_name_to_address", "gas_price_strategy", "gas_estimate"):
        try:
            w3.middleware_onion.remove(name)
        except (ValueError, KeyError):
            pass
    return w3, tester, issuer


def wallet_key(
    private_key: str | None,
    keystore_path: str | None,
    keystore_password: str | None,
    in_process: bool,
) -> str:
    """The payout wallet's private key: the one given, or decrypted from the keystore, or (on
    the in-process chain only) the fixed test key. A JSON-RPC node needs a real wallet, so its
    absence there is a :class:`RailConfigError`, as are a key and a keystore both given."""
    from eth_account import Account

    if private_key and keystore_path:
        raise RailConfigError("give either a private key or a keystore, not both")
    if keystore_path:
        if keystore_password is None:
            raise RailConfigError("the keystore needs its password")
        keyfile = json.loads(Path(keystore_path).read_text())
        private_key = to_hex(bytes(Account.decrypt(keyfile, keystore_password)))
    if private_key is None:
        if not in_process:
            raise RailConfigError(
                "a JSON-RPC node needs the payout wallet: RESTITUTION_EVM_PRIVATE_KEY "
                "or RESTITUTION_EVM_KEYSTORE"
            )
        private_key = to_hex(hashlib.sha256(DEFAULT_TEST_KEY_SEED).digest())
    return private_key


class EvmWallet:
    """The payout wallet on one chain: identity, balances, fees, nonces and signing.

    Public attributes: ``w3`` (the web3 connection), ``lock`` (held while talking to the chain
    or signing: one rail is shared by threads), ``in_process``, ``tester`` and ``issuer`` (the
    in-process chain's EthereumTester and issuer account, None on a node), ``address`` (the
    wallet), ``token_address``, ``disperse_address``, ``max_priority_fee_wei``,
    ``receipt_timeout``."""

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

        self.lock = threading.RLock()
        self.in_process = rpc_url is None
        self.receipt_timeout = receipt_timeout
        self.w3, self.tester, self.issuer = connect(rpc_url)
        self._account = Account.from_key(
            wallet_key(private_key, keystore_path, keystore_password, self.in_process)
        )
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
        return f"{type(self).__name__}({where}, wallet={self.address}, token={self.token_address})"

    # ---------------------------------------------------------------- identity and balances

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def chain_identity(self) -> ChainIdentity:
        """(chain id, genesis block hash): record it with every payout."""
        with self.lock:
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

    def require_token(self) -> str:
        """The token contract's address, or :class:`RailConfigError` when there is none yet."""
        if self.token_address is None:
            raise RailConfigError("no token contract yet: call bootstrap() on the in-process chain")
        return self.token_address

    def require_disperse(self) -> str:
        """The disperse contract's address, or :class:`RailConfigError` when there is none."""
        if self.disperse_address is None:
            raise RailConfigError("no disperse contract: give its address or deploy_disperse()")
        return self.disperse_address

    def eth_call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        """What calling ``to`` with ``data`` returns at the latest block (``eth_call``: nothing
        is sent). A call that reverts raises one of ``revert_errors()``."""
        tx: dict[str, Any] = {"to": to, "data": to_hex(data)}
        if sender:
            tx["from"] = sender
        return bytes(self.w3.eth.call(tx, "latest"))

    def token_balance(self, address: str | None = None) -> int:
        who = address or self.address
        with self.lock:
            out = self.eth_call(self.require_token(), SEL_BALANCE_OF + address_word(who))
        return int.from_bytes(out, "big")

    def balances(self) -> dict[str, Any]:
        """The payout wallet: ``{"address", "token_micro", "gas_wei"}``."""
        with self.lock:
            gas = int(self.w3.eth.get_balance(self.address, "latest"))
            token = self.token_balance() if self.token_address else 0
        return {"address": self.address, "token_micro": token, "gas_wei": gas}

    def allowance(self) -> int:
        with self.lock:
            out = self.eth_call(
                self.require_token(),
                SEL_ALLOWANCE + address_word(self.address) + address_word(self.require_disperse()),
            )
        return int.from_bytes(out, "big")

    # ---------------------------------------------------------------- fees and funds

    def fees(self) -> tuple[int, int]:
        """(max fee per gas, max priority fee per gas) for the next transaction."""
        with self.lock:
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

    # ---------------------------------------------------------------- nonces and signing

    def next_nonce(self, at_least: int = 0) -> int:
        """The nonce for the next transaction: the highest of the chain's pending count, one
        past the highest nonce this process has signed with, and ``at_least`` (the payout
        layer's highest recorded nonce + 1, which survives restarts). Asking does not reserve:
        signing does. Signed transactions must be broadcast in nonce order (a gap holds back
        every later one). Callers that sign from several threads or processes for one wallet
        must serialize "next_nonce + sign + record" themselves (e.g. a row lock)."""
        with self.lock:
            chain = int(self.w3.eth.get_transaction_count(self.address, "pending"))
            return max(chain, self._local_next_nonce, at_least)

    def reset_nonce(self) -> None:
        """Forget the nonces signed in this process (what was signed was dropped, not sent)."""
        with self.lock:
            self._local_next_nonce = 0

    def sign_tx(
        self, to: str | None, data: bytes, nonce: int | None, gas: int, payouts: int
    ) -> SignedTx:
        """An EIP-1559 transaction from the wallet calling ``to`` with ``data`` (``to=None``
        deploys ``data`` as a contract), signed only — nothing is sent. Without a nonce it
        takes :meth:`next_nonce`; the nonce counts as used from now on. ``payouts`` is how many
        payouts the transaction carries (recorded on the :class:`SignedTx`)."""
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
