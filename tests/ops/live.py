#!/usr/bin/env python3
"""The ops checks against running services and a real Prometheus server:

1. each Deployment and StatefulSet of the prod overlay runs as rendered (its args and the
   environment of its ConfigMaps; only addresses, partitions, the secret file and its volumes
   (a fresh directory for each claim template, e.g. the ingress spool) point at this machine): it
   must start, get ready, pass `promtool check metrics` on its own /metrics and exit 0 on SIGTERM
   within its terminationGracePeriodSeconds;
   the dev stack's /metrics is linted again after traffic; the topic Job, run as rendered, names
   exactly the topics the Strimzi KafkaTopics define;
2. `aftercart dev` (ingress + abandonment + referrals + audiences + journey on an embedded broker, free
   ports, 4 s abandonment delay, 8 s referral review window, audiences exported to files and to
   two local webhooks: one that fails once then accepts, one that refuses) gets demo traffic plus
   what the demo lacks: bad signatures, a non-JSON body, a poison checkout and poison orders
   (dead letters of every consumer), an abandoned checkout that is then recovered, and a referral whose reward is
   voided (the friend's order is cancelled during review) and one rejected (the advocate uses
   their own code); the demo's pending rewards are granted once the review window is over, and
   its audiences are exported (accepted after a retry, and dead-lettered); then Kafka stops
   answering (its broker, a process of its own, is frozen with SIGSTOP): webhooks must still be
   answered 200, from the ingress spool (a 1 MiB one), until a large webhook finds it full (503),
   and be drained to Kafka once the broker runs again; an ingress stopped while Kafka is frozen
   leaves its spool behind, and the command of k8s/jobs/spool-drain.yaml drains it;
3. Debian's Prometheus scrapes it every second with aftercart's rules loaded; every expression of
   every dashboard panel, every recording rule and every alert is evaluated through the HTTP API:
   all must parse, every panel and recording rule must return data, no expression may name a
   metric the services do not export, every rule group must be healthy, and the dead-letter alerts
   (export dead letters included) must be firing (and the "service down" alerts not); the spool
   panels must have shown webhooks waiting and drained, and the spool-full alert must be raised.

`LiveStack` is reused by plot_panels.py. Standard library plus PyYAML.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml

from common import (
    HISTOGRAM_SUFFIXES,
    ROOT,
    Tally,
    dashboards,
    env_without_aftercart,
    free_port,
    metric_names,
    need,
    panels,
    render,
    rule_groups,
    run,
    substitute,
    write_rule_file,
)

ABANDON_AFTER_SECONDS = 4
# The dev stack spools a webhook Kafka has not acknowledged after this (production: 1s), so the
# frozen-broker phase takes seconds.
SPOOL_AFTER = "200ms"
# How long the broker stays frozen once the webhooks are spooled: Prometheus (1 s scrapes) sees
# them waiting and ageing.
FREEZE_SECONDS = 4
# The dev stack's spool limit (the smallest the ingress accepts): one large webhook fits, a
# second one finds it full and is answered 503.
SPOOL_MAX_BYTES = "1MiB"
LARGE_BODY_BYTES = 600_000
REVIEW_WINDOW_SECONDS = 8
# `aftercart dev`'s fixed referral code secret and `aftercart send`'s default shop
# (services/cli/src/cmd/dev.rs DEV_CODE_SECRET, send.rs --shop).
DEV_CODE_SECRET = b"aftercart-dev-referral-code-secret"
SHOP = "aftercart-demo.myshopify.com"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The subcommands aftercart-allocator runs on mimalloc (services/allocator/src/choice.rs).
CONSUMER_COMMANDS = {"abandonment", "referrals", "journey", "audiences", "nudges"}
PARTITIONS = "3"  # fewer partitions, faster restores; the services do not care
# The dev stack's audiences: the built-in ones to files, plus the abandoners to two webhook
# destinations served by `Receiver`: `crm` fails its first request (a retry), `refuser` refuses
# every batch (export dead letters).
AUDIENCES_TOML = """
[destinations.files]
type = "file"
dir = "{dir}"

[destinations.crm]
type = "webhook"
url = "{receiver}/crm"
secret = "ops-check-webhook-secret"

[destinations.refuser]
type = "webhook"
url = "{receiver}/refuser"

[[audiences]]
name = "abandoned-checkouts"
source = "abandonments"
window = "30d"
destinations = ["files", "crm", "refuser"]
filter = {{ kinds = ["checkout"] }}

[[audiences]]
name = "high-value-abandoners"
source = "abandonments"
window = "7d"
destinations = ["files"]
filter = {{ value_tiers = ["high"] }}

[[audiences]]
name = "recent-purchasers"
source = "orders"
window = "30d"
destinations = ["files", "crm"]
"""


class Receiver(http.server.ThreadingHTTPServer):
    """A local webhook destination: /crm answers 503 to its first request and 200 after, any
    other path 400. Counts the requests by path."""

    daemon_threads = True

    def __init__(self):
        self.requests = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = receiver.requests.get(self.path, 0)
                receiver.requests[self.path] = seen + 1
                status = (503 if seen == 0 else 200) if self.path == "/crm" else 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def wait_for(what, predicate, timeout=60.0, every=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def ready(url):
    try:
        return http_get(url)[0] == 200
    except urllib.error.HTTPError:
        return False


def metric_sum(text, name, label=""):
    """Sum of every series of `name` (whose labels contain `label`, e.g. `type="granted"`) in
    Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label in line.rsplit(" ", 1)[0]:
                total += float(line.rsplit(" ", 1)[1])
    return total


