"""The EVM rail's encoding, without web3: the contracts' artifacts, function selectors, ABI
words, address checks, revert data and the nonce of a raw transaction.

Importing this module is cheap; ``eth_utils``, ``eth_tester``, ``web3`` and ``rlp`` are
imported only inside the functions that need them."""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

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


@lru_cache(maxsize=1)
def load_artifacts() -> dict[str, Any]:
    """ABI + bytecode of TestUSDT and Disperse, built by ``make contracts`` (committed)."""
    return json.loads(ARTIFACTS_PATH.read_text())


def word(value: int) -> bytes:
    """``value`` as one 32-byte ABI word."""
    return value.to_bytes(32, "big")


_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_RE = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def check_address(address: str) -> str:
    """A valid 0x address as given; a mixed-case one must carry a correct EIP-55 checksum."""
    if not isinstance(address, str) or not _ADDRESS_RE.fullmatch(address):
        raise ValueError(f"not an EVM address: {address!r}")
    body = address[2:]
    if body != body.lower() and body != body.upper():
        from eth_utils import is_checksum_address

        if not is_checksum_address(address):
            raise ValueError(f"bad EIP-55 checksum: {address}")
    return address


def address_word(address: str) -> bytes:
    """A checked address as one 32-byte ABI word."""
    return bytes.fromhex(check_address(address)[2:]).rjust(32, b"\0")


def to_hex(b: bytes) -> str:
    return "0x" + b.hex()


def revert_data(exc: BaseException) -> str:
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


def explain_revert(exc: BaseException) -> tuple[str, int | None]:
    """Why a call reverted, in words, and the index of the failed transfer when Disperse
    says it (``TransferFailed(index)``)."""
    data = revert_data(exc)
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


def revert_errors() -> tuple[type[BaseException], ...]:
    """What a reverting ``eth_call`` / ``eth_estimateGas`` raises (JSON-RPC node, eth-tester)."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    return (ContractLogicError, TransactionFailed)


def raw_tx_nonce(raw: bytes) -> int:
    """The nonce of a signed transaction (typed EIP-2718 or legacy)."""
    import rlp

    typed = raw[0] <= 0x7F  # EIP-2718 type byte; a legacy transaction is an RLP list (>= 0xc0)
    fields = rlp.decode(raw[1:] if typed else raw)
    nonce = fields[1] if typed else fields[0]  # typed: [chainId, nonce, ...]
    return int.from_bytes(nonce, "big")
