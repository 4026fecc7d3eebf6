"""Reads one message back as a CloudEvent with the CNCF CloudEvents SDK (PyPI `cloudevents`).

stdin: one JSON object {"binding": "kafka" | "amqp", "headers": {name: string},
"content_type": string or null, "key": string or null, "body": string (the payload)}.
stdout: {"attributes": {...}, "data": <the parsed payload>}, times in RFC 3339.
Exit 1 with the SDK's error on stderr when the SDK does not accept the message as a CloudEvent.
"""

import json
import sys
from datetime import datetime

from cloudevents.core.bindings import amqp, kafka
from cloudevents.core.formats.json import JSONFormat


def main() -> int:
    msg = json.load(sys.stdin)
    body = msg["body"].encode("utf-8")
    try:
        if msg["binding"] == "kafka":
            headers = {k: v.encode("utf-8") for k, v in msg["headers"].items()}
            key = msg.get("key")
            event = kafka.from_binary(
                kafka.KafkaMessage(headers=headers, key=key, value=body), JSONFormat()
            )
        elif msg["binding"] == "amqp":
            properties = {}
            if msg.get("content_type") is not None:
                properties["content-type"] = msg["content_type"]
            event = amqp.from_binary(
                amqp.AMQPMessage(
                    properties=properties,
                    application_properties=msg["headers"],
                    application_data=body,
                ),
                JSONFormat(),
            )
        else:
            print(f"unknown binding {msg['binding']!r}", file=sys.stderr)
            return 2
    except Exception as e:  # the SDK's validation errors have no common base class
        print(f"not a CloudEvent: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    attributes = {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in event.get_attributes().items()
    }
    json.dump({"attributes": attributes, "data": event.get_data()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
