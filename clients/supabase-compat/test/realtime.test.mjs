// supabase-js's realtime (realtime-js over Phoenix channels) against Livebase's
// /realtime/v1: the real, unmodified client, the real binary. Each test is something an app
// written for Supabase already does: postgres_changes with filters and several bindings,
// rules per event, broadcast with self and ack, presence (also when a client dies), both
// serializers, bad keys.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { createClient } from '@supabase/supabase-js';
import { startServer } from './server.mjs';

const WAIT = 10_000;

let s;
const clients = [];

before(async () => {
  s = await startServer();
  await s.createCollection({
    name: 'orders',
    fields: [
      { name: 'title', type: 'text', required: true },
      { name: 'qty', type: 'integer' },
      { name: 'status', type: 'select', values: ['open', 'late', 'done'] },
      { name: 'owner', type: 'text' },
    ],
    rules: { list: 'true', view: 'auth.role != "clerk" || record.owner == auth.sub', create: 'true', update: 'true', delete: 'true' },
  });
});

after(async () => {
  for (const c of clients) await c.removeAllChannels();
  await s?.stop();
});

function client(key = s.anonKey, options = {}) {
  const c = createClient(s.url, key, { ...s.clientOptions, ...options });
  clients.push(c);
  return c;
}

/** Subscribes and resolves on SUBSCRIBED; rejects on any other status or after WAIT. */
function subscribed(channel) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no SUBSCRIBED within the wait')), WAIT);
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') {
        clearTimeout(timer);
        resolve(channel);
      } else if (status !== 'CLOSED') {
        clearTimeout(timer);
        reject(new Error(`${status}: ${err?.message ?? ''}`));
      }
    });
  });
}

