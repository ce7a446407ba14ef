"""The EVM payout rail on the in-process chain (eth-tester / py-evm): TestUSDT + Disperse."""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claims.payouts.rails import evm
from claims.payouts.rails.evm import (
    MAX_UINT256,
    BatchOutcome,
    BroadcastError,
    ChainMismatch,
    EvmRail,
    NonceConsumed,
    Receipt,
    SignedTx,
    pay_with_bisect,
    split_evenly,
)

ROOT = Path(__file__).resolve().parents[2]
USDT = 1_000_000  # micro-USDT


def fresh_address() -> str:
    """A new recipient (mixed-case EIP-55, like addresses stored from claims)."""
    from eth_utils import to_checksum_address

    return to_checksum_address("0x" + secrets.token_bytes(20).hex())


def payouts_of(outcomes: list[BatchOutcome]) -> tuple[list, list]:
    paid = [item for o in outcomes if o.kind == "paid" for item in o.items]
    failed = [item for o in outcomes if o.kind == "failed" for item in o.items]
    return paid, failed


@pytest.fixture(scope="module")
def rail() -> EvmRail:
    r = EvmRail()
    r.bootstrap(10_000_000 * USDT)
    return r


# ------------------------------------------------------------------ build output and imports


def test_importing_the_rail_does_not_load_web3() -> None:
    code = (
        "import sys, claims.payouts.rails, claims.payouts.rails.evm; "
        "print(sorted(m for m in ('web3', 'eth_tester', 'eth', 'eth_account') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_committed_artifacts_match_the_solidity_sources() -> None:
    art = evm.load_artifacts()
    for name, digest in art["sources_sha256"].items():
        source = (ROOT / "contracts" / name).read_bytes()
        assert hashlib.sha256(source).hexdigest() == digest, f"rebuild: make contracts ({name})"
    pinned = json.loads((ROOT / "contracts" / "package.json").read_text())["dependencies"]["solc"]
    assert art["compiler"]["version"].startswith(pinned + "+")
    assert art["settings"]["evmVersion"] == "shanghai"
    for contract in ("TestUSDT", "Disperse"):
        assert art["contracts"][contract]["bytecode"].startswith("0x6")
        assert art["contracts"][contract]["abi"]
    # The token's ABI has no return value on transfer/transferFrom/approve, like USDT.
    abi = {f["name"]: f for f in art["contracts"]["TestUSDT"]["abi"] if f["type"] == "function"}
    for fn in ("transfer", "transferFrom", "approve"):
        assert abi[fn]["outputs"] == []


# ------------------------------------------------------------------ deployment and the token


def test_bootstrap_deploys_mints_and_approves(rail: EvmRail) -> None:
    bal = rail.balances()
    assert bal["address"] == rail.address
    assert bal["token_micro"] > 0
    assert bal["gas_wei"] > 10**18
    assert rail.allowance() == MAX_UINT256
    decimals = rail.eth_call(rail.token_address, bytes.fromhex("313ce567"))  # decimals()
    assert int.from_bytes(decimals, "big") == 6
    # A second ensure_allowance sends nothing.
    assert rail.ensure_allowance() == []


def test_the_token_returns_nothing_and_payments_still_work(rail: EvmRail) -> None:
    to = fresh_address()
    data = rail.transfer_data(to, 1)
    out = rail.eth_call(rail.token_address, data, sender=rail.address)
    assert out == b""  # no bool, like USDT on Ethereum
    signed = rail.sign_batch([to, fresh_address()], [3 * USDT, 4 * USDT], rail.next_nonce())
    receipt = rail.send_and_wait(signed)
    assert receipt.ok
    assert rail.token_balance(to) == 3 * USDT


def test_approve_needs_a_reset_to_zero_like_usdt() -> None:
    r = EvmRail()
    r.bootstrap(1 * USDT)
    assert r.allowance() == MAX_UINT256
    # Changing a non-zero allowance to another non-zero value reverts (USDT's rule) ...
    data = evm.SEL_APPROVE + evm.address_word(r.disperse_address) + evm.word(5)
    assert r.send_and_wait(r.sign_tx(r.token_address, data, r.next_nonce(), 100_000, 0)).status == 0
    # ... so ensure_allowance resets to 0 first when it must change it.
    data = evm.SEL_APPROVE + evm.address_word(r.disperse_address) + evm.word(0)
    assert r.send_and_wait(r.sign_tx(r.token_address, data, r.next_nonce(), 100_000, 0)).ok
    data = evm.SEL_APPROVE + evm.address_word(r.disperse_address) + evm.word(5)
    assert r.send_and_wait(r.sign_tx(r.token_address, data, r.next_nonce(), 100_000, 0)).ok
    assert r.allowance() == 5
    assert len(r.ensure_allowance()) == 2
    assert r.allowance() == MAX_UINT256


def test_disperse_refuses_a_token_address_without_code_and_mismatched_lengths(
    rail: EvmRail,
) -> None:
    # A call to an address without code "succeeds" with empty return data: without the
    # contract's check, a wrong token address would look like a paid batch.
    wrong = copy.copy(rail)
    wrong.token_address = fresh_address()
    sim = wrong.simulate_batch([fresh_address()], [USDT])
    assert not sim.ok and sim.failed_index is None
    data = bytearray(rail.batch_data([fresh_address(), fresh_address()], [USDT, USDT]))
    data[-32 * 2 - 1] = 1  # the length word of values[]: 2 -> 1
    with pytest.raises(evm.revert_errors()):
        rail.eth_call(rail.disperse_address, bytes(data), sender=rail.address)


# ------------------------------------------------------------------ single and batched payouts


def test_single_transfer_is_signed_first_then_broadcast(rail: EvmRail) -> None:
    to = fresh_address()
    before = rail.balances()["token_micro"]
    signed = rail.sign_transfer(to, 12_345_678, rail.next_nonce())
    assert isinstance(signed, SignedTx) and signed.raw_hex.startswith("0x02")
    # Signing sends nothing.
    assert rail.tx_status(signed.tx_hash) == "unknown"
    assert rail.token_balance(to) == 0
    assert rail.broadcast(signed.raw_hex) == signed.tx_hash
    receipt = rail.receipt(signed.tx_hash)
    assert receipt is not None and receipt.ok
    assert rail.tx_status(signed.tx_hash) == "mined_ok"
    (t,) = receipt.transfers
    assert (t.sender, t.to, t.value) == (rail.address.lower(), to.lower(), 12_345_678)
    assert t.token == rail.token_address.lower()
    assert rail.token_balance(to) == 12_345_678
    assert rail.balances()["token_micro"] == before - 12_345_678
    # Gas and fee are known per payout.
    assert 40_000 < receipt.gas_used < signed.gas_limit
    assert receipt.effective_gas_price >= 10**8
    assert receipt.fee_wei == receipt.gas_used * receipt.effective_gas_price
    assert receipt.per_payout() == [(receipt.gas_used, receipt.fee_wei)]
    assert rail.verify_transfer(signed.tx_hash, to, 12_345_678) == (True, "ok")


def test_batch_of_50_through_disperse(rail: EvmRail) -> None:
    recipients = [fresh_address() for _ in range(50)]
    amounts = [USDT + i * 1_001 for i in range(50)]
    signed = rail.sign_batch(recipients, amounts, rail.next_nonce())
    assert signed.payouts == 50
    receipt = rail.send_and_wait(signed)
    assert receipt.ok
    assert [(t.to, t.value) for t in receipt.transfers] == [
        (r.lower(), a) for r, a in zip(recipients, amounts, strict=True)
    ]
    assert all(t.sender == rail.address.lower() for t in receipt.transfers)
    assert (
        rail.verify_transfers(signed.tx_hash, list(zip(recipients, amounts, strict=True)))
        == [(True, "ok")] * 50
    )
    for r, a in zip(recipients[:5], amounts[:5], strict=True):
        assert rail.token_balance(r) == a
    shares = receipt.per_payout()
    assert len(shares) == 50
    assert sum(g for g, _ in shares) == receipt.gas_used
    assert sum(f for _, f in shares) == receipt.fee_wei


def test_gas_per_payout_in_a_batch_of_100_is_at_most_60_percent_of_a_transfer(
    rail: EvmRail,
) -> None:
    single = rail.send_and_wait(rail.sign_transfer(fresh_address(), USDT, rail.next_nonce()))
    recipients = [fresh_address() for _ in range(100)]
    batch = rail.send_and_wait(rail.sign_batch(recipients, [USDT] * 100, rail.next_nonce()))
    assert single.ok and batch.ok
    per_payout = batch.gas_used / 100
    ratio = per_payout / single.gas_used
    print(f"single {single.gas_used} gas, batch of 100: {per_payout:.0f} gas/payout ({ratio:.1%})")
    assert ratio <= 0.60
    assert batch.gas_used <= EvmRail.batch_gas_limit(100)


# ------------------------------------------------------------------ idempotent broadcast, nonces


def test_rebroadcast_is_harmless_and_the_nonce_is_not_reused(rail: EvmRail) -> None:
    to = fresh_address()
    mined_before = rail.w3.eth.get_transaction_count(rail.address)
    signed = rail.sign_transfer(to, 7 * USDT, rail.next_nonce())
    assert rail.broadcast(signed.raw_hex) == signed.tx_hash
    assert rail.broadcast(signed.raw_hex) == signed.tx_hash  # already mined: no error
    assert rail.broadcast(signed.raw_hex.removeprefix("0x")) == signed.tx_hash
    assert rail.token_balance(to) == 7 * USDT  # paid once
    assert rail.w3.eth.get_transaction_count(rail.address) == mined_before + 1
    assert rail.next_nonce() > signed.nonce
    assert not rail.is_expired(signed)


def test_pending_transaction_then_mined(rail: EvmRail) -> None:
    to = fresh_address()
    rail.set_auto_mine(False)
    try:
        signed = rail.sign_transfer(to, USDT, rail.next_nonce())
        rail.broadcast(signed.raw_hex)
        assert rail.tx_status(signed.tx_hash) == "pending"
        assert rail.receipt(signed.tx_hash, wait=False) is None
        assert rail.broadcast(signed.raw_hex) == signed.tx_hash  # known in the pool
        assert not rail.is_expired(signed)
        # A transaction behind a gap is refused, not "consumed".
        ahead = rail.sign_transfer(to, USDT, signed.nonce + 1)
        with pytest.raises(BroadcastError) as err:
            rail.broadcast(ahead.raw_hex)
        assert not isinstance(err.value, NonceConsumed)
        rail.mine()
    finally:
        rail.set_auto_mine(True)
    assert rail.tx_status(signed.tx_hash) == "mined_ok"
    assert rail.broadcast(ahead.raw_hex) == ahead.tx_hash
    assert rail.token_balance(to) == 2 * USDT


def test_a_transaction_whose_nonce_went_elsewhere_is_expired(rail: EvmRail) -> None:
    nonce = rail.next_nonce()
    first = rail.sign_transfer(fresh_address(), USDT, nonce)
    other = rail.sign_transfer(fresh_address(), 2 * USDT, nonce)  # same nonce, never sent
    assert not rail.is_expired(other)  # nothing mined at that nonce yet
    rail.send_and_wait(first)
    assert rail.is_expired(other)
    assert not rail.is_expired(first)
    assert rail.tx_status(other.tx_hash) == "unknown"
    with pytest.raises(NonceConsumed):
        rail.broadcast(other.raw_hex)


def test_next_nonce_follows_signing_and_respects_a_floor(rail: EvmRail) -> None:
    chain = rail.w3.eth.get_transaction_count(rail.address, "pending")
    assert rail.next_nonce() == rail.next_nonce() == chain  # asking reserves nothing
    first = rail.sign_transfer(fresh_address(), USDT)  # signing does
    assert first.nonce == chain
    assert rail.next_nonce() == chain + 1
    assert rail.next_nonce(at_least=chain + 10) == chain + 10
    rail.reset_nonce()  # the signed transaction was dropped, never sent
    assert rail.next_nonce() == chain
    rail.send_and_wait(rail.sign_transfer(fresh_address(), USDT))
    assert rail.next_nonce() == chain + 1


# ------------------------------------------------------------------ a reverted batch is bisected


def test_a_blacklisted_recipient_fails_alone_and_the_others_are_paid(rail: EvmRail) -> None:
    payments = [(fresh_address(), USDT + i) for i in range(20)]
    bad = payments[7]
    rail.blacklist(bad[0])
    sim = rail.simulate_batch([p[0] for p in payments], [p[1] for p in payments])
    assert not sim.ok and sim.failed_index == 7

    outcomes = rail.pay_batch_with_bisect(payments)
    paid, failed = payouts_of(outcomes)
    assert failed == [bad]
    assert sorted(paid) == sorted(p for p in payments if p != bad)
    assert outcomes[0].kind == "split" and outcomes[0].receipt.status == 0
    (failure,) = [o for o in outcomes if o.kind == "failed"]
    assert failure.signed is not None and rail.tx_status(failure.signed.tx_hash) == "reverted"
    assert rail.verify_transfer(failure.signed.tx_hash, bad[0], bad[1])[0] is False
    for to, amount in payments:
        assert rail.token_balance(to) == (0 if (to, amount) == bad else amount)
    for o in outcomes:
        if o.kind == "paid":
            assert all(ok for ok, _ in rail.verify_transfers(o.signed.tx_hash, o.items))


def test_simulation_isolates_a_bad_recipient_without_a_reverted_transaction(
    rail: EvmRail,
) -> None:
    payments = [(fresh_address(), 2 * USDT + i) for i in range(12)]
    bad = payments[11]
    rail.blacklist(bad[0])
    outcomes = rail.pay_batch_with_bisect(payments, simulate=True)
    paid, failed = payouts_of(outcomes)
    assert failed == [bad]
    assert sorted(paid) == sorted(payments[:11])
    assert all(o.kind != "split" for o in outcomes)
    (failure,) = [o for o in outcomes if o.kind == "failed"]
    assert failure.signed is None and "blacklisted" in failure.reason
    assert rail.token_balance(bad[0]) == 0


def _fake_chain(bad: set[int]):
    attempts: list[list[int]] = []

    def sign(chunk: list[int]) -> SignedTx:
        attempts.append(chunk)
        return SignedTx(raw_hex="0x", tx_hash=f"0x{len(attempts):064x}", nonce=len(attempts))

    def send(signed: SignedTx) -> Receipt:
        ok = not (set(attempts[signed.nonce - 1]) & bad)
        return Receipt(signed.tx_hash, 1 if ok else 0, signed.nonce, 21_000, 1)

    return attempts, sign, send


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=64),
    data=st.data(),
    use_predict=st.booleans(),
)
def test_bisection_pays_every_good_item_once_and_fails_each_bad_one_alone(
    n: int, data: st.DataObject, use_predict: bool
) -> None:
    bad = data.draw(st.sets(st.integers(min_value=0, max_value=n - 1), max_size=n))
    attempts, sign, send = _fake_chain(bad)
    predict = (lambda chunk: "would revert" if set(chunk) & bad else None) if use_predict else None
    outcomes = pay_with_bisect(
        list(range(n)), sign_and_store=sign, broadcast_and_wait=send, predict=predict
    )
    paid, failed = payouts_of(outcomes)
    assert sorted(paid) == [i for i in range(n) if i not in bad]
    assert sorted(failed) == sorted(bad)
    assert all(len(o.items) == 1 for o in outcomes if o.kind == "failed")
    if use_predict:
        assert all(not (set(a) & bad) for a in attempts)  # no doomed transaction sent
    else:
        # A good item is in at most 1 + log2(n) attempts; one bad item costs O(log n) attempts.
        assert len(attempts) <= 1 + 2 * len(bad) * max(1, n.bit_length())


