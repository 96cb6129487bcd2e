"""A conventional Python Shopify webhook ingress for comparison: FastAPI on uvicorn, HMAC checked
with the standard library (Shopify ships no FastAPI validator), aiokafka. Same contract as
aftercart where it matters for a fair comparison: 200 only after Kafka acknowledged (acks=all),
same topics, journey keys (aiokafka's default partitioner is the Java murmur2 one) and headers,
an in-memory dedupe window on the webhook id.

Environment: PORT, KAFKA_BROKERS, SHOPIFY_SECRET, TOPIC_PREFIX (default "shopify.").
"""

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import os
from collections import OrderedDict
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
SECRET = os.environ.get("SHOPIFY_SECRET", "aftercart-dev-secret").encode()
PREFIX = os.environ.get("TOPIC_PREFIX", "shopify.")
DEDUPE_CAPACITY = 1_000_000
COMPLIANCE = {"customers/data_request", "customers/redact", "shop/redact", "app/uninstalled"}

producer: AIOKafkaProducer | None = None
published: "OrderedDict[str, bool]" = OrderedDict()
in_flight: dict[str, asyncio.Future] = {}


@asynccontextmanager
async def lifespan(app):
    global producer
    producer = AIOKafkaProducer(bootstrap_servers=BROKERS, acks="all", client_id="baseline-python")
    await producer.start()
    yield
    await producer.stop()


app = FastAPI(lifespan=lifespan)


def family(topic: str) -> str:
    t = topic.strip().lower()
    if t in COMPLIANCE:
        return "compliance"
    resource = t.split("/")[0]
    if resource in ("checkouts", "carts"):
        return resource
    if resource in ("orders", "refunds", "order_transactions"):
        return "orders"
    if resource.startswith("customers"):
        return "customers"
    return "other"


def journey_key(fam: str, shop: str, payload: dict) -> str:
    def pick(*values):
        return next((v for v in values if v not in (None, "")), None)

    part = None
    if fam == "carts":
        part = pick(payload.get("token"))
    elif fam == "checkouts":
        part = pick(payload.get("cart_token"), payload.get("token"))
    elif fam == "orders":
        part = pick(payload.get("cart_token"), payload.get("checkout_token"))
    customer = payload.get("customer")
    part = pick(
        part,
        payload.get("order_id"),
        payload.get("id"),
        payload.get("customer_id"),
        customer.get("id") if isinstance(customer, dict) else None,
        payload.get("shop_id"),
    )
    return shop if part is None else f"{shop}/{part}"


@app.get("/healthz")
async def healthz():
    return Response(status_code=200 if producer else 503)


@app.post("/webhooks/shopify")
async def webhook(request: Request):
    body = await request.body()
    h = request.headers
    signature = h.get("x-shopify-hmac-sha256")
    if not signature:
        return Response(status_code=401)
    digest = base64.b64encode(hmac.new(SECRET, body, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(digest, signature.strip()):
        return Response(status_code=401)
    topic, shop, webhook_id = (
        h.get("x-shopify-topic"),
        h.get("x-shopify-shop-domain"),
        h.get("x-shopify-webhook-id"),
    )
    if not (topic and shop and webhook_id):
        return JSONResponse({"error": "missing header"}, status_code=400)
    if webhook_id in published:
        return {"status": "duplicate"}
    pending = in_flight.get(webhook_id)
    if pending is not None:
        ok = await asyncio.shield(pending)
        return {"status": "duplicate"} if ok else Response(status_code=503, headers={"Retry-After": "5"})
    shop = shop.lower()
    fam = family(topic)
    status = "accepted"
    try:
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
        kafka_topic, key = PREFIX + fam, journey_key(fam, shop, payload)
    except ValueError:
        kafka_topic, key, status = PREFIX + "quarantine", shop, "quarantined"
    headers = [(name[2:], value.encode()) for name, value in h.items() if name.startswith("x-shopify-")]
    headers.append(("aftercart-received-at", datetime.datetime.now(datetime.UTC).isoformat().encode()))
    done = asyncio.get_running_loop().create_future()
    in_flight[webhook_id] = done
    try:
        await asyncio.wait_for(
            producer.send_and_wait(kafka_topic, value=body, key=key.encode(), headers=headers), 3
        )
        published[webhook_id] = True
        if len(published) > DEDUPE_CAPACITY:
            published.popitem(last=False)
        done.set_result(True)
        return {"status": status}
    except Exception:
        done.set_result(False)
        return Response(status_code=503, headers={"Retry-After": "5"})
    finally:
        in_flight.pop(webhook_id, None)
