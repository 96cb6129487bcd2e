#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/ (seed-*).

Seeds are Shopify's sample payloads (fixtures/shopify) wrapped in each target's input format
(see fuzz/src/lib.rs) plus a few edge cases. Run once when the formats change; the fuzzer grows
the corpus from them and `cargo fuzz cmin` keeps it small.
"""

import json
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
FIXTURES = FUZZ.parent / "fixtures" / "shopify"
RS, US = b"\x1e", b"\x1f"
SHOP = b"demo.myshopify.com"

TOPICS = {
    "checkouts_create.json": b"checkouts/create",
    "checkouts_update.json": b"checkouts/update",
    "checkouts_delete.json": b"checkouts/delete",
    "carts_update.json": b"carts/update",
    "orders_create.json": b"orders/create",
    "orders_paid.json": b"orders/paid",
    "customers_data_request.json": b"customers/data_request",
    "customers_redact.json": b"customers/redact",
    "shop_redact.json": b"shop/redact",
    "app_uninstalled.json": b"app/uninstalled",
}
FAMILY = {
    "checkouts": b"checkouts", "carts": b"carts", "orders": b"orders",
    "customers": b"customers", "shop": b"compliance", "app": b"compliance",
}


def fixture(name):
    # Compact: smaller inputs fuzz faster, and the sample's structure is what matters.
    return json.dumps(json.loads((FIXTURES / name).read_bytes()), separators=(",", ":")).encode()


def family_of(topic):
    if topic in (b"customers/redact", b"customers/data_request"):
        return b"compliance"
    return FAMILY[topic.split(b"/")[0].decode()]


def record(family, topic, body, key=b"", seconds=b"0", extra=b""):
    headers = b"shopify-topic=" + topic + b"\nshopify-shop-domain=" + SHOP
    headers += b"\naftercart-source=" + family + extra
    return US.join([family, key, seconds, headers, body])


EDGE_BODIES = [b"", b"{}", b"[]", b"null", b"\"x\"", b"{\"id\":", b"\xef\xbb\xbf{}",
               b"{\"token\":\"a\",\"token\":\"b\"}", b"{\"id\":18446744073709551615}",
               b"{\"id\":-1,\"customer\":{\"id\":1.5}}", b"[" * 200 + b"]" * 200]

CONSENT = (b'{"customer_id":42,"email_address":"ann@example.com",'
           b'"email_marketing_consent":{"state":"subscribed","consent_updated_at":"2026-01-01T00:00:00+01:00"}}')
CHECKOUT = (b'{"token":"chk","cart_token":"c1","email":"Ann@Example.com","phone":"+44 7700 900123",'
            b'"buyer_accepts_marketing":true,"total_price":"120.00","customer":{"id":42},'
            b'"line_items":[{"quantity":2,"price":"60.00"}],"updated_at":"2026-01-01T00:00:00Z"}')
ORDER = (b'{"id":7,"cart_token":"c1","email":"J.Doe+ref@GoogleMail.com","financial_status":"paid",'
         b'"total_price":"55.00","buyer_accepts_marketing":true,"customer":{"id":43},'
         b'"discount_codes":[{"code":"REF-0123456789"}],"landing_site":"/?ref=REF-0123456789%41",'
         b'"browser_ip":"10.0.0.1","created_at":"2026-01-01T00:00:00Z"}')
ABANDONED = (b'{"type":"abandoned","kind":"checkout","event_id":"0","shop":"demo.myshopify.com",'
             b'"journey_key":"demo.myshopify.com/c1","customer":{"id":42,"email":"Ann@Example.com",'
             b'"phone":"+1 (555) 010-9999","accepts_email_marketing":true,"accepts_sms_marketing":false},'
             b'"segments":{"stage":"payment","value_tier":"low","customer":"new"},'
             b'"abandoned_at":"2026-01-01T00:00:00.000Z","last_activity_at":"2026-01-01T00:00:00.000Z"}')


def write(target, name, data):
    path = FUZZ / "corpus" / target / f"seed-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main():
    for name, topic in TOPICS.items():
        body = fixture(name)
        stem = name.removesuffix(".json")
        write("journey_key", stem, topic + US + SHOP + US + body)
        headers = b"\n".join([b"X-Shopify-Topic: " + topic, b"X-Shopify-Shop-Domain: " + SHOP,
                              b"X-Shopify-Webhook-Id: b54557e4", b"X-Shopify-Hmac-Sha256: "
                              b"VnKUjZsLuN5iZWjn5EntcBVCF9kMN43LglzCE1/GSeY=",
                              b"Shopify-API-Version: 2026-07"])
        write("webhook_headers_signature", stem, b"\x07hush" + RS + headers + RS + body)
        family = family_of(topic)
        one = record(family, topic, body, key=SHOP + b"/c1")
        for target in ("abandonment_record", "referrals_record", "audiences_record"):
            write(target, stem, one)
    for i, body in enumerate(EDGE_BODIES):
        write("journey_key", f"edge-{i}", b" ORDERS/Paid " + US + b"Shop.Example" + US + body)
        write("webhook_headers_signature", f"edge-{i}",
              bytes([i * 23 % 256]) + RS + b"shopify-hmac-sha256:  \nx-shopify-shop-domain: FUZZ.myshopify.com" + RS + body)
    # Multi-record journeys: consent, checkout, abandonment, recovery, redaction.
    journey = RS.join([
        record(b"customers", b"customers_email_marketing_consent/update", CONSENT),
        record(b"checkouts", b"checkouts/update", CHECKOUT, key=SHOP + b"/c1"),
        record(b"checkouts", b"checkouts/update", CHECKOUT, key=SHOP + b"/c1", seconds=b"7200"),
        record(b"abandonments", b"", ABANDONED, key=SHOP + b"/c1", seconds=b"10"),
        record(b"orders", b"orders/paid", ORDER, key=SHOP + b"/c1", seconds=b"3600"),
        record(b"orders", b"orders/paid", ORDER.replace(b'"id":7', b'"id":8').replace(b'"id":43', b'"id":44'),
               key=SHOP + b"/c2", seconds=b"60"),
        record(b"compliance", b"customers/redact", b'{"customer":{"id":42,"email":"ann@example.com"}}',
               seconds=b"60"),
    ])
    for target in ("abandonment_record", "referrals_record", "audiences_record"):
        write(target, "journey", journey)
        write(target, "edge-no-key", record(b"orders", b"orders/create", b"{}", key=b"-"))
        write(target, "edge-bad-utf8", record(b"carts", b"carts/\xff", b"{}", key=b"\xff\xfe"))


if __name__ == "__main__":
    main()
