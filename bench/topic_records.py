"""Prints, one JSON object a line, the few fields bench/latency.py needs of every record in some
topics: Kafka timestamp, the ingress's `aftercart-received-at` and the ids that link an output
record to the input that caused it. Reads each partition from its low to its high watermark as
they stand at start, with its own throwaway consumer (no group offsets are committed).

Runs in the Python baseline's virtualenv, which has confluent-kafka (librdkafka) for this, like
bench/topic_counts.py. Usage: topic_records.py BROKERS TOPIC...

No personal data is printed: ids and tokens only, never emails, names or addresses."""

import json
import sys
import uuid

from confluent_kafka import Consumer, TopicPartition


def fields(topic: str, value: bytes, headers: dict) -> dict:
    body = json.loads(value)
    if topic.startswith("shopify."):
        customer = body.get("customer") or {}
        return {"recv": headers.get("aftercart-received-at"), "wt": headers.get("shopify-topic"),
                "cart": body.get("cart_token") or body.get("token"),
                "id": body.get("id") if "orders" in topic else None,
                "cust": customer.get("id")}
    if topic.endswith("abandonments"):
        return {"type": body.get("type"), "kind": body.get("kind"), "cart": body.get("cart_token"),
                "checkout": body.get("checkout_token"), "last_activity_at": body.get("last_activity_at")}
    if topic.endswith("referral-invites"):
        return {"order": (body.get("order") or {}).get("id")}
    if topic.endswith("audience-batches"):
        return {"audience": body.get("audience"), "op": body.get("op"),
                "destination": body.get("destination"),
                "members": [[m.get("customer_id"), m.get("person")] for m in body.get("members", [])]}
    return {}


def main() -> None:
    brokers, topics = sys.argv[1], sys.argv[2:]
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"aftercart-bench-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    metadata = consumer.list_topics(timeout=10).topics
    remaining = {}
    assignment = []
    for topic in topics:
        if topic not in metadata:
            continue
        for partition in metadata[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                remaining[(topic, partition)] = high
                assignment.append(TopicPartition(topic, partition, low))
    consumer.assign(assignment)
    out = sys.stdout
    while remaining:
        messages = consumer.consume(1000, timeout=5)
        if not messages:
            raise SystemExit(f"no records for 5 s with {len(remaining)} partitions unread")
        for message in messages:
            if message.error():
                continue
            key = (message.topic(), message.partition())
            high = remaining.get(key)
            if high is None:
                continue
            if message.offset() + 1 >= high:
                del remaining[key]
            if message.offset() >= high:
                continue
            headers = {k: v.decode() for k, v in (message.headers() or []) if v is not None}
            try:
                record = fields(message.topic(), message.value(), headers)
            except (ValueError, TypeError, AttributeError):
                record = {"undecodable": True}
            record["t"] = message.topic()
            record["ts"] = message.timestamp()[1]
            record["p"] = message.partition()
            out.write(json.dumps(record) + "\n")
    consumer.close()


if __name__ == "__main__":
    main()