def test_bisection_with_nothing_to_pay() -> None:
    assert pay_with_bisect([], sign_and_store=None, broadcast_and_wait=None) == []  # type: ignore[arg-type]


# ------------------------------------------------------------------ reconciliation


def test_verify_transfer_detects_wrong_recipient_amount_and_failures(rail: EvmRail) -> None:
    to, other = fresh_address(), fresh_address()
    signed = rail.sign_batch([to, to, other], [5 * USDT, 5 * USDT, 6 * USDT], rail.next_nonce())
    rail.send_and_wait(signed)
    h = signed.tx_hash
    assert rail.verify_transfer(h, to, 5 * USDT) == (True, "ok")
    assert rail.verify_transfer(h, to.lower(), 5 * USDT) == (True, "ok")
    ok, why = rail.verify_transfer(h, to, 5 * USDT + 1)
    assert not ok and "amount differs" in why
    ok, why = rail.verify_transfer(h, fresh_address(), 5 * USDT)
    assert not ok and "no transfer" in why
    # Two payouts of the same amount to one address need two events; three do not match.
    assert [ok for ok, _ in rail.verify_transfers(h, [(to, 5 * USDT)] * 3)] == [True, True, False]
    ok, why = rail.verify_transfer("0x" + "ab" * 32, to, 5 * USDT)
    assert not ok and "not found" in why
    # A transfer of another token or from another wallet is not a payout.
    stranger = copy.copy(rail)  # same chain and token, another wallet
    stranger.address = fresh_address()
    ok, why = stranger.verify_transfer(h, to, 5 * USDT)
    assert not ok and "not from the payout wallet" in why


