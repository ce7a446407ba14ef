"""Payout rails: how money leaves the program's wallet (docs/payouts.md).

- :mod:`~claims.payouts.rails.evm` — ERC-20 transfers (one by one, or many in one transaction
  through a disperse contract) on an EVM chain: an in-process eth-tester/py-evm chain by
  default, or a JSON-RPC node; its encoding in :mod:`~claims.payouts.rails.evm_abi`, what it
  hands back and the bisection of a reverted batch in :mod:`~claims.payouts.rails.evm_batch`.
  :class:`~claims.payouts.rails.evm.EvmRail` stands on three layers, each built on the one
  before: :mod:`~claims.payouts.rails.evm_wallet` (connection, keys, nonces, fees, signing),
  :mod:`~claims.payouts.rails.evm_receipts` (receipts and reconciliation reads),
  :mod:`~claims.payouts.rails.evm_transfers` (building, simulating and sending transfers).
  It imports web3 only inside its functions.
- :mod:`~claims.payouts.rails.evm_exec` — the database-backed executor that pays a round's
  EVM payouts exactly once through the rail.
- :mod:`~claims.payouts.rails.custodian` — instructions for a custodian (TRON), and
  :mod:`~claims.payouts.rails.custodian_confirmations` — its confirmations imported.

This package's ``__init__`` stays import-free.
"""