/** Collects events into `list` and lets a test wait for the n-th. */
function collector() {
  const list = [];
  const waiters = [];
  const push = (e) => {
    list.push(e);
    for (const w of [...waiters]) if (list.length >= w.n) { waiters.splice(waiters.indexOf(w), 1); w.resolve(list); }
  };
  const until = (n) =>
    list.length >= n
      ? Promise.resolve(list)
      : new Promise((resolve, reject) => {
          const w = { n, resolve };
          waiters.push(w);
          setTimeout(() => reject(new Error(`waited for ${n} events, got ${list.length}: ${JSON.stringify(list)}`)), WAIT);
        });
  return { list, push, until };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function insert(row) {
  const r = await s.admin('POST', '/api/collections/orders/records', row);
  assert.equal(r.status, 201, JSON.stringify(r.data));
  return r.data;
}

describe('postgres_changes', () => {
  it('delivers inserts, updates and deletes to each binding whose event and filter match', async () => {
    const c = client();
    const all = collector();
    const lateInserts = collector();
    const bigOnes = collector();
    const deletes = collector();
    const ch = c
      .channel('orders-feed')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'orders' }, all.push)
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'orders', filter: 'status=eq.late' }, lateInserts.push)
      .on('postgres_changes', { event: '*', schema: 'public', table: 'orders', filter: 'qty=gt.10' }, bigOnes.push)
      .on('postgres_changes', { event: 'DELETE', schema: 'public', table: 'orders' }, deletes.push);
    await subscribed(ch);

    const a = await insert({ title: 'a', qty: 1, status: 'open' });
    const b = await insert({ title: 'b', qty: 50, status: 'late' });
    await s.admin('PATCH', `/api/collections/orders/records/${a.id}`, { qty: 20 });
    await s.admin('DELETE', `/api/collections/orders/records/${b.id}`);

    const got = await all.until(4);
    assert.deepEqual(got.map((e) => e.eventType), ['INSERT', 'INSERT', 'UPDATE', 'DELETE']);
    assert.equal(got[0].schema, 'public');
    assert.equal(got[0].table, 'orders');
    assert.equal(got[0].new.title, 'a');
    assert.equal(got[0].new.qty, 1, 'typed values arrive typed');
    assert.deepEqual(got[0].old, {});
    assert.equal(got[2].old.qty, 1);
    assert.equal(got[2].new.qty, 20);
    assert.equal(got[3].old.id, b.id);
    assert.deepEqual(got[3].new, {});
    assert.match(got[0].commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(got[0].errors, null);

    assert.deepEqual((await lateInserts.until(1)).map((e) => e.new.title), ['b']);
    const big = await bigOnes.until(3);
    assert.deepEqual(big.map((e) => `${e.eventType}:${e.new.title ?? e.old.title}`), ['INSERT:b', 'UPDATE:a', 'DELETE:b']);
    assert.deepEqual((await deletes.until(1)).map((e) => e.old.id), [b.id]);
    await sleep(200);
    assert.equal(lateInserts.list.length, 1, 'an INSERT binding gets no update or delete');
    assert.equal(deletes.list.length, 1);
  });

  it('accepts in-list filters and several channels on one client', async () => {
    const c = client();
    const picked = collector();
    const other = collector();
    await subscribed(c.channel('picked').on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'orders', filter: 'status=in.(late,done)' }, picked.push));
    await subscribed(c.channel('other').on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'orders', filter: 'title=eq."Doe, Jane"' }, other.push));
    await insert({ title: 'x', status: 'open' });
    await insert({ title: 'y', status: 'done' });
    await insert({ title: 'Doe, Jane', status: 'late' });
    assert.deepEqual((await picked.until(2)).map((e) => e.new.title), ['y', 'Doe, Jane']);
    assert.deepEqual((await other.until(1)).map((e) => e.new.title), ['Doe, Jane']);
  });

  it('applies the collection rules to every event, per subscriber', async () => {
    const clerk = client(s.anonKey);
    await clerk.realtime.setAuth(s.userToken('u1', 'clerk'));
    const seen = collector();
    await subscribed(clerk.channel('clerk').on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'orders' }, seen.push));
    await insert({ title: 'for u2', owner: 'u2' });
    await insert({ title: 'for u1', owner: 'u1' });
    const got = await seen.until(1);
    await sleep(200);
    assert.deepEqual(got.map((e) => e.new.title), ['for u1']);
  });

  it('reports a binding to an unknown table as a channel error, not a hang', async () => {
    const c = client();
    await assert.rejects(
      subscribed(c.channel('bad').on('postgres_changes', { event: '*', schema: 'public', table: 'nope' }, () => {})),
      /CHANNEL_ERROR.*nope/,
    );
  });
});

describe('broadcast', () => {
  it('reaches the other members, reaches the sender only with self, and is acked when asked', async () => {
    const [a, b] = [client(), client()];
    const atA = collector();
    const atB = collector();
    const chA = a.channel('room1', { config: { broadcast: { self: false, ack: true } } }).on('broadcast', { event: 'cursor' }, atA.push);
    const chB = b.channel('room1', { config: { broadcast: { self: true } } }).on('broadcast', { event: 'cursor' }, atB.push);
    await subscribed(chA);
    await subscribed(chB);
    assert.equal(await chA.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } }), 'ok');
    const got = await atB.until(1);
    assert.deepEqual(got[0].payload, { x: 1 });
    assert.equal(got[0].event, 'cursor');
    await chB.send({ type: 'broadcast', event: 'cursor', payload: { x: 2 } });
    assert.deepEqual((await atA.until(1)).map((e) => e.payload), [{ x: 2 }]);
    assert.deepEqual((await atB.until(2)).map((e) => e.payload), [{ x: 1 }, { x: 2 }], 'self: true');
    await sleep(200);
    assert.equal(atA.list.length, 1, 'self: false');
  });

  it('carries raw binary payloads as bytes', async () => {
    const [a, b] = [client(), client()];
    const got = collector();
    const chA = a.channel('bytes');
    const chB = b.channel('bytes').on('broadcast', { event: 'blob' }, got.push);
    await subscribed(chA);
    await subscribed(chB);
    assert.equal(await chA.send({ type: 'broadcast', event: 'blob', payload: new Uint8Array([0, 1, 2, 255]).buffer }), 'ok');
    const [e] = await got.until(1);
    assert.ok(e.payload instanceof ArrayBuffer, `an ArrayBuffer: ${e.payload}`);
    assert.deepEqual([...new Uint8Array(e.payload)], [0, 1, 2, 255]);
  });

  it('arrives from the REST broadcast endpoint', async () => {
    const c = client();
    const got = collector();
    await subscribed(c.channel('news').on('broadcast', { event: 'headline' }, got.push));
    const r = await fetch(`${s.url}/realtime/v1/api/broadcast`, {
      method: 'POST',
      headers: { apikey: s.anonKey, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ topic: 'news', event: 'headline', payload: { t: 'hi' } }] }),
    });
    assert.equal(r.status, 202);
    assert.deepEqual((await got.until(1))[0].payload, { t: 'hi' });
  });
});