def test_a_reverted_transfer_is_reported(rail: EvmRail) -> None:
    to = fresh_address()
    rail.blacklist(to)
    signed = rail.sign_transfer(to, USDT, rail.next_nonce())
    receipt = rail.send_and_wait(signed)
    assert receipt.status == 0 and receipt.transfers == ()
    assert receipt.fee_wei > 0  # a reverted transaction still costs gas
    assert rail.tx_status(signed.tx_hash) == "reverted"
    assert rail.verify_transfer(signed.tx_hash, to, USDT) == (
        False,
        f"transaction {signed.tx_hash} reverted",
    )
    assert rail.simulate_transfer(to, USDT).reason == "reverted: recipient blacklisted"


# ------------------------------------------------------------------ chain identity, settings


def test_chain_identity_is_stable_within_a_process_and_unique_per_chain(rail: EvmRail) -> None:
    ident = rail.chain_identity()
    chain_id, genesis = ident
    assert chain_id == rail.chain_id and genesis.startswith("0x") and len(genesis) == 66
    rail.send_and_wait(rail.sign_transfer(fresh_address(), USDT, rail.next_nonce()))
    assert rail.chain_identity() == ident
    rail.assert_same_chain(chain_id, genesis.upper().replace("0X", "0x"))
    other = EvmRail()
    assert other.chain_identity().genesis_hash != genesis
    with pytest.raises(ChainMismatch):
        other.assert_same_chain(chain_id, genesis)


