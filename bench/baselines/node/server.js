// The conventional Shopify webhook ingress that aftercart is benchmarked against: Express, Shopify's
// official @shopify/shopify-api webhook validation, kafkajs. Written the way the libraries' docs
// show, with aftercart's contract where it matters for a fair comparison: answer 200 only after
// Kafka acknowledged (acks=-1), same topics, same journey keys (kafkajs's default partitioner is
// the Java murmur2 one, as aftercart's), same headers, an in-memory dedupe window on the webhook id.
//
// Environment: PORT, KAFKA_BROKERS, SHOPIFY_SECRET, TOPIC_PREFIX (default "shopify.").
'use strict';

require('@shopify/shopify-api/adapters/node');
const { shopifyApi, ApiVersion, LogSeverity } = require('@shopify/shopify-api');
const express = require('express');
const { Kafka, logLevel } = require('kafkajs');

const PORT = Number(process.env.PORT || 8081);
const BROKERS = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',');
const SECRET = process.env.SHOPIFY_SECRET || 'aftercart-dev-secret';
const PREFIX = process.env.TOPIC_PREFIX || 'shopify.';
const DEDUPE_CAPACITY = 1_000_000;

const shopify = shopifyApi({
  apiKey: 'aftercart-bench',
  apiSecretKey: SECRET,
  scopes: [],
  hostName: 'localhost',
  isEmbeddedApp: false,
  apiVersion: ApiVersion.July25,
  logger: { level: LogSeverity.Error },
});

const kafka = new Kafka({ clientId: 'baseline-node', brokers: BROKERS, logLevel: logLevel.ERROR });
// kafkajs defaults: no idempotence (it would need maxInFlightRequests: 1), no compression codec
// bundled for lz4, every send() its own produce request.
const producer = kafka.producer({ allowAutoTopicCreation: false });

const COMPLIANCE = new Set(['customers/data_request', 'customers/redact', 'shop/redact', 'app/uninstalled']);

function family(topic) {
  const t = String(topic).trim().toLowerCase();
  if (COMPLIANCE.has(t)) return 'compliance';
  const resource = t.split('/')[0];
  if (resource === 'checkouts') return 'checkouts';
  if (resource === 'carts') return 'carts';
  if (['orders', 'refunds', 'order_transactions'].includes(resource)) return 'orders';
  if (resource.startsWith('customers')) return 'customers';
  return 'other';
}

function journeyKey(fam, shop, payload) {
  const pick = (...values) => values.find((v) => v !== undefined && v !== null && v !== '');
  let part;
  if (fam === 'carts') part = pick(payload.token);
  else if (fam === 'checkouts') part = pick(payload.cart_token, payload.token);
  else if (fam === 'orders') part = pick(payload.cart_token, payload.checkout_token);
  part = pick(part, payload.order_id, payload.id, payload.customer_id, payload.customer && payload.customer.id, payload.shop_id);
  return part === undefined ? shop : `${shop}/${part}`;
}

// Webhook ids already published (insertion-ordered, oldest forgotten first) and those in flight.
const published = new Map();
const inFlight = new Map();

let ready = false;
const app = express();

app.get('/healthz', (req, res) => res.status(ready ? 200 : 503).end());

app.post('/webhooks/shopify', express.text({ type: '*/*', limit: '4mb' }), async (req, res) => {
  if (!ready) return res.status(503).set('Retry-After', '5').end();
  const rawBody = typeof req.body === 'string' ? req.body : '';
  const check = await shopify.webhooks.validate({ rawBody, rawRequest: req, rawResponse: res });
  if (!check.valid) {
    if (check.reason === 'missing_hmac' || check.reason === 'invalid_hmac') return res.status(401).end();
    return res.status(400).json({ error: check.reason, missing: check.missingHeaders });
  }
  const webhookId = check.webhookId;
  if (published.has(webhookId)) return res.json({ status: 'duplicate' });
  const pending = inFlight.get(webhookId);
  if (pending) {
    const ok = await pending.catch(() => false);
    return ok ? res.json({ status: 'duplicate' }) : res.status(503).set('Retry-After', '5').end();
  }
  const shop = String(check.domain).toLowerCase();
  // check.topic is the library's storage form (CARTS_UPDATE): route on the header as sent.
  const fam = family(req.get('x-shopify-topic'));
  let topic = PREFIX + fam;
  let key;
  let status = 'accepted';
  try {
    const payload = JSON.parse(rawBody);
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) throw new Error('not an object');
    key = journeyKey(fam, shop, payload);
  } catch (e) {
    topic = PREFIX + 'quarantine';
    key = shop;
    status = 'quarantined';
  }
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) {
    const n = name.toLowerCase();
    if (n.startsWith('x-shopify-')) headers[n.slice(2)] = String(value);
  }
  headers['aftercart-received-at'] = new Date().toISOString();
  const send = producer
    .send({ topic, acks: -1, timeout: 3000, messages: [{ key, value: rawBody, headers }] })
    .then(() => true);
  inFlight.set(webhookId, send);
  try {
    await send;
    published.set(webhookId, true);
    if (published.size > DEDUPE_CAPACITY) published.delete(published.keys().next().value);
    res.json({ status });
  } catch (e) {
    res.status(503).set('Retry-After', '5').end();
  } finally {
    inFlight.delete(webhookId);
  }
});

async function main() {
  await producer.connect();
  ready = true;
  const server = app.listen(PORT, '127.0.0.1', () => console.log(`baseline-node listening on ${PORT}`));
  server.keepAliveTimeout = 65_000;
  const stop = async () => {
    server.close();
    await producer.disconnect().catch(() => {});
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
