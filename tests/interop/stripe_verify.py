#!/usr/bin/env python3
"""Reference verifier using the OFFICIAL stripe PyPI package.

Usage: $HOOKBRIDGE_STRIPE_SDK/venv/bin/python stripe_verify.py \
           --secret SECRET --header HEADER [--tolerance SECONDS] < body

Calls stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
on the raw stdin bytes. Exit 0 + "ok" on stdout when valid; exit 1 + the SDK's
error message on stderr when not; exit 2 on usage error / SDK not installed.

Tolerance: omitted (None) or 0 = timestamp check DISABLED. The SDK checks
`if tolerance and timestamp < time.time() - tolerance`, so any falsy tolerance
skips it (verify_header defaults to None; construct_event would default to 300).
It only rejects timestamps that are too OLD; future timestamps always pass.
The SDK decodes bytes with strict UTF-8 (BOM kept), so a non-UTF-8 body fails
with UnicodeDecodeError, reported as exit 1.
"""
import argparse
import sys


def main() -> int:
    p = argparse.ArgumentParser(description="Verify a Stripe-Signature header with the official stripe SDK.")
    p.add_argument("--secret", required=True)
    p.add_argument("--header", required=True)
    p.add_argument("--tolerance", type=int, default=None,
                   help="seconds; omitted or 0 disables the timestamp check")
    a = p.parse_args()
    if a.tolerance is not None and a.tolerance < 0:
        p.error("--tolerance must be >= 0")

    try:
        import stripe
    except ImportError as e:
        print(f"stripe_verify.py: cannot import stripe ({e}); run with "
              "$HOOKBRIDGE_STRIPE_SDK/venv/bin/python after deploy/local/stripe-sdk.sh",
              file=sys.stderr)
        return 2

    payload = sys.stdin.buffer.read()
    try:
        stripe.WebhookSignature.verify_header(payload, a.header, a.secret, a.tolerance or None)
    except stripe.SignatureVerificationError as e:
        print(e.user_message or str(e), file=sys.stderr)
        return 1
    except UnicodeDecodeError as e:
        print(f"body is not valid UTF-8 ({e}); the Python SDK decodes the payload as strict UTF-8",
              file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
