#!/usr/bin/env node
// Sends activities to an activity collector from Node.js: a batch with TrackActivities, then two batches
// on a StreamActivities stream. The client is built at run time from protos/ with @grpc/proto-loader;
// no code generation step.
//
//   npm install
//   ACTIVITY_API_KEY=ak_... node track.js --target 127.0.0.1:50051 --protos ../../protos
//
// Prints one JSON object with what the collector answered, and exits 0 when every call succeeded.

'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const target = option('target', process.env.ACTIVITY_TARGET || '127.0.0.1:50051');
const protos = option('protos', path.join(__dirname, '..', '..', 'protos'));

const definition = protoLoader.loadSync('activity/v1/activity.proto', {
  includeDirs: [protos],
  keepCase: true, // field names as in the proto: target.id, anonymous_id, ...
  longs: String, // int64 and uint64 (price, quantity, sequence) as strings: no precision lost
  enums: String, // rejection reasons by name
  defaults: false,
});
const activityV1 = grpc.loadPackageDefinition(definition).activity.v1;
const client = new activityV1.ActivityService(target, grpc.credentials.createInsecure());
// Every call carries the tenant's API key (`activity-collector keys create --tenant NAME` prints one).
const metadata = new grpc.Metadata();
if (process.env.ACTIVITY_API_KEY) {
  metadata.set('authorization', `Bearer ${process.env.ACTIVITY_API_KEY}`);
}

function now() {
  const ms = Date.now();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

function activity(action, sku, extra = {}) {
  return {
    id: crypto.randomUUID(), // the idempotency key: a resend with the same id is not counted twice
    action,
    target: { type: 'product', id: sku },
    user: { anonymous_id: 'node-visitor-1', session_id: 'node-session-1' },
    metadata: { locale: 'en-US', device_type: 'desktop', page_url: `https://shop.example/p/${sku}` },
    occurred_at: now(),
    ...extra,
  };
}

// RESOURCE_EXHAUSTED and UNAVAILABLE ask for a resend; the ids stay the same, so nothing counts twice.
const RESEND = new Set([grpc.status.RESOURCE_EXHAUSTED, grpc.status.UNAVAILABLE]);

function trackActivities(request, attempt = 1) {
  return new Promise((resolve, reject) => {
    client.trackActivities({ ...request, sent_at: now() }, metadata, { deadline: Date.now() + 10000 }, (error, response) => {
      if (!error) return resolve(response);
      if (RESEND.has(error.code) && attempt < 5) {
        const delay = 250 * 2 ** attempt;
        return setTimeout(() => trackActivities(request, attempt + 1).then(resolve, reject), delay);
      }
      return reject(error);
    });
  });
}

function streamActivities(batches) {
  return new Promise((resolve, reject) => {
    const answers = [];
    const call = client.streamActivities(metadata);
    call.on('data', (answer) => answers.push(answer));
    call.on('error', reject);
    call.on('end', () => resolve(answers));
    batches.forEach((activities, n) => call.write({ sequence: String(n + 1), activities, sent_at: now() }));
    call.end();
  });
}

async function main() {
  const batch = [
    activity('view', 'sku-1001'),
    activity('add_to_cart', 'sku-1001', {
      metadata: { quantity: '1', price: '1999', currency: 'EUR' },
    }),
    activity('view', ''), // rejected: target.id is required
  ];
  const response = await trackActivities({ activities: batch });

  const answers = await streamActivities([
    [activity('view', 'sku-2001'), activity('view', 'sku-2002')],
    [activity('purchase', 'sku-2001', { metadata: { price: '500', currency: 'USD', order_id: 'o-1' } })],
  ]);

  const summary = {
    sent_ids: batch.map((a) => a.id),
    batch: {
      accepted_count: response.accepted_count,
      rejections: (response.rejections || []).map((r) => ({ index: r.index, reason: r.reason, field: r.field })),
    },
    stream: answers
      .map((a) => ({ sequence: Number(a.sequence), accepted_count: a.accepted_count, code: a.status ? a.status.code : 0 }))
      .sort((x, y) => x.sequence - y.sequence),
  };
  console.log(JSON.stringify(summary));
}

main()
  .catch((error) => {
    console.error(`track.js: ${error.code !== undefined ? grpc.status[error.code] : ''} ${error.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
