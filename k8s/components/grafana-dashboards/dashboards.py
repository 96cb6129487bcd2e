#!/usr/bin/env python3
"""Generates aftercart's Grafana dashboards (the *.json files beside this script).

Run `make dashboards` after editing; `make test-ops` fails when the JSON is out of date, and
evaluates every panel expression against a real Prometheus scraping the dev stack.

Panels use only the metrics the services export (never recording rules), so the dashboards work
on a Prometheus without aftercart's PrometheusRule. Every query filters on the `namespace`
variable; `$__rate_interval` and `$__range` are Grafana's built-ins.

A new service: write a function like `abandonment()` below returning its dashboard, add it to
DASHBOARDS, and add a configMapGenerator entry in kustomization.yaml.
Standard library only.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"


def target(expr, legend=""):
    return {"expr": expr, "legendFormat": legend}


def timeseries(title, description, targets, unit="short", width=12, stacked=False):
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(*t) for t in targets],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "stacking": {"mode": "normal" if stacked else "none"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (width, 8),
    }


def stat(title, description, expr, unit="short", width=6, thresholds=None):
    steps = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in (thresholds or [])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "_size": (width, 4),
    }


def bars(title, description, expr, legend, unit="short", width=8):
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [{**target(expr, legend), "instant": True}],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"orientation": "horizontal", "displayMode": "basic"},
        "_size": (width, 8),
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def dashboard(uid, title, description, panels, tags=()):
    """Lays the panels out left to right, wrapping at Grafana's 24 columns."""
    x = y = line_height = 0
    laid_out = []
    for number, panel in enumerate(panels, start=1):
        width, height = panel.pop("_size")
        if x + width > 24 or panel["type"] == "row":
            x, y, line_height = 0, y + line_height, 0
        panel["id"] = number
        panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
        laid_out.append(panel)
        x += width
        line_height = max(line_height, height)
        if panel["type"] == "row":
            x, y, line_height = 0, y + height, 0
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["aftercart", *tags],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "title": "aftercart dashboards",
                "type": "dashboards",
                "tags": ["aftercart"],
                "asDropdown": True,
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                },
                {
                    "name": "namespace",
                    "label": "Namespace",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(aftercart_ingress_build_info, namespace)",
                        "refId": "namespace",
                    },
                    "definition": "label_values(aftercart_ingress_build_info, namespace)",
                    "refresh": 2,
                    "includeAll": True,
                    "allValue": ".*",
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": laid_out,
    }


def quantiles(metric, selector, by="le", levels=(0.5, 0.9, 0.99)):
    return [
        (
            f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)}",
        )
        for q in levels
    ]


