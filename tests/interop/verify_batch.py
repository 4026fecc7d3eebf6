#!/usr/bin/env python3
"""Batch verifier on the OFFICIAL stripe PyPI package, for the signature corpus (one process for
every case).

Usage: $HOOKBRIDGE_STRIPE_SDK/venv/bin/python verify_batch.py < cases.jsonl

Each input line is a JSON object {"header": H, "secret": S, "body": B, "tolerance": SECS}; for
each, one output line: "accept", or "reject<TAB>the SDK's message". It calls
stripe.WebhookSignature.verify_header(body as UTF-8 bytes, header, secret, tolerance), which is
what construct_event calls before parsing the JSON. Exit 2 when the SDK cannot be imported.
"""
import json
import sys


def main() -> int:
    try:
        import stripe
    except ImportError as e:
        print(f"verify_batch.py: cannot import stripe ({e}); run with "
              "$HOOKBRIDGE_STRIPE_SDK/venv/bin/python after deploy/local/stripe-sdk.sh",
              file=sys.stderr)
        return 2
    for line in sys.stdin:
        case = json.loads(line)
        try:
            stripe.WebhookSignature.verify_header(
                case["body"].encode("utf-8"), case["header"], case["secret"], case["tolerance"])
            verdict = "accept"
        except stripe.SignatureVerificationError as e:
            message = (e.user_message or str(e)).splitlines()[0]
            verdict = f"reject\t{message}"
        print(verdict, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