def test_get_rail_returns_the_same_in_process_chain() -> None:
    evm.forget_rails()
    try:
        a = evm.get_rail()
        assert evm.get_rail() is a
        assert evm.get_rail(None, private_key="0x" + "42" * 32) is not a

        class FakeSettings:
            evm_rpc_url = None
            evm_private_key = None
            evm_keystore = None

        assert evm.rail_from_settings(FakeSettings()) is a
        assert "42" * 8 not in repr(evm.get_rail(None, private_key="0x" + "42" * 32))
    finally:
        evm.forget_rails()


def test_keystore_wallet_and_configuration_errors(tmp_path: Path) -> None:
    from eth_account import Account

    key = "0x" + secrets.token_bytes(32).hex()
    keyfile = tmp_path / "wallet.json"
    keyfile.write_text(json.dumps(Account.encrypt(key, "pw", kdf="pbkdf2", iterations=2)))
    r = EvmRail(keystore_path=str(keyfile), keystore_password="pw")
    assert r.address == Account.from_key(key).address
    with pytest.raises(evm.RailConfigError):
        EvmRail(keystore_path=str(keyfile))
    with pytest.raises(evm.RailConfigError):
        EvmRail(private_key=key, keystore_path=str(keyfile), keystore_password="pw")
    with pytest.raises(evm.RailConfigError):
        EvmRail("http://127.0.0.1:1", token_address="0x" + "11" * 20)  # no wallet
    with pytest.raises(evm.RailConfigError):
        EvmRail("http://127.0.0.1:1", private_key=key)  # no token
    with pytest.raises(evm.InProcessOnly):
        EvmRail("http://127.0.0.1:1", private_key=key, token_address="0x" + "11" * 20).mint(
            "0x" + "22" * 20, 1
        )


