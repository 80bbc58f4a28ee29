// Baseline relay: one WebSocket connection in, each message POSTed to every
// subscriber. One undici Pool per subscriber with `maxInFlight` connections
// (the same bound wsbridge is given); reading pauses while any subscriber has
// more than `maxQueued` requests waiting, so memory stays bounded.
// Usage: node relay.js CONFIG.json   ({source, sinks: [...], maxInFlight})
'use strict';
const fs = require('fs');
const WebSocket = require('ws');
const { Pool } = require('undici');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const maxInFlight = cfg.maxInFlight || 64;
const maxQueued = cfg.maxQueued || 10000;

const subs = cfg.sinks.map((uri) => {
  const u = new URL(uri);
  return {
    pool: new Pool(u.origin, { connections: maxInFlight, pipelining: 1, keepAliveTimeout: 30000 }),
    path: u.pathname + u.search,
    pending: 0,
  };
});

let ws = null;
let paused = false;
let delivered = 0;
let failed = 0;

function maybeResume() {
  if (paused && subs.every((s) => s.pending < maxQueued / 2)) {
    paused = false;
    if (ws) ws.resume();
  }
}

function deliver(sub, body, isBinary) {
  sub.pending++;
  sub.pool
    .request({
      method: 'POST',
      path: sub.path,
      body,
      headers: { 'content-type': isBinary ? 'application/octet-stream' : 'application/json' },
    })
    .then(async (res) => {
      await res.body.dump();
      if (res.statusCode >= 200 && res.statusCode < 300) delivered++;
      else failed++;
    })
    .catch(() => {
      failed++;
    })
    .finally(() => {
      sub.pending--;
      maybeResume();
    });
}

let attempts = 0;
function connect() {
  attempts++;
  if (attempts > 1000) {
    console.error('giving up after 1000 connection attempts');
    process.exit(1);
  }
  ws = new WebSocket(cfg.source);
  ws.on('open', () => console.error('connected to', cfg.source));
  ws.on('message', (data, isBinary) => {
    for (const s of subs) deliver(s, data, isBinary);
    if (!paused && subs.some((s) => s.pending >= maxQueued)) {
      paused = true;
      ws.pause();
    }
  });
  ws.on('close', () => setTimeout(connect, 500));
  ws.on('error', (e) => console.error('websocket error:', e.message));
}

function stop() {
  console.error(`stopping: delivered ${delivered}, failed ${failed}`);
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
connect();
