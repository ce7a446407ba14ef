// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title Disperse — many ERC-20 transfers in one transaction, all or nothing
/// @notice `disperseToken` moves `values[i]` of `token` from the caller to `recipients[i]` with
///         `transferFrom(msg.sender, recipients[i], values[i])`; the caller must first approve
///         this contract. Tokens never rest here. It only ever spends the caller's own tokens.
///         Tokens that return nothing (USDT on Ethereum) and tokens that return a bool are both
///         accepted; `false` or a revert from any single transfer reverts the whole batch with
///         `TransferFailed(index)` naming the first recipient that failed.
contract Disperse {
    error LengthMismatch();
    error NotAContract();
    error TransferFailed(uint256 index);

    function disperseToken(address token, address[] calldata recipients, uint256[] calldata values)
        external
    {
        uint256 n = recipients.length;
        if (n != values.length) revert LengthMismatch();
        // A call to an address without code "succeeds" with empty return data: refuse it.
        if (token.code.length == 0) revert NotAContract();
        for (uint256 i = 0; i < n; ++i) {
            (bool ok, bytes memory ret) = token.call(
                abi.encodeWithSelector(0x23b872dd, msg.sender, recipients[i], values[i])
            );
            // SafeERC20: success, and either no return data or a decoded `true`.
            if (!ok || (ret.length != 0 && !abi.decode(ret, (bool)))) revert TransferFailed(i);
        }
    }
}