def test_amounts_and_addresses_are_checked(rail: EvmRail) -> None:
    to = fresh_address()
    for bad_amount in (0, -1, 1.5, True, 2**255):
        with pytest.raises((TypeError, ValueError)):
            rail.transfer_data(to, bad_amount)  # type: ignore[arg-type]
    eip55 = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
    assert rail.transfer_data(eip55, 1) == rail.transfer_data(eip55.lower(), 1)
    with pytest.raises(ValueError, match="checksum"):
        rail.transfer_data("0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed", 1)
    for bad_address in ("0x123", "", "0x" + "zz" * 20, to[2:]):
        with pytest.raises(ValueError):
            rail.transfer_data(bad_address, 1)
    with pytest.raises(ValueError):
        rail.batch_data([to], [1, 2])


def test_check_funds_reports_an_underfunded_wallet() -> None:
    r = EvmRail()
    r.bootstrap(100 * USDT, gas_wei=10**16)
    assert r.check_funds(100 * USDT, 10, 10) == []
    problems = r.check_funds(100 * USDT + 1, 500, 100)
    assert any("holds 100 USDT, 100.000001 needed" in p for p in problems)
    assert any("for gas" in p for p in problems)


def test_split_evenly_adds_up() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(2**70 + 5, 7)) == 2**70 + 5


# ------------------------------------------------------------------ a real JSON-RPC node (anvil)

