#!/usr/bin/env node
// Batch verifier on the OFFICIAL stripe npm package, for the signature corpus (one process for
// every case).
// Usage: node verify_batch.js < cases.jsonl
// Each input line is a JSON object {"header": H, "secret": S, "body": B, "tolerance": SECS}; for
// each, one output line: "accept", or "reject<TAB>the SDK's message". It calls
// stripe.webhooks.signature.verifyHeader(body, header, secret, tolerance), which is what
// constructEvent calls before parsing the JSON. Exit 2 when the package cannot be loaded.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const dir = process.env.HOOKBRIDGE_STRIPE_SDK ||
  path.join(process.env.HOOKBRIDGE_CACHE || path.join(os.homedir(), '.cache', 'hookbridge'), 'stripe-sdk');
const mod = path.join(dir, 'node', 'node_modules', 'stripe');
let Stripe;
try {
  Stripe = require(mod);
} catch (e) {
  process.stderr.write(`verify_batch.js: cannot load the stripe npm package from ${mod} (run deploy/local/stripe-sdk.sh): ${e.message}\n`);
  process.exit(2);
}

const out = [];
for (const line of fs.readFileSync(0, 'utf8').split('\n')) {
  if (line === '') continue;
  const c = JSON.parse(line);
  try {
    Stripe.webhooks.signature.verifyHeader(c.body, c.header, c.secret, c.tolerance);
    out.push('accept');
  } catch (e) {
    out.push(`reject\t${String(e.message).split('\n')[0]}`);
  }
}
process.stdout.write(out.map((l) => `${l}\n`).join(''));
