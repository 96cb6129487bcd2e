"""Prints {topic: records ever appended} (the sum of high watermarks: the broker may drop old
records, so low watermarks move) for every topic on a broker, as JSON: bench/run.py diffs it
around each server's runs to show where each one routed its records (and that it wrote them).

Runs in the Python baseline's virtualenv, which has confluent-kafka (librdkafka) for this."""

import json
import sys

from confluent_kafka import Consumer, TopicPartition

consumer = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "aftercart-bench-count"})
counts = {}
for topic, meta in consumer.list_topics(timeout=10).topics.items():
    total = 0
    for partition in meta.partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        total += high
    counts[topic] = total
consumer.close()
print(json.dumps(counts))
