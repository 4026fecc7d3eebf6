#!/usr/bin/env node
// Reference verifier using the OFFICIAL stripe npm package:
//   stripe.webhooks.signature.verifyHeader(payload, header, secret, tolerance)
// i.e. exactly the check stripe.webhooks.constructEvent() runs, minus its final
// JSON.parse of the body (so non-JSON bodies can be verified too).
// Usage: node stripe_verify.js --secret SECRET --header HEADER [--tolerance SECONDS] < body
// Exit 0 + "ok" on stdout when valid; exit 1 + the SDK's error message on
// stderr when not; exit 2 on usage error.
// Tolerance: omitted or 0 = timestamp check DISABLED. In this SDK the check is
// `tolerance > 0 && age > tolerance` (and `tolerance ?? 300`), so 0 disables it
// (undefined/null would mean the 300 s default). Note it only rejects timestamps
// that are too OLD; future timestamps always pass.
// The package is loaded from $HOOKBRIDGE_STRIPE_SDK/node/node_modules/stripe
// (default ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/stripe-sdk), no NODE_PATH needed.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const USAGE = 'usage: node stripe_verify.js --secret SECRET --header HEADER [--tolerance SECONDS] < body';

function die(msg) {
  process.stderr.write(`stripe_verify.js: ${msg}\n`);
  process.exit(2);
}

function loadStripe() {
  const dir = process.env.HOOKBRIDGE_STRIPE_SDK ||
    path.join(process.env.HOOKBRIDGE_CACHE || path.join(os.homedir(), '.cache', 'hookbridge'),
      'stripe-sdk');
  const mod = path.join(dir, 'node', 'node_modules', 'stripe');
  try {
    return require(mod);
  } catch (e) {
    return die(`cannot load the stripe npm package from ${mod} (run deploy/local/stripe-sdk.sh): ${e.message}`);
  }
}

const args = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const m = /^--(secret|header|tolerance)$/.exec(argv[i]);
  if (!m || i + 1 >= argv.length) die(`bad arguments\n${USAGE}`);
  args[m[1]] = argv[i + 1];
}
if (args.secret === undefined) die(`--secret is required\n${USAGE}`);
if (args.header === undefined) die(`--header is required\n${USAGE}`);

let tolerance = 0; // 0 disables the SDK's timestamp check
if (args.tolerance !== undefined) {
  if (!/^[0-9]+$/.test(args.tolerance)) die(`--tolerance must be a non-negative integer, got ${JSON.stringify(args.tolerance)}`);
  tolerance = Number(args.tolerance);
}

// Payload: the SDK accepts a string or a Buffer. Given a Buffer it decodes with
// a default TextDecoder, which silently DROPS a leading UTF-8 BOM and replaces
// invalid UTF-8 with U+FFFD; given a string it rejects "" as "no payload".
// To verify the exact bytes received, pass the exactly-decoded string for any
// non-empty valid UTF-8 body, and the raw Buffer otherwise (empty body, or
// invalid UTF-8 -> the SDK's own, necessarily lossy, verdict).
const raw = fs.readFileSync(0);
let payload = raw;
let notUtf8 = false;
if (raw.length > 0) {
  try {
    payload = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
  } catch (e) {
    notUtf8 = true;
  }
}

const Stripe = loadStripe();
try {
  Stripe.webhooks.signature.verifyHeader(payload, args.header, args.secret, tolerance);
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  if (notUtf8) process.stderr.write('(note: body is not valid UTF-8; the Node SDK verifies its lossily decoded string form)\n');
  process.exit(1);
}
process.stdout.write('ok\n');
