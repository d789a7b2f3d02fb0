#!/usr/bin/env node
// Compile contracts/TestToken.sol with the npm `solc` package (offline) and write
// contracts/build/TestToken.json = {contractName, abi, bytecode, compiler}.
// Deterministic: same source + same solc version => byte-identical artifact.
//
// Usage: node contracts/build.js
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const CONTRACT = "TestToken";
const SOURCE_NAME = `${CONTRACT}.sol`;
const srcPath = path.join(__dirname, SOURCE_NAME);
const outDir = path.join(__dirname, "build");
const outPath = path.join(outDir, `${CONTRACT}.json`);

const input = {
  language: "Solidity",
  sources: { [SOURCE_NAME]: { content: fs.readFileSync(srcPath, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "paris", // no PUSH0 etc.: deployable on any EVM chain
    // Strip the IPFS metadata hash so the bytecode depends only on the code.
    metadata: { bytecodeHash: "none" },
    outputSelection: { [SOURCE_NAME]: { [CONTRACT]: ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) {
  process.stderr.write((e.formattedMessage || e.message) + "\n");
}
if (errors.length > 0) {
  process.exit(1);
}

const contract = output.contracts[SOURCE_NAME][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  // e.g. "solc-0.8.37+commit.f401782d" (drop the ".Emscripten.clang" platform suffix of solcjs)
  compiler: `solc-${solc.version().replace(/\.Emscripten\.clang$/, "")}`,
};

fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(outPath, JSON.stringify(artifact, null, 2) + "\n");
console.log(`wrote ${path.relative(process.cwd(), outPath)} (${artifact.compiler})`);
