// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title Tether USD (test) — a 6-decimal ERC-20 that behaves like USDT on Ethereum
/// @notice Like the real TetherToken, `transfer`, `transferFrom` and `approve` return NOTHING
///         (no bool), so callers must accept empty return data; a non-zero allowance must be set
///         to zero before it can be changed to another non-zero value; an allowance of
///         type(uint256).max is never decreased. Failures revert. The owner mints and may
///         blacklist an address: transfers from or to a blacklisted address revert (the
///         recipient check is what USDC does; it lets tests make one recipient of a batch fail).
contract TestUSDT {
    string public constant name = "Tether USD (test)";
    string public constant symbol = "USDT";
    uint8 public constant decimals = 6;

    address public owner;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    mapping(address => bool) public isBlackListed;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event AddedBlackList(address indexed user);
    event RemovedBlackList(address indexed user);

    modifier onlyOwner() {
        require(msg.sender == owner, "not owner");
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    function transfer(address to, uint256 value) external {
        _transfer(msg.sender, to, value);
    }

    function transferFrom(address from, address to, uint256 value) external {
        uint256 allowed = allowance[from][msg.sender];
        require(allowed >= value, "insufficient allowance");
        if (allowed != type(uint256).max) {
            allowance[from][msg.sender] = allowed - value;
        }
        _transfer(from, to, value);
    }

    function approve(address spender, uint256 value) external {
        // USDT: "To change the approve amount you first have to reduce the addresses'
        // allowance to zero by calling approve(_spender, 0) if it is not already 0".
        require(value == 0 || allowance[msg.sender][spender] == 0, "reset allowance to 0 first");
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
    }

    function mint(address to, uint256 value) external onlyOwner {
        require(to != address(0), "mint to zero address");
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function addBlackList(address user) external onlyOwner {
        isBlackListed[user] = true;
        emit AddedBlackList(user);
    }

    function removeBlackList(address user) external onlyOwner {
        isBlackListed[user] = false;
        emit RemovedBlackList(user);
    }

    function _transfer(address from, address to, uint256 value) private {
        require(to != address(0), "transfer to zero address");
        require(!isBlackListed[from], "sender blacklisted");
        require(!isBlackListed[to], "recipient blacklisted");
        uint256 bal = balanceOf[from];
        require(bal >= value, "insufficient balance");
        unchecked {
            balanceOf[from] = bal - value;
        }
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