ANVIL_KEYS = (  # anvil's well-known development accounts 0 (issuer) and 1 (payout wallet)
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
)


def _anvil_binary() -> str | None:
    found = sorted((ROOT / "contracts" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil"))
    return str(found[0]) if found else shutil.which("anvil")


@pytest.fixture(scope="module")
def anvil():
    """A local JSON-RPC dev node (npm @foundry-rs/anvil, installed by `cd contracts && npm ci`),
    with TestUSDT deployed by account 0 and a rail paying from account 1."""
    binary = _anvil_binary()
    if binary is None:
        pytest.skip("anvil not installed: cd contracts && npm ci")
    import socket
    import time

    from web3 import Web3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--chain-id", "31337", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        w3 = Web3(Web3.HTTPProvider(url))
        for _ in range(100):
            if w3.is_connected():
                break
            time.sleep(0.1)
        issuer = w3.eth.accounts[0]
        art = evm.load_artifacts()["contracts"]
        tx = w3.eth.send_transaction({"from": issuer, "data": art["TestUSDT"]["bytecode"]})
        token = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]

        def issue(data: bytes) -> None:
            h = w3.eth.send_transaction({"from": issuer, "to": token, "data": "0x" + data.hex()})
            assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1

        rail = EvmRail(url, private_key=ANVIL_KEYS[1], token_address=token)
        issue(evm.SEL_MINT + evm.address_word(rail.address) + evm.word(1_000_000 * USDT))
        yield rail, w3, issue
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_on_a_json_rpc_node_batches_rebroadcasts_and_reconciles(anvil) -> None:
    rail, w3, issue = anvil
    assert rail.chain_identity().chain_id == 31337
    with pytest.raises(evm.RailConfigError):
        rail.sign_batch([fresh_address()], [1])
    rail.deploy_disperse()
    rail.ensure_allowance()
    assert rail.allowance() == MAX_UINT256
    recipients = [fresh_address() for _ in range(20)]
    amounts = [USDT + i for i in range(20)]
    signed = rail.sign_batch(recipients, amounts)  # gas from the node's estimate
    assert rail.tx_status(signed.tx_hash) == "unknown"
    assert rail.broadcast(signed.raw_hex) == signed.tx_hash
    assert rail.broadcast(signed.raw_hex) == signed.tx_hash
    receipt = rail.receipt(signed.tx_hash)
    assert receipt.ok and len(receipt.transfers) == 20 and receipt.gas_used <= signed.gas_limit
    assert (
        rail.verify_transfers(signed.tx_hash, list(zip(recipients, amounts, strict=True)))
        == [(True, "ok")] * 20
    )
    assert not rail.verify_transfer(signed.tx_hash, recipients[0], amounts[0] + 1)[0]
    assert rail.token_balance(recipients[3]) == amounts[3]
    # The same nonce signed again can never be mined.
    other = rail.sign_transfer(fresh_address(), USDT, signed.nonce)
    assert rail.is_expired(other) and not rail.is_expired(signed)
    with pytest.raises(NonceConsumed):
        rail.broadcast(other.raw_hex)


def test_on_a_json_rpc_node_pending_and_bisection(anvil) -> None:
    rail, w3, issue = anvil
    if rail.disperse_address is None:
        rail.deploy_disperse()
        rail.ensure_allowance()
    w3.provider.make_request("evm_setAutomine", [False])
    try:
        signed = rail.sign_transfer(fresh_address(), USDT)
        rail.broadcast(signed.raw_hex)
        assert rail.tx_status(signed.tx_hash) == "pending"
        assert rail.receipt(signed.tx_hash, wait=False) is None
        assert rail.broadcast(signed.raw_hex) == signed.tx_hash  # "already known" is fine
        assert rail.next_nonce() == signed.nonce + 1
        w3.provider.make_request("evm_mine", [])
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
    assert rail.tx_status(signed.tx_hash) == "mined_ok"

    payments = [(fresh_address(), USDT + i) for i in range(8)]
    bad = payments[5]
    issue(evm.SEL_ADD_BLACKLIST + evm.address_word(bad[0]))
    # The node's gas estimate reverts for a chunk with the bad recipient: no gas is spent.
    outcomes = rail.pay_batch_with_bisect(payments)
    paid, failed = payouts_of(outcomes)
    assert failed == [bad] and sorted(paid) == sorted(p for p in payments if p != bad)
    assert all(o.kind != "split" for o in outcomes)
    assert "blacklisted" in [o for o in outcomes if o.kind == "failed"][0].reason