def overview():
    req = "aftercart_ingress_requests_total"
    # `or vector(0)`: 0 rather than no data while nothing has been answered 5xx.
    five_xx_ratio = (f'(sum(rate({req}{{{NS},status=~"5.."}}[{RATE}])) or vector(0))'
                     f" / sum(rate({req}{{{NS}}}[{RATE}]))")
    return dashboard(
        "aftercart-overview",
        "aftercart / Overview",
        "Webhook ingress: traffic, errors, latency against Shopify's 5 s budget, signatures, Kafka delivery, the spool.",
        [
            row("Webhooks"),
            stat("Webhooks/s", "Requests answered per second, every status.",
                 f"sum(rate({req}{{{NS}}}[{RATE}]))", unit="reqps"),
            stat("5xx ratio", "Share of requests answered 503 (Kafka slow or queue full). Alert above 5%.",
                 five_xx_ratio,
                 unit="percentunit", thresholds=[(0.01, "orange"), (0.05, "red")]),
            stat("p99 latency", "99th percentile time to answer (408 excluded). Shopify gives up at 5 s.",
                 f'histogram_quantile(0.99, sum by (le) (rate(aftercart_ingress_request_duration_seconds_bucket{{{NS},status!="408"}}[{RATE}])))',
                 unit="s", thresholds=[(1, "orange"), (2.5, "red")]),
            stat("In flight", "Requests being handled right now, all replicas.",
                 f"sum(aftercart_ingress_in_flight_requests{{{NS}}})"),
            timeseries("Webhooks/s by family", "Answered requests by topic family (unknown: wrong path or method).",
                       [(f"sum by (family) (rate({req}{{{NS}}}[{RATE}]))", "{{family}}")], unit="reqps", stacked=True),
            timeseries("Webhooks/s by status", "200 accepted/duplicate/quarantined, 401 signature, 400 headers, 413 size, 408 slow body, 503 Kafka.",
                       [(f"sum by (status) (rate({req}{{{NS}}}[{RATE}]))", "{{status}}")], unit="reqps", stacked=True),
            timeseries("Answer latency", "Time from arrival to answer (408 excluded), against the 5 s Shopify budget.",
                       quantiles("aftercart_ingress_request_duration_seconds", f'{NS},status!="408"'), unit="s"),
            timeseries("5xx ratio", "Share of requests answered 5xx.",
                       [(five_xx_ratio, "5xx")],
                       unit="percentunit"),
            row("Signatures and deduplication"),
            timeseries("HMAC failures/s", "401 answers by reason: missing, malformed or mismatching signature.",
                       [(f"sum by (reason) (rate(aftercart_ingress_hmac_failures_total{{{NS}}}[{RATE}]))", "{{reason}}")],
                       unit="reqps", width=8),
            timeseries("Duplicates and quarantine/s", "Redeliveries answered from the dedupe window; authentic bodies that were not JSON objects.",
                       [(f"sum(rate(aftercart_ingress_duplicates_total{{{NS}}}[{RATE}]))", "duplicates"),
                        (f"sum by (reason) (rate(aftercart_ingress_quarantined_total{{{NS}}}[{RATE}]))", "quarantined {{reason}}")],
                       unit="reqps", width=8),
            timeseries("Dedupe window ids", "Webhook ids remembered, per replica (about 30 bytes each).",
                       [(f"sum by (pod, instance) (aftercart_ingress_dedupe_window_ids{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            row("Kafka delivery"),
            timeseries("Publish latency", "Time from handing a record to the producer to Kafka's acknowledgement (acks=all).",
                       quantiles("aftercart_ingress_publish_duration_seconds", NS), unit="s", width=8),
            timeseries("Delivery errors/s", "Records Kafka did not acknowledge: timeout, kafka (refused) or queue_full (backpressure).",
                       [(f"sum by (reason) (rate(aftercart_ingress_publish_errors_total{{{NS}}}[{RATE}]))", "{{reason}}")],
                       unit="reqps", width=8),
            timeseries("Producer queue", "Messages waiting for a delivery report in librdkafka, per replica.",
                       [(f"sum by (pod, instance) (aftercart_ingress_kafka_queue_messages{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Producer queue bytes", "Bytes waiting for a delivery report, per replica.",
                       [(f"sum by (pod, instance) (aftercart_ingress_kafka_queue_bytes{{{NS}}})", "{{pod}} {{instance}}")],
                       unit="bytes", width=8),
            timeseries("Brokers up", "1 when every replica's connection to the broker is up (min over replicas).",
                       [(f"min by (broker) (aftercart_ingress_kafka_broker_up{{{NS}}})", "{{broker}}")], width=8),
            timeseries("Broker round trip", "Producer request round trip per broker, worst replica.",
                       [(f"max by (broker) (aftercart_ingress_kafka_broker_rtt_p99_seconds{{{NS}}})", "p99 {{broker}}"),
                        (f"max by (broker) (aftercart_ingress_kafka_broker_rtt_avg_seconds{{{NS}}})", "avg {{broker}}")],
                       unit="s", width=8),
            timeseries("Broker requests waiting", "Requests queued or in flight to each broker, all replicas.",
                       [(f"sum by (broker) (aftercart_ingress_kafka_broker_requests_waiting{{{NS}}})", "{{broker}}")], width=12),
            timeseries("Versions running", "Replicas per aftercart version (watch a rollout).",
                       [(f"count by (version) (aftercart_ingress_build_info{{{NS}}})", "ingress {{version}}"),
                        (f"count by (version) (aftercart_abandonment_build_info{{{NS}}})", "abandonment {{version}}"),
                        (f"count by (version) (aftercart_referrals_build_info{{{NS}}})", "referrals {{version}}"),
                        (f"count by (version) (aftercart_audiences_build_info{{{NS}}})", "audiences {{version}}")],
                       width=12),
            *spool(),
        ],
        tags=("ingress",),
    )


def spool():
    """The ingress spool: webhooks Kafka did not acknowledge in AFTERCART_INGRESS_SPOOL_AFTER, fsynced to
    each pod's volume and answered 200, until the drainer publishes them. Per pod where the
    volume is what matters (fill, age), summed where the flow is."""
    sp = "aftercart_ingress_spool_"
    return [
        row("Spool"),
        stat("Spooled events", "Webhooks answered 200 from the spool and not yet in Kafka, all pods.",
             f"sum({sp}pending_events{{{NS}}})", thresholds=[(1, "orange")]),
        stat("Fullest spool", "Bytes over AFTERCART_INGRESS_SPOOL_MAX_BYTES on the fullest pod; a full spool answers 503.",
             f"max({sp}bytes{{{NS}}} / {sp}max_bytes{{{NS}}})",
             unit="percentunit", thresholds=[(0.5, "orange"), (0.8, "red")]),
        stat("Oldest spooled event", "Age of the oldest webhook still waiting in a spool (0 when empty).",
             f"max({sp}oldest_age_seconds{{{NS}}})", unit="s", thresholds=[(300, "orange"), (1800, "red")]),
        stat("Spools unavailable", "Pods whose spool is off or failed on disk errors (webhooks go straight to "
             "Kafka while it is healthy, else 503).",
             f"sum(1 - {sp}available{{{NS}}})", thresholds=[(1, "red")]),
        timeseries("Spooled events", "Webhooks waiting in each pod's spool for Kafka.",
                   [(f"sum by (pod, instance) ({sp}pending_events{{{NS}}})", "{{pod}} {{instance}}")], width=8),
        timeseries("Spool bytes vs limit", "Bytes in each pod's spool, and its AFTERCART_INGRESS_SPOOL_MAX_BYTES.",
                   [(f"sum by (pod, instance) ({sp}bytes{{{NS}}})", "{{pod}} {{instance}}"),
                    (f"max({sp}max_bytes{{{NS}}})", "limit")],
                   unit="bytes", width=8),
        timeseries("Spooled vs drained/s", "Appends (Kafka slow or away) against records the drainer published; "
                   "appends with no drain: Kafka is away.",
                   [(f"sum(rate({sp}appended_total{{{NS}}}[{RATE}]))", "spooled"),
                    (f"sum(rate({sp}drained_total{{{NS}}}[{RATE}]))", "drained")],
                   unit="rps", width=8),
        timeseries("Oldest spooled event", "Age of the oldest waiting webhook per pod: how late consumers see it.",
                   [(f"max by (pod, instance) ({sp}oldest_age_seconds{{{NS}}})", "{{pod}} {{instance}}")],
                   unit="s", width=8),
        timeseries("Spool fsync latency", "Time of each group-commit fsync: a spooled webhook's answer waits for it.",
                   quantiles(f"{sp}fsync_duration_seconds", NS, levels=(0.5, 0.99)), unit="s", width=8),
        stat("Damaged spool skipped", "Torn or corrupt spool bytes the running pods skipped, at start or while "
             "draining (a copy of a damaged segment is kept in the spool's damaged/ directory).",
             f"sum({sp}corrupt_bytes_total{{{NS}}})", unit="bytes", width=8, thresholds=[(1, "orange")]),
        timeseries("Spool rejections and bypasses/s by reason", "Webhooks the spool could not take (full, "
                   "disk_error, disabled): answered 503, or published straight to Kafka while it was healthy "
                   "(bypassed).",
                   [(f"sum by (reason) (rate({sp}rejected_total{{{NS}}}[{RATE}]))", "503 {{reason}}"),
                    (f"sum by (reason) (rate({sp}bypassed_total{{{NS}}}[{RATE}]))", "bypassed {{reason}}")],
                   unit="reqps", width=12),
        timeseries("Spool errors/s by op", "Spool volume errors: open, write, fsync (answered 503), read, remove (drain delayed).",
                   [(f"sum by (op) (rate({sp}errors_total{{{NS}}}[{RATE}]))", "{{op}}")],
                   unit="ops", width=12),
    ]


def abandonment():
    ab = "aftercart_abandonment_"
    lag_by_partition = f"max by (topic, partition) ({ab}consumer_lag_records{{{NS}}})"
    return dashboard(
        "aftercart-abandonment",
        "aftercart / Abandonment service",
        "Consumer group aftercart-abandonment: throughput, lag, state held, restores and dead letters.",
        [
            row("Throughput"),
            stat("Records/s", "Input records processed, every topic.",
                 f"sum(rate({ab}records_processed_total{{{NS}}}[{RATE}]))", unit="rps"),
            stat("Consumer lag", "Records behind the end of the journey topics, whole group.",
                 f"sum({lag_by_partition})", thresholds=[(1000, "orange"), (100000, "red")]),
            stat("Journeys in state", "Open journeys held in memory, all instances.",
                 f"sum({ab}journeys_tracked{{{NS}}})"),
            stat("Dead letters (range)", "Records sent to the dead-letter topic over the dashboard's time range.",
                 f"sum(increase({ab}dead_letters_total{{{NS}}}[$__range]))", thresholds=[(1, "red")]),
            timeseries("Records processed/s by topic", "checkouts, carts, orders by partition; customers and compliance read in full by every instance.",
                       [(f"sum by (topic) (rate({ab}records_processed_total{{{NS}}}[{RATE}]))", "{{topic}}")],
                       unit="rps", stacked=True),
            timeseries("Events emitted/s", "Abandonment and recovery events written to aftercart.abandonments.",
                       [(f"sum by (kind) (rate({ab}abandonments_total{{{NS}}}[{RATE}]))", "abandoned {{kind}}"),
                        (f"sum by (kind) (rate({ab}recoveries_total{{{NS}}}[{RATE}]))", "recovered {{kind}}")],
                       unit="rps"),
            row("Lag"),
            timeseries("Consumer lag by topic", "Records behind, per journey topic (max per partition over instances, summed).",
                       [(f"sum by (topic) ({lag_by_partition})", "{{topic}}")]),
            timeseries("Consumer lag by partition", "Find a stuck partition.",
                       [(lag_by_partition, "{{topic}}/{{partition}}")]),
            row("State"),
            timeseries("Assigned partitions", "Journey partitions owned per instance: 0 everywhere means the group is empty or rebalancing.",
                       [(f"sum by (pod, instance) ({ab}assigned_partitions{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Journeys in state", "Open journeys held per instance (about 1.9 KB each).",
                       [(f"sum by (pod, instance) ({ab}journeys_tracked{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Changelog writes/s", "Journey states written to the compacted changelog.",
                       [(f"sum(rate({ab}changelog_records_written_total{{{NS}}}[{RATE}]))", "changelog")], unit="rps", width=8),
            timeseries("State restore time", "Time to restore one partition from the changelog on assignment.",
                       quantiles(f"{ab}state_restore_duration_seconds", NS, levels=(0.5, 0.99)), unit="s"),
            timeseries("Records restored/s", "Changelog records read while restoring (spikes on rebalances).",
                       [(f"sum(rate({ab}state_restored_records_total{{{NS}}}[{RATE}]))", "restored")], unit="rps"),
            row("Errors"),
            timeseries("Dead letters/s", "Records written to aftercart.abandonment-dead-letter (alert on any).",
                       [(f"sum(rate({ab}dead_letters_total{{{NS}}}[{RATE}]))", "dead letters")], unit="rps"),
            timeseries("Unusable records/s", "Records that could not be used, by topic and reason (customers/compliance ones are not dead-lettered).",
                       [(f"sum by (topic, reason) (rate({ab}records_failed_total{{{NS}}}[{RATE}]))", "{{topic}} {{reason}}")],
                       unit="rps"),
        ],
        tags=("abandonment",),
    )


def referrals():
    rf = "aftercart_referrals_"
    lag_by_partition = f"max by (topic, partition) ({rf}consumer_lag_records{{{NS}}})"
    return dashboard(
        "aftercart-referrals",
        "aftercart / Referrals service",
        "Consumer group aftercart-referrals: routing by shop, throughput, lag, state held, "
        "invite and reward decisions, restores and dead letters.",
        [
            row("Throughput"),
            stat("Records/s", "Routed records applied to the state, every topic family.",
                 f"sum(rate({rf}records_processed_total{{{NS}}}[{RATE}]))", unit="rps"),
            stat("Consumer lag", "Records behind the end of the inputs (orders, customers, compliance, by_shop), whole group.",
                 f"sum({lag_by_partition})", thresholds=[(1000, "orange"), (100000, "red")]),
            stat("Rewards in review", "Rewards pending in their review window (AFTERCART_REFERRALS_REVIEW_WINDOW), all instances.",
                 f"sum({rf}rewards_in_review{{{NS}}})"),
            stat("Dead letters (range)", "Records sent to aftercart.referrals-dead-letter over the dashboard's time range.",
                 f"sum(increase({rf}dead_letters_total{{{NS}}}[$__range]))", thresholds=[(1, "red")]),
            timeseries("Records routed and processed/s", "Shopify records forwarded to aftercart.referrals-by-shop (routed), and by-shop records applied, by topic family.",
                       [(f"sum(rate({rf}records_routed_total{{{NS}}}[{RATE}]))", "routed"),
                        (f"sum by (topic) (rate({rf}records_processed_total{{{NS}}}[{RATE}]))", "processed {{topic}}")],
                       unit="rps"),
            timeseries("Events emitted/s", "Invites written to aftercart.referral-invites; reward events to aftercart.referral-rewards, by type.",
                       [(f"sum(rate({rf}invites_total{{{NS}}}[{RATE}]))", "invites"),
                        (f"sum by (type) (rate({rf}rewards_total{{{NS}}}[{RATE}]))", "reward {{type}}")],
                       unit="rps"),
            row("Lag"),
            timeseries("Consumer lag by topic", "Records behind, per input (max per partition over instances, summed).",
                       [(f"sum by (topic) ({lag_by_partition})", "{{topic}}")]),
            timeseries("Consumer lag by partition", "Find a stuck partition (by_shop: one very large shop sits on one partition).",
                       [(lag_by_partition, "{{topic}}/{{partition}}")]),
            row("State"),
            timeseries("Assigned partitions", "By-shop partitions owned per instance: 0 everywhere means the group is empty or rebalancing.",
                       [(f"sum by (pod, instance) ({rf}assigned_partitions{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Customers and orders in state", "Customers and orders held in memory per instance (what the memory limit must fit).",
                       [(f"sum by (pod, instance) ({rf}customers_tracked{{{NS}}})", "customers {{pod}} {{instance}}"),
                        (f"sum by (pod, instance) ({rf}orders_tracked{{{NS}}})", "orders {{pod}} {{instance}}")], width=8),
            timeseries("Rewards in review", "Rewards pending in their review window, per instance.",
                       [(f"sum by (pod, instance) ({rf}rewards_in_review{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Changelog writes/s", "Customer, order and IP-window states written to the compacted changelog.",
                       [(f"sum(rate({rf}changelog_records_written_total{{{NS}}}[{RATE}]))", "changelog")], unit="rps", width=8),
            timeseries("State restore time", "Time to restore one partition from the changelog on assignment.",
                       quantiles(f"{rf}state_restore_duration_seconds", NS, levels=(0.5, 0.99)), unit="s", width=8),
            timeseries("Records restored/s", "Changelog records read while restoring (spikes on rebalances).",
                       [(f"sum(rate({rf}state_restored_records_total{{{NS}}}[{RATE}]))", "restored")], unit="rps", width=8),
            row("Decisions"),
            timeseries("Invites skipped/s by reason", "Qualifying purchases that made no advocate: test_order, negated, below_minimum, no_email, no_consent, cooldown.",
                       [(f"sum by (reason) (rate({rf}invites_skipped_total{{{NS}}}[{RATE}]))", "{{reason}}")],
                       unit="rps", width=8),
            timeseries("Attributions/s by outcome", "Orders naming a referral code: pending (a reward), rejected (fraud rules), or why no reward.",
                       [(f"sum by (outcome) (rate({rf}attributions_total{{{NS}}}[{RATE}]))", "{{outcome}}")],
                       unit="rps", width=8),
            timeseries("Reward events/s by type and reason", "pending, granted (review window over), voided (refund, cancel), rejected (same customer, email, address, IP burst).",
                       [(f"sum by (type, reason) (rate({rf}rewards_total{{{NS}}}[{RATE}]))", "{{type}} {{reason}}")],
                       unit="rps", width=8),
            row("Shopify"),
            timeseries("Admin API calls/s by operation and outcome", "Calls to the Shopify Admin API (discount create, lookup, deactivate, store credit, segments): ok, user_error, throttled, retried, refused (401/403), no_token, rejected, exhausted, unconfirmed (a store credit without an answer, not resent).",
                       [(f"sum by (operation, outcome) (rate({rf}shopify_calls_total{{{NS}}}[{RATE}]))", "{{operation}} {{outcome}}")],
                       unit="rps", width=8),
            timeseries("Actions in shops/s", "Friend discounts, reward codes, store credits and deactivations done before their event was published, or dead-lettered.",
                       [(f"sum by (action, outcome) (rate({rf}shopify_actions_total{{{NS}}}[{RATE}]))", "{{action}} {{outcome}}")],
                       unit="rps", width=8),
            timeseries("Throttled and refused", "Seconds/s waited on Shopify's THROTTLED answers; shops whose token is refused (alert); actions for shops without a token.",
                       [(f"sum(rate({rf}shopify_throttled_seconds_total{{{NS}}}[{RATE}]))", "throttled s/s"),
                        (f"sum({rf}shopify_token_refused_shops{{{NS}}})", "refused shops"),
                        (f"sum(rate({rf}shopify_no_token_total{{{NS}}}[{RATE}]))", "no token/s")], width=8),
            row("Errors"),
            timeseries("Dead letters/s", "Records written to aftercart.referrals-dead-letter (alert on any).",
                       [(f"sum(rate({rf}dead_letters_total{{{NS}}}[{RATE}]))", "dead letters")], unit="rps"),
            timeseries("Unusable records/s", "Records that could not be used, by topic family and reason (no_shop, undecodable, impossible_value, missing_topic); all are dead-lettered.",
                       [(f"sum by (topic, reason) (rate({rf}records_failed_total{{{NS}}}[{RATE}]))", "{{topic}} {{reason}}")],
                       unit="rps"),
        ],
        tags=("referrals",),
    )


def audiences():
    au = "aftercart_audiences_"
    lag_by_partition = f"max by (topic, partition) ({au}consumer_lag_records{{{NS}}})"
    return dashboard(
        "aftercart-audiences",
        "aftercart / Audiences service",
        "Consumer group aftercart-audiences (the engine: routing by shop, lag, people and audience "
        "sizes, restores, dead letters) and its exporters aftercart-audiences-<destination> "
        "(batches and people by destination and outcome, retries, batch duration, backlog).",
        [
            row("Throughput"),
            stat("Records/s", "Routed records applied to the state, every source (abandonments, orders, customers, compliance).",
                 f"sum(rate({au}records_processed_total{{{NS}}}[{RATE}]))", unit="rps"),
            stat("Consumer lag", "Records the engine is behind the end of its inputs (abandonments, orders, customers, compliance, by_shop).",
                 f"sum({lag_by_partition})", thresholds=[(1000, "orange"), (100000, "red")]),
            stat("People in state", "People held in memory, all instances (about 2.4 KB each).",
                 f"sum({au}people_tracked{{{NS}}})"),
            stat("Export dead letters (range)", "Batches a destination refused for good or that ran out of retries, over the dashboard's time range.",
                 f'sum(increase({au}batches_total{{{NS},outcome="dead_lettered"}}[$__range]))', thresholds=[(1, "red")]),
            timeseries("Records routed and processed/s", "Source records forwarded to aftercart.audiences-by-shop (routed), and by-shop records applied, by source.",
                       [(f"sum(rate({au}records_routed_total{{{NS}}}[{RATE}]))", "routed"),
                        (f"sum by (topic) (rate({au}records_processed_total{{{NS}}}[{RATE}]))", "processed {{topic}}")],
                       unit="rps"),
            timeseries("Batches emitted/s", "Export batches the engine wrote to aftercart.audience-batches (one per shop, audience, destination and operation per flush).",
                       [(f"sum(rate({au}batches_emitted_total{{{NS}}}[{RATE}]))", "emitted")], unit="rps"),
            row("Lag"),
            timeseries("Consumer lag by topic", "Records behind, per input (max per partition over instances, summed).",
                       [(f"sum by (topic) ({lag_by_partition})", "{{topic}}")]),
            timeseries("Consumer lag by partition", "Find a stuck partition (by_shop: one very large shop sits on one partition).",
                       [(lag_by_partition, "{{topic}}/{{partition}}")]),
            row("State"),
            timeseries("Audience sizes", "People wanted in each audience (consented, reachable, within the window), all instances.",
                       [(f"sum by (audience) ({au}members{{{NS}}})", "{{audience}}")], width=8),
            timeseries("People in state", "People held per instance (what the memory limit must fit).",
                       [(f"sum by (pod, instance) ({au}people_tracked{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Assigned partitions", "By-shop partitions owned per instance: 0 everywhere means the group is empty or rebalancing.",
                       [(f"sum by (pod, instance) ({au}assigned_partitions{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Changelog writes/s", "People written to the compacted changelog aftercart.audiences-state.",
                       [(f"sum(rate({au}changelog_records_written_total{{{NS}}}[{RATE}]))", "changelog")], unit="rps", width=8),
            timeseries("State restore time", "Time to restore one partition from the changelog on assignment.",
                       quantiles(f"{au}state_restore_duration_seconds", NS, levels=(0.5, 0.99)), unit="s", width=8),
            timeseries("Records restored/s", "Changelog records read while restoring (spikes on rebalances).",
                       [(f"sum(rate({au}state_restored_records_total{{{NS}}}[{RATE}]))", "restored")], unit="rps", width=8),
            row("Exports"),
            timeseries("People exported/s by destination and outcome", "People in finished batches: accepted by the destination, or dead-lettered (refused, or out of retries); add and remove.",
                       [(f"sum by (destination, op, outcome) (rate({au}records_exported_total{{{NS}}}[{RATE}]))", "{{destination}} {{op}} {{outcome}}")],
                       unit="rps"),
            timeseries("Batches/s by destination and outcome", "Finished batches per destination, operation and outcome (alert on dead_lettered).",
                       [(f"sum by (destination, op, outcome) (rate({au}batches_total{{{NS}}}[{RATE}]))", "{{destination}} {{op}} {{outcome}}")],
                       unit="rps"),
            timeseries("Batch duration by destination", "Time to export one batch, retries included (p50 and p99).",
                       [(f"histogram_quantile(0.5, sum by (destination, le) (rate({au}batch_duration_seconds_bucket{{{NS}}}[{RATE}])))", "p50 {{destination}}"),
                        (f"histogram_quantile(0.99, sum by (destination, le) (rate({au}batch_duration_seconds_bucket{{{NS}}}[{RATE}])))", "p99 {{destination}}")],
                       unit="s", width=8),
            timeseries("Export retries/s by destination", "Failed attempts that were tried again, counted when their batch finishes.",
                       [(f"sum by (destination) (rate({au}export_retries_total{{{NS}}}[{RATE}]))", "{{destination}}")],
                       unit="rps", width=8),
            timeseries("Export backlog by destination", "Batch records each destination's exporter has yet to send (its consumer lag).",
                       [(f"sum by (destination) ({au}export_lag_records{{{NS}}})", "{{destination}}")], width=8),
            timeseries("Attempts/s by outcome", "Every destination's attempts together: delivered, retry (another try follows), permanent (refused), exhausted (out of retries).",
                       [(f"sum by (outcome) (rate({au}http_deliveries_total{{{NS}}}[{RATE}]))", "{{outcome}}")],
                       unit="rps", width=8),
            timeseries("Attempt latency", "Time of one attempt, from sending the request to reading the answer, every destination.",
                       quantiles(f"{au}http_request_duration_seconds", NS, levels=(0.5, 0.99)), unit="s", width=8),
            timeseries("Batches being retried", "Batches waiting for another try right now, per instance: above 0 for long means a destination is failing.",
                       [(f"sum by (pod, instance) ({au}http_in_retry{{{NS}}})", "{{pod}} {{instance}}")], width=8),
            timeseries("Pending removals by destination", "People whose removal a destination has not confirmed yet: retried without a time budget, never dead-lettered.",
                       [(f"sum by (destination) ({au}pending_removals{{{NS}}})", "{{destination}}")], width=8),
            timeseries("Oldest pending removal by destination", "How long the oldest unconfirmed removal has waited (alert AftercartAudiencesRemovalsPending above 15 min).",
                       [(f"max by (destination) ({au}pending_removal_age_seconds{{{NS}}})", "{{destination}}")], unit="s", width=8),
            timeseries("Redacted facts dropped/s", "Facts about a redacted customer or shop that were kept out (not re-created, not re-exported).",
                       [(f"sum(rate({au}redacted_facts_total{{{NS}}}[{RATE}]))", "dropped")], unit="rps", width=8),
            row("Errors"),
            timeseries("Dead letters/s", "Input records and export batches written to aftercart.audiences-dead-letter.",
                       [(f"sum(rate({au}dead_letters_total{{{NS}}}[{RATE}]))", "input records"),
                        (f"sum(rate({au}http_dead_lettered_total{{{NS}}}[{RATE}]))", "export batches")], unit="rps"),
            timeseries("Unusable records/s", "Input records that could not be used, by source and reason (no_shop, undecodable, impossible_value, missing_topic); all are dead-lettered.",
                       [(f"sum by (topic, reason) (rate({au}records_failed_total{{{NS}}}[{RATE}]))", "{{topic}} {{reason}}")],
                       unit="rps"),
        ],
        tags=("audiences",),
    )


def business():
    jo = "aftercart_journey_"
    ab = "aftercart_abandonment_"
    rf = "aftercart_referrals_"
    au = "aftercart_audiences_"
    nu = "aftercart_nudges_"
    req = "aftercart_ingress_requests_total"
    rng = "$__range"
    return dashboard(
        "aftercart-business",
        "aftercart / Business KPIs",
        "Checkout activity, abandonments, recoveries and recovery rate; audience sizes and export "
        "outcomes; referral invites, referred orders and rewards; recovery nudges sent, stopped and "
        "late; the post-purchase journey (touchpoints, time to delivery) and the daily KPIs, over "
        "the selected time range.",
        [
            row("Checkout recovery"),
            stat("Checkout events", "Checkout webhooks accepted (checkouts/create and /update; Shopify sends several per checkout).",
                 f'sum(increase({req}{{{NS},family="checkouts",status="200"}}[{rng}]))', width=4),
            stat("Orders", "Order webhooks accepted (orders, refunds and transactions).",
                 f'sum(increase({req}{{{NS},family="orders",status="200"}}[{rng}]))', width=4),
            stat("Abandoned", "Journeys abandoned (checkouts with contact details, and carts).",
                 f"sum(increase({ab}abandonments_total{{{NS}}}[{rng}]))", width=4),
            stat("Recovered", "Abandoned journeys later completed by an order.",
                 f"sum(increase({ab}recoveries_total{{{NS}}}[{rng}]))", width=4),
            stat("Recovery rate", "Recovered / abandoned over the range.",
                 f"sum(increase({ab}recoveries_total{{{NS}}}[{rng}])) / sum(increase({ab}abandonments_total{{{NS}}}[{rng}]))",
                 unit="percentunit", width=4),
            stat("Median time to recover", "Median time from abandonment to the recovering order.",
                 f"histogram_quantile(0.5, sum by (le) (increase({ab}recovery_delay_seconds_bucket{{{NS}}}[{rng}])))",
                 unit="s", width=4),
            timeseries("Abandoned and recovered per hour", "Hourly counts, by kind (checkout or cart).",
                       [(f"sum by (kind) (increase({ab}abandonments_total{{{NS}}}[1h]))", "abandoned {{kind}}"),
                        (f"sum by (kind) (increase({ab}recoveries_total{{{NS}}}[1h]))", "recovered {{kind}}")],
                       width=12),
            timeseries("Recovery rate (24 h)", "Recovered / abandoned over the trailing day.",
                       [(f"sum(increase({ab}recoveries_total{{{NS}}}[1d])) / sum(increase({ab}abandonments_total{{{NS}}}[1d]))", "recovery rate")],
                       unit="percentunit", width=12),
            row("Abandonment segments"),
            bars("By stage", "How far the customer got before leaving.",
                 f"sum by (stage) (increase({ab}abandonments_total{{{NS}}}[{rng}]))", "{{stage}}", width=6),
            bars("By value tier", "Cart value tiers (AFTERCART_ABANDONMENT_VALUE_TIER_MEDIUM/_HIGH).",
                 f"sum by (value_tier) (increase({ab}abandonments_total{{{NS}}}[{rng}]))", "{{value_tier}}", width=6),
            bars("By customer", "New or returning customers.",
                 f"sum by (customer) (increase({ab}abandonments_total{{{NS}}}[{rng}]))", "{{customer}}", width=6),
            bars("Recovered by kind", "Recoveries by abandonment kind.",
                 f"sum by (kind) (increase({ab}recoveries_total{{{NS}}}[{rng}]))", "{{kind}}", width=6),
            row("Audiences"),
            stat("People in audiences", "Memberships now, every audience together (one person in two audiences counts twice).",
                 f"sum({au}members{{{NS}}})", width=4),
            stat("People exported", "People added to or removed from a destination's audience and accepted by it, over the range.",
                 f'sum(increase({au}records_exported_total{{{NS},outcome="accepted"}}[{rng}]))', width=4),
            stat("People dead-lettered", "People in batches a destination refused or that ran out of retries, over the range.",
                 f'sum(increase({au}records_exported_total{{{NS},outcome="dead_lettered"}}[{rng}]))', width=4,
                 thresholds=[(1, "red")]),
            stat("Export success", "Accepted / finished batches over the range.",
                 f'sum(increase({au}batches_total{{{NS},outcome="accepted"}}[{rng}])) / sum(increase({au}batches_total{{{NS}}}[{rng}]))',
                 unit="percentunit", width=4),
            bars("Audience sizes", "People in each audience now (consented, reachable, within the window).",
                 f"sum by (audience) ({au}members{{{NS}}})", "{{audience}}", width=8),
            timeseries("Audience sizes over time", "People in each audience.",
                       [(f"sum by (audience) ({au}members{{{NS}}})", "{{audience}}")], width=12),
            bars("Exports by destination and outcome", "People added and removed per destination over the range, accepted or dead-lettered.",
                 f"sum by (destination, op, outcome) (increase({au}records_exported_total{{{NS}}}[{rng}]))",
                 "{{destination}} {{op}} {{outcome}}", width=12),
            row("Referrals"),
            stat("Invites", "Buyers who became advocates (an invite with their referral code).",
                 f"sum(increase({rf}invites_total{{{NS}}}[{rng}]))", width=4),
            stat("Referred orders", "Friends' first orders naming an advocate's code that earned a reward (pending review).",
                 f'sum(increase({rf}attributions_total{{{NS},outcome="pending"}}[{rng}]))', width=4),
            stat("Referred orders per invite", "Referred orders / invites over the range.",
                 f'sum(increase({rf}attributions_total{{{NS},outcome="pending"}}[{rng}])) / sum(increase({rf}invites_total{{{NS}}}[{rng}]))',
                 unit="percentunit", width=4),
            stat("Rewards granted", "Rewards whose review window ended without a refund or cancellation.",
                 f'sum(increase({rf}rewards_total{{{NS},type="granted"}}[{rng}]))', width=4),
            stat("Rewards voided", "Rewards withdrawn during review: the referred order was refunded, cancelled or not the first.",
                 f'sum(increase({rf}rewards_total{{{NS},type="voided"}}[{rng}]))', width=4),
            stat("Rewards rejected", "Referred orders refused by the fraud rules (same customer, email, name and address, IP burst).",
                 f'sum(increase({rf}rewards_total{{{NS},type="rejected"}}[{rng}]))', width=4,
                 thresholds=[(1, "orange")]),
            timeseries("Invites and rewards per hour", "Hourly invites, and reward events by type.",
                       [(f"sum(increase({rf}invites_total{{{NS}}}[1h]))", "invites"),
                        (f"sum by (type) (increase({rf}rewards_total{{{NS}}}[1h]))", "rewards {{type}}")],
                       width=12),
            bars("Attributions by outcome", "Orders naming a referral code, by what became of them.",
                 f"sum by (outcome) (increase({rf}attributions_total{{{NS}}}[{rng}]))", "{{outcome}}", width=6),
            bars("Rejections by reason", "Why the fraud rules refused referred orders.",
                 f'sum by (reason) (increase({rf}rewards_total{{{NS},type="rejected"}}[{rng}]))', "{{reason}}", width=6),
            row("Recovery nudges"),
            stat("Sequences started", "Checkout abandonments of people who may be contacted that started a nudge sequence.",
                 f"sum(increase({nu}scheduled_total{{{NS}}}[{rng}]))", width=4),
            stat("Nudges sent", "Nudges a destination (Klaviyo, webhook, files) accepted, every step.",
                 f"sum(increase({nu}sent_total{{{NS}}}[{rng}]))", width=4),
            stat("Stopped by a purchase", "Sequences stopped (or never started) because the person ordered, through any cart.",
                 f'sum(increase({nu}suppressed_total{{{NS},reason="purchased"}}[{rng}]))', width=4),
            stat("Refused by the destination", "Nudges refused or out of retries, dead-lettered (alert on any).",
                 f"sum(increase({nu}failed_total{{{NS}}}[{rng}]))", width=4, thresholds=[(1, "red")]),
            stat("Overdue steps", "Steps due over a minute ago and not yet written (alert after 15 minutes).",
                 f"sum({nu}overdue{{{NS}}})", width=4, thresholds=[(1, "orange")]),
            stat("Delivery backlog", "Nudges on aftercart.nudges not yet delivered (alert above 100 for 15 minutes).",
                 f"sum({nu}delivery_lag_records{{{NS}}})", width=4, thresholds=[(100, "orange")]),
            bars("Sent by step and destination", "Nudges accepted over the range, by step and destination.",
                 f"sum by (step, destination) (increase({nu}sent_total{{{NS}}}[{rng}]))", "step {{step}} {{destination}}", width=6),
            bars("Suppressed by reason", "Sequences not started or stopped: purchased, recovered, consent, cap, redacted, deleted, disabled; late steps skipped.",
                 f"sum by (reason) (increase({nu}suppressed_total{{{NS}}}[{rng}]))", "{{reason}}", width=6),
            timeseries("Due to sent", "Time from a step being due to its destination accepting it (quantiles over 5 minutes).",
                       quantiles(f"{nu}due_to_sent_seconds", NS), unit="s", width=6),
            stat("Nudge-attributed recoveries", "Checkouts recovered after at least one nudge of their sequence was sent (revenue by currency: aftercart_nudges_attributed_revenue_total).",
                 f"sum(increase({nu}attributed_recoveries_total{{{NS}}}[{rng}]))", width=6),
            row("Morning KPIs (the journey's facts, every shop together)"),
            stat("Checkouts started", "checkouts/create webhooks counted by the journey.",
                 f'sum(increase({jo}kpi_facts_total{{{NS},fact="checkouts_started"}}[{rng}]))', width=4),
            stat("Abandonment rate", "Abandoned / started checkouts over the trailing day (recording rule).",
                 f"sum(aftercart:business_abandonment:ratio_rate1d{{{NS}}})", unit="percentunit", width=4),
            stat("Repeat-purchase rate", "Orders by customers who ordered before / orders, over the trailing day.",
                 f"sum(aftercart:business_repeat_purchase:ratio_rate1d{{{NS}}})", unit="percentunit", width=4),
            stat("Referral conversion", "Referred orders / invites over the trailing day.",
                 f"sum(aftercart:business_referral_conversion:ratio_rate1d{{{NS}}})", unit="percentunit", width=4),
            stat("Daily KPI records", "Records written to aftercart.kpis (one per shop and day).",
                 f"sum(increase({jo}kpi_reports_total{{{NS}}}[{rng}]))", width=4),
            stat("Orders counted", "Orders counted once each (test orders left out).",
                 f'sum(increase({jo}kpi_facts_total{{{NS},fact="orders"}}[{rng}]))', width=4),
            timeseries("Revenue per hour by kind and currency", "Orders, recovered checkouts and referred orders (no shop label; currencies past 32 count as other).",
                       [(f"sum by (kind, currency) (increase({jo}revenue_total{{{NS}}}[1h]))", "{{kind}} {{currency}}")],
                       width=12),
            timeseries("Business facts per hour", "The facts of the daily KPI record, every shop together.",
                       [(f"sum by (fact) (increase({jo}kpi_facts_total{{{NS}}}[1h]))", "{{fact}}")], width=12),
            row("After checkout (journey)"),
            stat("Touchpoints", "Touchpoints written to aftercart.touchpoints.",
                 f"sum(increase({jo}touchpoints_total{{{NS}}}[{rng}]))", width=6),
            stat("Review requests", "Review requests sent (delivery + the configured delay).",
                 f'sum(increase({jo}touchpoints_total{{{NS},type="review_request"}}[{rng}]))', width=6),
            stat("Median order to delivery", "Median time from order creation to its first delivered shipment.",
                 f"histogram_quantile(0.5, sum by (le) (increase({jo}order_to_delivery_seconds_bucket{{{NS}}}[{rng}])))",
                 unit="s", width=6),
            stat("Orders stopped", "Orders whose timed touchpoints stopped (cancelled, refunded, deleted).",
                 f"sum(increase({jo}orders_stopped_total{{{NS}}}[{rng}]))", width=6),
            bars("Touchpoints by type", "Touchpoints written, by type.",
                 f"sum by (type) (increase({jo}touchpoints_total{{{NS}}}[{rng}]))", "{{type}}", width=12),
            bars("Touchpoints skipped", "Not sent, by type and reason (no consent, no contact, stopped, test order).",
                 f"sum by (type, reason) (increase({jo}touchpoints_skipped_total{{{NS}}}[{rng}]))",
                 "{{type}} {{reason}}", width=12),
            row("Webhook subscriptions (the journey's watchdog)"),
            stat("Silent shops", "Shops whose order webhooks stopped while other shops' continue: a deleted subscription, most likely (the journey log names them; alert AftercartShopWebhooksSilent).",
                 f"sum({jo}silent_shops{{{NS}}})", width=8, thresholds=[(1, "red")]),
            stat("Shops flagged", "Times a shop was flagged silent over the range.",
                 f"sum(increase({jo}silent_shops_flagged_total{{{NS}}}[{rng}]))", width=8, thresholds=[(1, "orange")]),
            stat("Watched shops", "Shops with enough order history to be judged (under 2 per instance: the watchdog cannot compare).",
                 f"sum({jo}watched_shops{{{NS}}})", width=8),
        ],
        tags=("business",),
    )


DASHBOARDS = {
    "aftercart-overview.json": overview,
    "aftercart-abandonment.json": abandonment,
    "aftercart-referrals.json": referrals,
    "aftercart-audiences.json": audiences,
    "aftercart-business.json": business,
}


def render(build):
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv):
    check = "--check" in argv
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run `make dashboards`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
