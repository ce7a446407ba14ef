"""Payout rails: how money leaves the program's wallet.

- ``claims.rails.evm`` — ERC-20 transfers (one by one, or many in one transaction through a
  disperse contract) on an EVM chain: an in-process eth-tester/py-evm chain by default, or a
  JSON-RPC node. It imports web3 only inside its functions, but nothing on the CLI's start-up
  path should import it anyway.

This package's ``__init__`` stays import-free so importing ``claims`` never loads web3.
"""
