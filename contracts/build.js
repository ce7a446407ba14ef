// Compile the payout rail's contracts with solc-js (npm `solc`, pinned in package.json) and write
// ../claims/payouts/rails/evm_artifacts.json: ABI + creation bytecode of each contract, the compiler
// version and settings, and the sha256 of each source (a test checks they match the sources).
// Usage: cd contracts && npm ci && node build.js
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const SOURCES = ['TestUSDT.sol', 'Disperse.sol'];
// py-evm (eth-tester) runs Prague; mainnet and most EVM chains accept Shanghai code (PUSH0).
const EVM_VERSION = 'shanghai';
const OUT = path.join(__dirname, '..', 'claims', 'payouts', 'rails', 'evm_artifacts.json');

// viaIR: about 40% fewer EVM steps per payout than the legacy pipeline (py-evm runs each step
// in Python, so this is most of the in-process chain's cost per payout).
const settings = {
  evmVersion: EVM_VERSION,
  viaIR: true,
  optimizer: { enabled: true, runs: 1000 },
  metadata: { bytecodeHash: 'none' },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
};

const input = { language: 'Solidity', sources: {}, settings };
const sha256 = {};
for (const name of SOURCES) {
  const content = fs.readFileSync(path.join(__dirname, name), 'utf8');
  input.sources[name] = { content };
  sha256[name] = crypto.createHash('sha256').update(content, 'utf8').digest('hex');
}

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const contracts = {};
for (const name of SOURCES) {
  const contractName = path.basename(name, '.sol');
  const c = output.contracts[name][contractName];
  contracts[contractName] = { source: name, abi: c.abi, bytecode: '0x' + c.evm.bytecode.object };
}

const artifact = {
  generated_by: 'contracts/build.js — do not edit; rebuild with `make contracts`',
  compiler: { name: 'solc-js', version: solc.version() },
  settings: {
    evmVersion: settings.evmVersion,
    viaIR: settings.viaIR,
    optimizer: settings.optimizer,
    metadata: settings.metadata,
  },
  sources_sha256: sha256,
  contracts,
};
fs.writeFileSync(OUT, JSON.stringify(artifact, null, 2) + '\n');
console.log(`wrote ${path.relative(process.cwd(), OUT)} (solc ${solc.version()}, evm ${EVM_VERSION})`);