describe('presence', () => {
  it('shows who tracks, and a client whose process dies leaves everyone’s state', async () => {
    const watcher = client();
    const ch = watcher.channel('lobby', { config: { presence: { key: 'watcher' } } });
    const joins = collector();
    const leaves = collector();
    ch.on('presence', { event: 'join' }, joins.push).on('presence', { event: 'leave' }, leaves.push);
    await subscribed(ch);

    // Another client in its own process: it tracks, then is killed without a goodbye.
    const script = `
      import { createClient } from '@supabase/supabase-js';
      const c = createClient(${JSON.stringify(s.url)}, ${JSON.stringify(s.anonKey)}, { auth: { persistSession: false } });
      const ch = c.channel('lobby', { config: { presence: { key: 'alice' } } });
      ch.subscribe(async (status) => {
        if (status === 'SUBSCRIBED') { await ch.track({ user: 'alice' }); console.log('tracked'); }
      });
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], {
      cwd: new URL('..', import.meta.url).pathname,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('the other client did not track')), WAIT);
        child.stdout.on('data', (d) => { if (String(d).includes('tracked')) { clearTimeout(t); resolve(); } });
      });
      const j = await joins.until(1);
      assert.equal(j[0].key, 'alice');
      assert.equal(j[0].newPresences[0].user, 'alice');
      assert.deepEqual(Object.keys(ch.presenceState()).sort(), ['alice']);
    } finally {
      child.kill('SIGKILL');
    }
    const l = await leaves.until(1);
    assert.equal(l[0].key, 'alice');
    assert.deepEqual(ch.presenceState(), {});
  });

  it('tracks and untracks on one socket', async () => {
    const [a, b] = [client(), client()];
    const chB = b.channel('desk', { config: { presence: { key: 'bob' } } });
    await subscribed(chB);
    const chA = a.channel('desk', { config: { presence: { key: 'ann' } } });
    await subscribed(chA);
    assert.equal(await chA.track({ at: 'desk-1' }), 'ok');
    for (let i = 0; i < 100 && !chB.presenceState().ann; i++) await sleep(20);
    assert.equal(chB.presenceState().ann[0].at, 'desk-1');
    assert.equal(await chA.untrack(), 'ok');
    for (let i = 0; i < 100 && chB.presenceState().ann; i++) await sleep(20);
    assert.equal(chB.presenceState().ann, undefined);
  });
});

describe('connection', () => {
  it('speaks serializer 1.0.0 too', async () => {
    const c = client(s.anonKey, { realtime: { vsn: '1.0.0' } });
    const got = collector();
    const ch = c.channel('v1').on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'orders' }, got.push)
      .on('broadcast', { event: 'b' }, got.push);
    await subscribed(ch);
    await insert({ title: 'over v1' });
    assert.equal((await got.until(1))[0].new.title, 'over v1');
  });

  it('refuses a bad key with a channel error within seconds', async () => {
    const c = client('not-a-valid-key');
    const started = Date.now();
    await assert.rejects(subscribed(c.channel('x')), /CHANNEL_ERROR|TIMED_OUT/);
    assert.ok(Date.now() - started < WAIT, 'no hang');
    c.realtime.disconnect();
  });
});