def referral_code(customer_id, shop=SHOP, prefix="REF-"):
    """The code the dev stack gives a customer: prefix + 10 Crockford base32 characters of
    HMAC-SHA256(code secret, "aftercart/referral-code/<shop>/id:<id>") (services/referrals
    domain/code.rs)."""
    message = f"aftercart/referral-code/{shop.lower()}/id:{customer_id}".encode()
    bits = int.from_bytes(hmac.new(DEV_CODE_SECRET, message, hashlib.sha256).digest()[:8], "big")
    return prefix + "".join(CROCKFORD[(bits >> (59 - 5 * i)) & 31] for i in range(10))


def series_names(text):
    return {re.split(r"[{ ]", line, 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def binary():
    # Absolute: the processes run in a temporary directory (make passes a relative path when
    # CARGO_TARGET_DIR is unset).
    path = os.path.abspath(os.environ.get("AFTERCART_BIN") or str(ROOT / "target" / "release" / "aftercart"))
    if not os.access(path, os.X_OK):
        sys.exit(f"{path} not found: build it first (make build) or set AFTERCART_BIN")
    return path


class LiveStack:
    """`aftercart dev` on free ports plus a Prometheus scraping it; stops both on exit."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.bin = binary()
        self.processes = []
        self.webhook_port = free_port()
        self.admin_port = free_port()
        self.prometheus_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.webhooks = f"http://127.0.0.1:{self.webhook_port}/webhooks/shopify"
        self.prometheus = f"http://127.0.0.1:{self.prometheus_port}"
        self.brokers = None
        self.broker = None
        self.receiver = None

    # -- processes -----------------------------------------------------------------------
    def spawn(self, name, argv, env=None):
        log = open(self.workdir / f"{name}.log", "w")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=self.workdir, start_new_session=True)
        self.processes.append((name, process, log))
        return process

    def stop(self, process, grace=20.0):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for _, process, log in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a frozen broker must hear the SIGTERM
            self.stop(process)
            log.close()
        if self.receiver:
            self.receiver.shutdown()

    def log(self, name):
        path = self.workdir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def start_dev(self):
        """The embedded broker in a process of its own (`aftercart dev --broker-only`, so that it
        can be frozen while the ingress keeps answering), then the dev stack against it."""
        self.receiver = Receiver()
        audiences = self.workdir / "audiences.toml"
        audiences.write_text(AUDIENCES_TOML.format(dir=self.workdir / "audiences", receiver=self.receiver.url))
        env = env_without_aftercart() | {
            "AFTERCART_INGRESS_LISTEN": f"127.0.0.1:{self.webhook_port}",
            "AFTERCART_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "AFTERCART_ABANDONMENT_ABANDON_AFTER": f"{ABANDON_AFTER_SECONDS}s",
            "AFTERCART_ABANDONMENT_CART_ABANDON_AFTER": f"{ABANDON_AFTER_SECONDS}s",
            "AFTERCART_REFERRALS_REVIEW_WINDOW": f"{REVIEW_WINDOW_SECONDS}s",
            # The referral flow below invites at payment (the dev default waits for delivery);
            # the journey still counts every invite for the KPIs.
            "AFTERCART_REFERRALS_INVITE_TRIGGER": "paid",
            "AFTERCART_REFERRALS_INVITE_DELAY": "0s",
            "AFTERCART_TOPIC_PARTITIONS": PARTITIONS,
            "AFTERCART_AUDIENCES_CONFIG": str(audiences),
            # The example nudges file (file destination under the work directory): `aftercart dev`
            # finds it only from the repository root, and this stack runs in its work directory.
            "AFTERCART_NUDGES_CONFIG": str(ROOT / "examples" / "nudges.toml"),
            "AFTERCART_AUDIENCES_EXPORT_FLUSH_INTERVAL": "1s",
            "AFTERCART_AUDIENCES_EXPORT_BACKOFF_INITIAL": "200ms",
            "AFTERCART_LOG_FORMAT": "json",
            # A writable spool (the default is /var/lib/aftercart/spool), quick to take over.
            "AFTERCART_INGRESS_SPOOL_DIR": str(self.workdir / "spool-dev"),
            "AFTERCART_INGRESS_SPOOL_AFTER": SPOOL_AFTER,
            "AFTERCART_INGRESS_SPOOL_MAX_BYTES": SPOOL_MAX_BYTES,
            # The spool must hold one largest webhook: bodies up to 768 KiB fit a 1 MiB spool.
            "AFTERCART_INGRESS_MAX_BODY_BYTES": "768KiB",
        }
        # The broker creates every topic (it has no CreateTopics handler): same settings.
        self.broker = self.spawn("broker", [self.bin, "dev", "--broker-only"], env)
        wait_for("the embedded broker", lambda: self.broker.poll() is None
                 and re.search(r"aftercart dev broker (\S+)", self.log("broker")), timeout=60)
        self.brokers = re.search(r"aftercart dev broker (\S+)", self.log("broker")).group(1)
        process = self.spawn("dev", [self.bin, "dev"], env | {"AFTERCART_KAFKA_BROKERS": self.brokers})
        wait_for("the dev stack's /readyz", lambda: process.poll() is None and ready(f"{self.admin}/readyz"),
                 timeout=60)

    def local_secret_paths(self, service, text):
        """A mounted config file may name files of a Secret volume (the nudges' Klaviyo keys
        file): each becomes a local stand-in with a comment only (no shop has a key, as before a
        merchant adds one), so the file is read exactly as in the pod."""
        def stand_in(match):
            local = self.workdir / f"secret-{service}" / match.group(1)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("# ops check stand-in: no shop has a key yet\n")
            return str(local)
        return re.sub(r"/var/run/secrets/aftercart/([\w./-]+)", stand_in, text)

    def service_alone(self, args, manifest_env, mounts=None, overrides=None):
        """Starts `aftercart <args>` alone against the dev stack's broker with the environment a
        rendered Deployment gives it, overriding only what must point at this machine. `mounts`
        (mount path -> files of a ConfigMap volume) are written under the work directory and
        variables naming them follow (a claim template, e.g. the ingress spool, is an empty
        directory). `overrides` win over everything. Returns its admin URL and process. Its own consumer groups:
        it never takes the dev stack's partitions. (Referrals and audiences alone also route the
        Shopify topics to their shared by-shop topics; this runs before any traffic, so there is
        nothing to route twice.)"""
        port = free_port()
        manifest_env = dict(manifest_env)
        for number, (path, files) in enumerate((mounts or {}).items()):
            local = self.workdir / f"mount-{args[0]}-{number}"
            local.mkdir(exist_ok=True)
            for name, text in files.items():
                (local / name).write_text(self.local_secret_paths(args[0], text))
            manifest_env = {k: v.replace(path, str(local)) if v == path or v.startswith(path + "/") else v
                            for k, v in manifest_env.items()}
        secrets = self.workdir / "shopify-secrets"
        secrets.write_text("# current first\nops-lint-secret\n")
        code_secret = self.workdir / "referral-code-secret"
        code_secret.write_text("ops-lint-referral-code-secret\n")
        state_hash_key = self.workdir / "state-hash-key"
        state_hash_key.write_text("ops-lint-state-hash-key\n")
        # The overlay's client.properties speaks SASL over TLS to the cluster (its credentials are
        # a Strimzi Secret); the local broker is plaintext, so the file is swapped for one that
        # says so.
        kafka_properties = self.workdir / "kafka-client.properties"
        kafka_properties.write_text("# the local broker: plaintext, no SASL\nsecurity.protocol=plaintext\n")
        env = env_without_aftercart() | manifest_env | {
            "AFTERCART_KAFKA_BROKERS": self.brokers,
            "AFTERCART_TOPIC_PARTITIONS": PARTITIONS,
            "AFTERCART_TOPIC_REPLICATION": "1",
            "AFTERCART_ADMIN_LISTEN": f"127.0.0.1:{port}",
            "AFTERCART_INGRESS_LISTEN": f"127.0.0.1:{free_port()}",
            "AFTERCART_SHOPIFY_SECRETS_FILE": str(secrets),
            "AFTERCART_KAFKA_PROPERTIES_FILE": str(kafka_properties),
            "AFTERCART_ABANDONMENT_GROUP": f"aftercart-ops-lint-{uuid.uuid4().hex[:8]}",
            "AFTERCART_REFERRALS_GROUP": f"aftercart-ops-lint-{uuid.uuid4().hex[:8]}",
            "AFTERCART_AUDIENCES_GROUP": f"aftercart-ops-lint-{uuid.uuid4().hex[:8]}",
            "AFTERCART_JOURNEY_GROUP": f"aftercart-ops-lint-{uuid.uuid4().hex[:8]}",
            "AFTERCART_NUDGES_GROUP": f"aftercart-ops-lint-{uuid.uuid4().hex[:8]}",
            # The Deployment's emptyDir.
            "AFTERCART_AUDIENCES_DIR": str(self.workdir / "audiences-alone"),
            # The Deployment mounts it from the aftercart-referrals Secret.
            "AFTERCART_REFERRALS_CODE_SECRET_FILE": str(code_secret),
            "AFTERCART_STATE_HASH_KEY_FILE": str(state_hash_key),
        } | (overrides or {})
        command = args[0]
        process = self.spawn(f"alone-{command}", [self.bin, *args], env)
        url = f"http://127.0.0.1:{port}"
        wait_for(f"aftercart {command} alone", lambda: process.poll() is None and ready(f"{url}/readyz"), timeout=60)
        return url, process

    def start_prometheus(self, rule_file, scrape_interval="1s"):
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(rule_file)],
            "scrape_configs": [
                {
                    # Matches AftercartTargetDown's job=~"aftercart-.*", as the ServiceMonitors do.
                    "job_name": "aftercart-dev",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.admin_port}"]}],
                }
            ],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        argv = [
            need("prometheus"),
            f"--config.file={path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        process = self.spawn("prometheus", argv)
        wait_for("Prometheus to be ready", lambda: process.poll() is None and ready(f"{self.prometheus}/-/ready"),
                 timeout=60)
        wait_for("the first scrape", lambda: self.query("up")["result"], timeout=30)

    # -- traffic -------------------------------------------------------------------------
    def send(self, *args, expect_ok=True):
        result = run([self.bin, "send", "--send-url", self.webhooks, *args], env=env_without_aftercart(),
                     cwd=self.workdir, timeout=60)
        if expect_ok and result.returncode != 0:
            raise RuntimeError(f"aftercart send {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def send_json(self, topic, body, expect_ok=True):
        path = self.workdir / f"body-{uuid.uuid4().hex[:8]}.json"
        path.write_text(body if isinstance(body, str) else json.dumps(body))
        return self.send("--topic", topic, str(path), expect_ok=expect_ok)

    def metrics(self):
        return http_get(f"{self.admin}/metrics")[1]

    def wait_metric(self, name, at_least, timeout=60.0, label=""):
        wait_for(f"{name}{{{label}}} >= {at_least}",
                 lambda: metric_sum(self.metrics(), name, label) >= at_least, timeout=timeout)

    def journey(self, poison=False, recover=False):
        """A checkout with contact details that is abandoned; with `recover`, then ordered."""
        token = uuid.uuid4().hex[:16]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        checkout = json.loads((ROOT / "fixtures/shopify/checkouts_create.json").read_text())
        checkout |= {"token": f"ops-checkout-{token}", "cart_token": f"ops-cart-{token}",
                     "email": "ops.check@example.com", "created_at": now, "updated_at": now,
                     "completed_at": None, "landing_site": "/recover?ops=1"}
        if poison:
            checkout["total_price"] = "not-a-number"
        self.send_json("checkouts/create", checkout)
        return checkout

    def recover(self, checkout):
        order = json.loads((ROOT / "fixtures/shopify/orders_create.json").read_text())
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        order |= {"id": int(time.time() * 1000), "cart_token": checkout["cart_token"],
                  "checkout_token": checkout["token"], "created_at": now, "updated_at": now,
                  "landing_site": "/recover?ops=1"}
        self.send_json("orders/create", order)

    def order(self, topic, customer_id, name, code=None, ip=None, **fields):
        """A real (not test), paid order of customer `customer_id`, optionally naming a referral
        code; each customer gets its own email and address (the fraud rules compare them)."""
        first, last = name.split()
        address = {"first_name": first, "last_name": last, "address1": f"{customer_id % 1000} Ops Street",
                   "zip": "10001", "country_code": "US"}
        email = f"{first.lower()}.{customer_id}@example.com"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        order = json.loads((ROOT / "fixtures/shopify/orders_create.json").read_text())
        order |= {"id": int(time.time() * 1000) * 1000 + customer_id % 1000, "created_at": now, "updated_at": now,
                  "test": False, "financial_status": "paid", "cancelled_at": None, "cancel_reason": None,
                  "email": email, "contact_email": email, "buyer_accepts_marketing": True,
                  "customer": {"id": customer_id, "email": email, "first_name": first, "last_name": last},
                  "shipping_address": address, "billing_address": address, "browser_ip": ip,
                  "discount_codes": [{"code": code, "amount": "10.00", "type": "fixed_amount"}] if code else [],
                  "cart_token": f"ops-referral-{uuid.uuid4().hex[:12]}", "checkout_token": None,
                  "landing_site": None, "note_attributes": []}
        order |= fields
        self.send_json(topic, order)
        return order

    def referrals(self):
        """An advocate, a friend whose reward is voided by a cancellation during review, the
        advocate using their own code (rejected), and a poison order (dead letter)."""
        metrics = self.metrics()
        invites = metric_sum(metrics, "aftercart_referrals_invites_total")
        voided = metric_sum(metrics, "aftercart_referrals_rewards_total", 'type="voided"')
        rejected = metric_sum(metrics, "aftercart_referrals_rewards_total", 'type="rejected"')
        dead = metric_sum(metrics, "aftercart_referrals_dead_letters_total")
        base = int(time.time()) % 1_000_000 * 1000
        advocate, friend = base + 101, base + 202
        self.order("orders/paid", advocate, "Ada Advocate", ip="192.0.2.10")
        self.wait_metric("aftercart_referrals_invites_total", invites + 1)
        code = referral_code(advocate)
        referred = self.order("orders/paid", friend, "Fred Friend", code=code, ip="192.0.2.20")
        self.send_json("orders/cancelled", referred | {"cancelled_at": referred["created_at"],
                                                        "cancel_reason": "customer"})
        self.order("orders/paid", advocate, "Ada Advocate", code=code, ip="192.0.2.10")
        self.send_json("orders/create", {"id": "not-a-number", "email": "poison@example.com"})
        self.wait_metric("aftercart_referrals_rewards_total", voided + 1, label='type="voided"')
        self.wait_metric("aftercart_referrals_rewards_total", rejected + 1, label='type="rejected"')
        self.wait_metric("aftercart_referrals_dead_letters_total", dead + 1)

    def traffic(self, rounds=2, pause=1.0):
        """Demo journeys, failures of every kind the dashboards show, and one recovery."""
        abandoned = metric_sum(self.metrics(), "aftercart_abandonment_abandonments_total")
        recovered = metric_sum(self.metrics(), "aftercart_abandonment_recoveries_total")
        dead = metric_sum(self.metrics(), "aftercart_abandonment_dead_letters_total")
        granted = metric_sum(self.metrics(), "aftercart_referrals_rewards_total", 'type="granted"')
        au = "aftercart_audiences_batches_total"
        exported = metric_sum(self.metrics(), au, 'destination="crm",op="add",outcome="accepted"')
        refused = metric_sum(self.metrics(), au, 'destination="refuser",op="add",outcome="dead_lettered"')
        audiences_dead = metric_sum(self.metrics(), "aftercart_audiences_dead_letters_total")
        to_recover = self.journey()
        self.journey(poison=True)
        for _ in range(rounds):
            self.send("--demo")
            self.send("--sample", "orders_paid", "--shopify-secrets", "not-the-secret", expect_ok=False)
            self.send_json("orders/create", "this is not JSON")
            self.send("--sample", "customers_redact", "--sample", "checkouts_update")
            time.sleep(pause)
        # The demo abandons one checkout per round; ours is one more.
        self.wait_metric("aftercart_abandonment_abandonments_total", abandoned + rounds + 1,
                         timeout=ABANDON_AFTER_SECONDS + 30)
        self.recover(to_recover)
        self.wait_metric("aftercart_abandonment_recoveries_total", recovered + 1)
        self.wait_metric("aftercart_abandonment_dead_letters_total", dead + 1)
        self.referrals()
        # Each demo round refers one friend; their rewards are granted after the review window.
        self.wait_metric("aftercart_referrals_rewards_total", granted + rounds, label='type="granted"',
                         timeout=REVIEW_WINDOW_SECONDS + 30)
        # The demo's consented abandoner and buyers reach the audiences and their destinations:
        # crm takes them after one retry, refuser's batches are dead-lettered.
        self.wait_metric(au, exported + 1, label='destination="crm",op="add",outcome="accepted"')
        self.wait_metric(au, refused + 1, label='destination="refuser",op="add",outcome="dead_lettered"')
        self.wait_metric("aftercart_audiences_export_retries_total", 1, label='destination="crm"')
        # An order the audiences engine cannot decode (an email that is not a string).
        self.send_json("orders/paid", {"id": int(time.time()), "email": 5})
        self.wait_metric("aftercart_audiences_dead_letters_total", audiences_dead + 1)

    def spool(self, tally):
        """Kafka stops answering: the broker process is frozen (SIGSTOP) while webhooks arrive.
        Each must still be answered 200, from the spool, after AFTERCART_INGRESS_SPOOL_AFTER, until the
        spool is full: then 503. Once the broker runs again the drainer publishes them and the
        spool empties."""
        sp = "aftercart_ingress_spool_"
        before = self.metrics()
        appended, drained = metric_sum(before, sp + "appended_total"), metric_sum(before, sp + "drained_total")
        full = metric_sum(before, sp + "rejected_total", 'reason="full"')
        samples = ("checkouts_update", "orders_paid", "carts_update")
        # A topic no consumer reads (routed to <prefix>other), padded to fill most of the spool.
        large = {"id": int(time.time()), "title": "ops check", "padding": "x" * LARGE_BODY_BYTES}
        os.kill(self.broker.pid, signal.SIGSTOP)
        try:
            for sample in samples:
                answered = self.send("--sample", sample, expect_ok=False)
                tally.check(answered.returncode == 0, f"a webhook is answered 200 while Kafka is frozen "
                                                      f"(from the spool): {answered.stdout}{answered.stderr}")
            answered = self.send_json("products/update", large, expect_ok=False)
            tally.check(answered.returncode == 0, f"a large webhook fits the {SPOOL_MAX_BYTES} spool: "
                                                  f"{answered.stdout}{answered.stderr}")
            answered = self.send_json("products/update", large | {"id": large["id"] + 1}, expect_ok=False)
            tally.check(answered.returncode != 0 and answered.stdout.startswith("503"),
                        f"a second large webhook finds the spool full and is answered 503: {answered.stdout}")
            samples += ("products/update",)
            # A failure here is counted, not raised: the panels are still evaluated after it.
            try:
                self.wait_metric(sp + "pending_events", len(samples), timeout=10)
            except TimeoutError as error:
                tally.check(False, f"spooled webhooks while Kafka is frozen: {error}")
            time.sleep(FREEZE_SECONDS)
        finally:
            os.kill(self.broker.pid, signal.SIGCONT)
        tally.check(metric_sum(self.metrics(), sp + "appended_total") >= appended + len(samples),
                    f"{len(samples)} webhooks were spooled while Kafka was frozen")
        tally.check(metric_sum(self.metrics(), sp + "rejected_total", 'reason="full"') == full + 1,
                    "one webhook was refused for a full spool")
        try:
            self.wait_metric(sp + "drained_total", drained + len(samples), timeout=60)
            wait_for("the spool to empty", lambda: metric_sum(self.metrics(), sp + "pending_events") == 0,
                     timeout=30)
        except TimeoutError as error:
            tally.check(False, f"the spool drains once Kafka is back: {error}")

    def orphan(self, tally, ingress, job):
        """A spool left behind (a replica scaled down while Kafka was away), then drained by the
        hand-run Job of k8s/jobs/ as written. An ingress with the rendered configuration spools
        webhooks while the broker is frozen and is stopped before it can drain them; `aftercart
        spool inspect` must see them, the Job's command must publish them and empty the spool."""
        args, manifest_env = ingress
        job_args, job_env, job_dir = job
        spool_dir = self.workdir / "orphaned-spool"
        port = free_port()
        _, process = self.service_alone(args, manifest_env, overrides={
            "AFTERCART_INGRESS_LISTEN": f"127.0.0.1:{port}", "AFTERCART_INGRESS_SPOOL_DIR": str(spool_dir),
            "AFTERCART_INGRESS_SPOOL_AFTER": SPOOL_AFTER, "AFTERCART_INGRESS_DRAIN_DELAY": "0s",
            # Stops before Kafka is back: what it spooled stays on disk.
            "AFTERCART_SHUTDOWN_TIMEOUT": "1s"})
        samples = ("checkouts_update", "orders_paid")
        os.kill(self.broker.pid, signal.SIGSTOP)
        try:
            for sample in samples:
                answered = run([self.bin, "send", "--send-url", f"http://127.0.0.1:{port}/webhooks/shopify",
                                "--shopify-secrets", "ops-lint-secret", "--sample", sample],
                               env=env_without_aftercart(), cwd=self.workdir, timeout=60)
                tally.check(answered.returncode == 0, f"the soon orphaned ingress spools {sample}: {answered.stdout}")
            self.stop(process, grace=15)
        finally:
            os.kill(self.broker.pid, signal.SIGCONT)

        def inspect():
            shown = run([self.bin, "spool", "inspect", "--ingress-spool-dir", str(spool_dir)],
                        env=env_without_aftercart(), timeout=30)
            match = re.search(r"pending: (\d+) events", shown.stdout)
            return int(match.group(1)) if match else None, shown.stdout + shown.stderr

        left, shown = inspect()
        tally.check(left == len(samples), f"spool inspect shows the {len(samples)} orphaned webhooks: {shown}")
        argv = [str(spool_dir) if a == job_dir else a for a in job_args]
        env = env_without_aftercart() | job_env | {"AFTERCART_KAFKA_BROKERS": self.brokers}
        drained = run([self.bin, *argv], env=env, timeout=120)
        tally.check(drained.returncode == 0, f"k8s/jobs/spool-drain.yaml's `aftercart {' '.join(job_args)}` "
                                             f"drains the orphaned spool: {drained.stdout}{drained.stderr}")
        left, shown = inspect()
        tally.check(left == 0, f"the drained spool is empty: {shown}")
        print(f"spool drain Job: {len(samples)} webhooks left by a stopped ingress, drained with "
              f"`aftercart {' '.join(job_args)}`")

    # -- Prometheus API ------------------------------------------------------------------
    def api(self, path, **params):
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = http_get(url, timeout=15)[1]
        except urllib.error.HTTPError as error:
            body = error.read().decode()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise ValueError(answer.get("error", body))
        return answer["data"]

    def query(self, expr):
        return self.api("query", query=expr)

    def query_range(self, expr, seconds=120, step=2):
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)


