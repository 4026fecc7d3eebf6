#!/usr/bin/env node
// Reference signer using the OFFICIAL stripe npm package:
//   stripe.webhooks.generateTestHeaderString({payload, secret, timestamp})
// Usage: node stripe_sign.js --secret SECRET [--timestamp T] < body
// Prints the Stripe-Signature header value ("t=T,v1=HEX") plus a newline.
// Exit 0 on success, 2 on usage error / unsupported input.
// The package is loaded from $HOOKBRIDGE_STRIPE_SDK/node/node_modules/stripe
// (default ${HOOKBRIDGE_CACHE:-$HOME/.cache/hookbridge}/stripe-sdk), no NODE_PATH needed.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const USAGE = 'usage: node stripe_sign.js --secret SECRET [--timestamp T] < body';

function die(msg) {
  process.stderr.write(`stripe_sign.js: ${msg}\n`);
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
  const m = /^--(secret|timestamp)$/.exec(argv[i]);
  if (!m || i + 1 >= argv.length) die(`bad arguments\n${USAGE}`);
  args[m[1]] = argv[i + 1];
}
if (args.secret === undefined) die(`--secret is required\n${USAGE}`);

let timestamp; // undefined -> the SDK uses the current time
if (args.timestamp !== undefined) {
  if (!/^-?[0-9]+$/.test(args.timestamp) || !Number.isSafeInteger(Number(args.timestamp))) {
    die(`--timestamp must be an integer, got ${JSON.stringify(args.timestamp)}`);
  }
  timestamp = Number(args.timestamp);
  // The SDK does `(opts.timestamp && Math.floor(opts.timestamp)) || now`, so 0
  // would silently become the current time: refuse rather than mislead.
  if (timestamp === 0) die('--timestamp 0 is unsupported: the SDK replaces it with the current time');
}

// The SDK signs the JS string `${timestamp}.${payload}` UTF-8 encoded; a Buffer
// payload would be stringified lossily (invalid UTF-8 -> U+FFFD). So decode the
// raw stdin bytes exactly (strict, keep a leading BOM) and pass the string.
let payload;
try {
  payload = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(fs.readFileSync(0));
} catch (e) {
  die('body is not valid UTF-8: the Node SDK signs the string form of the body and cannot sign it byte-exactly');
}

const Stripe = loadStripe();
const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: args.secret, timestamp });
process.stdout.write(header + '\n');