def deployments(overlay, kinds=("Deployment", "StatefulSet")):
    """Each Deployment's and StatefulSet's (or Job's) container args, the environment its
    ConfigMaps and env give it, its grace period and its volumes to stand in for."""
    objects, _ = render(overlay)
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    found = {}
    for deployment in (o for o in objects if o["kind"] in kinds):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {}
        for source in container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
        spec = deployment["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        # ConfigMap volumes (e.g. the audiences file): mount path -> files; claim templates
        # (the ingress spool): mount path -> no files, an empty directory.
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in deployment["spec"].get("volumeClaimTemplates", [])}
        mounts = {m["mountPath"]: configmaps[volumes[m["name"]]["configMap"]["name"]]
                  for m in container.get("volumeMounts", []) if "configMap" in volumes.get(m["name"], {})}
        mounts |= {m["mountPath"]: {} for m in container.get("volumeMounts", []) if m["name"] in claims}
        found[deployment["metadata"]["name"]] = (container["args"], env, grace, mounts)
    return found


def drain_job():
    """The hand-run spool drain Job (k8s/jobs/spool-drain.yaml): its args, its env, and the spool
    directory its claim is mounted at."""
    job = yaml.safe_load((ROOT / "k8s" / "jobs" / "spool-drain.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v["value"] for v in container.get("env", []) if "value" in v}
    return container["args"], env, container["volumeMounts"][0]["mountPath"]


def has_data(data):
    return any(series.get("values") or series.get("value") for series in data["result"]) \
        if data["resultType"] in ("matrix", "vector") else data["result"] is not None


def main():
    tally = Tally("live")
    promtool = need("promtool")
    need("prometheus")
    workdir = tempfile.mkdtemp(prefix="aftercart-ops-")
    keep = os.environ.get("AFTERCART_OPS_KEEP") == "1"
    counts = {"panels": 0, "panel_exprs": 0, "with_data": 0, "rules": 0, "alerts": 0, "services": 0}
    try:
        with LiveStack(workdir) as stack:
            stack.start_dev()
            print(f"dev stack ready: webhooks {stack.webhooks}, admin {stack.admin}, broker {stack.brokers} "
                  f"(process {stack.broker.pid})")

            # 1. Each Deployment and StatefulSet of the prod overlay, run as rendered (its args and the
            #    environment of its ConfigMaps): the configuration is accepted, the service gets
            #    ready, and its own /metrics passes promtool.
            rendered_ingress = None
            for name, (args, manifest_env, grace, mounts) in deployments("prod").items():
                if args[0] == "ingress":
                    rendered_ingress = (args, manifest_env)
                try:
                    url, process = stack.service_alone(args, manifest_env, mounts)
                except TimeoutError as error:
                    tally.check(False, f"{name} with the rendered configuration: {error}\n"
                                       f"{stack.log('alone-' + args[0])[-2000:]}")
                    continue
                tally.check(True, f"{name} starts and gets ready with the rendered configuration")
                text = http_get(f"{url}/metrics")[1]
                lint = run([promtool, "check", "metrics"], input=text)
                tally.check(lint.returncode == 0, f"promtool check metrics ({name}): {lint.stdout}{lint.stderr}")
                tally.check(f"aftercart_{args[0]}_build_info" in text, f"{name} exports its metrics")
                # The consumer services run on mimalloc, the ingress on the system's allocator
                # (aftercart-allocator chooses by subcommand; the manifests set nothing).
                allocator = "mimalloc" if args[0] in CONSUMER_COMMANDS else "system"
                tally.check(f'aftercart_{args[0]}_build_info{{allocator="{allocator}",' in text,
                            f"{name} runs on the {allocator} allocator")
                counts["services"] += 1
                stopping = time.monotonic()
                stack.stop(process, grace=grace)
                took = time.monotonic() - stopping
                tally.check(process.returncode == 0 and took < grace,
                            f"{name} exits 0 on SIGTERM within its grace period ({process.returncode}, "
                            f"{took:.1f} s of {grace} s)")
                print(f"{name}: ready with the rendered configuration, stopped in {took:.1f} s "
                      f"(terminationGracePeriodSeconds {grace})")

            # The dev overlay's topic Job, run as rendered, lists exactly the prod overlay's
            # Strimzi KafkaTopics: the two ways of creating topics agree with the code.
            for name, (args, job_env, _, _) in deployments("dev", ("Job",)).items():
                env = env_without_aftercart() | job_env | {"AFTERCART_KAFKA_BROKERS": stack.brokers,
                                                           "AFTERCART_TOPIC_PARTITIONS": PARTITIONS,
                                                           "AFTERCART_TOPIC_REPLICATION": "1"}
                created = run([stack.bin, *args], env=env, timeout=60)
                tally.check(created.returncode == 0, f"Job {name} as rendered: {created.stderr[-1000:]}")
                strimzi = {o["spec"]["topicName"] for o in render("prod")[0] if o["kind"] == "KafkaTopic"}
                tally.check(set(created.stdout.split()) == strimzi,
                            f"Job {name} topics {sorted(created.stdout.split())} != KafkaTopics {sorted(strimzi)}")
                print(f"Job {name}: `aftercart {' '.join(args)}` lists the {len(strimzi)} KafkaTopics of the prod overlay")

            stack.start_prometheus(write_rule_file(workdir))
            stack.traffic()
            stack.spool(tally)
            stack.orphan(tally, rendered_ingress, drain_job())
            # Let Prometheus take a few more samples (rate() needs two) and evaluate the rules.
            time.sleep(5)

            # The audiences panels show real values, not only zeros: members, exports accepted
            # and dead-lettered, an HTTP retry.
            for expr in ("sum by (audience) (aftercart_audiences_members) > 0",
                         'sum(aftercart_audiences_records_exported_total{outcome="accepted"}) > 0',
                         'sum(aftercart_audiences_records_exported_total{outcome="dead_lettered"}) > 0',
                         'sum(aftercart_audiences_http_deliveries_total{outcome="retry"}) > 0'):
                tally.check(has_data(stack.query(expr)), f"Prometheus has no non-zero {expr}")
            # The spool panels showed the frozen broker: webhooks waiting and ageing, fsyncs,
            # and the drain.
            for expr in ("max_over_time(aftercart_ingress_spool_pending_events[5m]) > 0",
                         "max_over_time(aftercart_ingress_spool_oldest_age_seconds[5m]) > 0",
                         "max_over_time(aftercart_ingress_spool_bytes[5m]) > 0",
                         "sum(aftercart_ingress_spool_fsync_duration_seconds_count) > 0",
                         "sum(aftercart_ingress_spool_drained_total) > 0",
                         "min(aftercart_ingress_spool_available) == 1"):
                tally.check(has_data(stack.query(expr)), f"Prometheus has no {expr}")

            text = stack.metrics()
            lint = run([promtool, "check", "metrics"], input=text)
            tally.check(lint.returncode == 0, f"promtool check metrics (dev stack): {lint.stdout}{lint.stderr}")
            exported = series_names(text)
            families = exported | {n[: -len(s)] for n in exported for s in HISTOGRAM_SUFFIXES if n.endswith(s)}

            def exports(name, where):
                tally.check(name in families, f"{where} reads {name}, which no service exports")

            # 2. Every panel of every dashboard.
            for file, dashboard in dashboards().items():
                for variable in dashboard["templating"]["list"]:
                    for name in metric_names(json.dumps(variable.get("query", ""))):
                        exports(name, f"{file} variable {variable['name']}")
                for panel in panels(dashboard):
                    if panel["type"] == "row":
                        continue
                    counts["panels"] += 1
                    for target in panel["targets"]:
                        counts["panel_exprs"] += 1
                        expr = substitute(target["expr"])
                        where = f"{file} panel {panel['title']!r}"
                        for name in metric_names(expr):
                            exports(name, where)
                        try:
                            if panel["type"] == "timeseries":
                                data = stack.query_range(expr)
                            else:
                                data = stack.query(expr)
                        except ValueError as error:
                            tally.check(False, f"{where}: {expr}: {error}")
                            continue
                        tally.check(True, where)
                        if tally.check(has_data(data), f"{where}: no data for {expr}"):
                            counts["with_data"] += 1

            # 3. Every rule: parses, reads exported metrics, recording rules return data.
            for group in rule_groups()["groups"]:
                for rule in group["rules"]:
                    name = rule.get("record") or rule.get("alert")
                    for metric in metric_names(rule["expr"]):
                        exports(metric, f"rule {name}")
                    try:
                        data = stack.query(rule["expr"])
                    except ValueError as error:
                        tally.check(False, f"rule {name}: {error}")
                        continue
                    if "record" in rule:
                        counts["rules"] += 1
                        tally.check(has_data(data), f"recording rule {name} returns no data")
                        tally.check(has_data(stack.query(rule["record"])), f"{name} is not recorded by Prometheus")
                    else:
                        counts["alerts"] += 1
                        tally.check(True, f"alert {name} parses")
            loaded = stack.api("rules")["groups"]
            for group in loaded:
                for rule in group["rules"]:
                    tally.check(rule["health"] == "ok", f"Prometheus rule {rule['name']}: {rule['health']} {rule.get('lastError')}")
            tally.check(len(loaded) == len(rule_groups()["groups"]), "Prometheus loaded every rule group")
            states = {r["name"]: r["state"] for g in loaded for r in g["rules"] if r["type"] == "alerting"}
            for firing in ("AftercartAbandonmentDeadLetters", "AftercartReferralsDeadLetters",
                           "AftercartAudiencesDeadLetters", "AftercartAudiencesExportDeadLetters"):
                tally.check(states.get(firing) == "firing",
                            f"the dead-letter alert {firing} fires after a poison record (state {states.get(firing)})")
            # The webhook refused for a full spool: critical at once (Shopify got a 503).
            tally.check(states.get("AftercartIngressSpoolFull") in ("pending", "firing"),
                        f"AftercartIngressSpoolFull is raised after a refusal (state {states.get('AftercartIngressSpoolFull')})")
            # The spool was full, never broken: its disk alerts stay quiet.
            for quiet in ("AftercartIngressDown", "AftercartAbandonmentDown", "AftercartReferralsDown",
                          "AftercartAudiencesDown", "AftercartTargetDown", "AftercartIngressSpoolUnavailable",
                          "AftercartIngressSpoolDiskErrors", "AftercartIngressSpoolCorruption",
                          "AftercartIngressSpoolOrphaned"):
                tally.check(states.get(quiet) == "inactive", f"{quiet} stays quiet while the stack runs ({states.get(quiet)})")
            active = sorted(f"{n}={s}" for n, s in states.items() if s != "inactive")
            print(f"alert states after the traffic: {', '.join(active) or 'none active'}")
    except (TimeoutError, RuntimeError) as error:
        tally.check(False, str(error))
        for name in ("broker", "dev", "prometheus", "alone-ingress", "alone-abandonment", "alone-referrals",
                     "alone-audiences"):
            log = Path(workdir, f"{name}.log")
            if log.exists():
                print(f"--- {name}.log (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"ran {counts['services']} Deployments and StatefulSets with their rendered configuration; "
          f"evaluated {counts['panel_exprs']} panel expressions of {counts['panels']} panels "
          f"({counts['with_data']} returned data), {counts['rules']} recording rules and "
          f"{counts['alerts']} alert expressions on a live Prometheus")
    return tally.close()


if __name__ == "__main__":
    sys.exit(main())
