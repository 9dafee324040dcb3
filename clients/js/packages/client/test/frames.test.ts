/**
 * The SDK against the protocol's shared JSON fixtures (`crates/livebase-protocol/fixtures`),
 * the same files the Rust crate's round-trip tests read: every server frame decodes with the
 * fields the SDK reads, the frames drive a live query through snapshot, changes, resume
 * (with `epoch`) and an `epoch_changed` resync, and the SDK's resume request has the shape
 * of the `subscribe_resume` fixture.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decodeServerFrame, SERVER_FRAME_TYPES, type SubscriptionEvent } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, flush, json, until, type Frame } from './fakes.js';

const fixtureDir = (side: 'client' | 'server') =>
  fileURLToPath(new URL(`../../../../../crates/livebase-protocol/fixtures/${side}/`, import.meta.url));

function fixtures(side: 'client' | 'server'): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(fixtureDir(side)).sort()) {
    if (name.endsWith('.json')) out.set(name.slice(0, -5), readFileSync(fixtureDir(side) + name, 'utf8').trim());
  }
  return out;
}

const server = fixtures('server');
const client = fixtures('client');

function frame(name: string): Frame {
  const text = server.get(name);
  if (text === undefined) throw new Error(`no fixture ${name}`);
  const f = decodeServerFrame(text);
  if (!f) throw new Error(`fixture ${name} does not decode`);
  return f as Frame;
}

const isRefJson = (v: unknown) => v === null || ['number', 'string', 'object', 'boolean'].includes(typeof v);

/** What the SDK reads from each frame type (see connection.ts, subscriptions.ts, channel.ts). */
const readFields: Record<string, (f: Frame) => void> = {
  welcome: (f) => {
    expect(typeof f.conn_id).toBe('string');
    expect(typeof f.timeout_ms).toBe('number');
    expect(f.epoch === undefined || typeof f.epoch === 'string').toBe(true);
    if (f.cut_off !== undefined) {
      const c = f.cut_off as { reason: unknown; at_seq: unknown };
      expect(typeof c.reason).toBe('string');
      expect(typeof c.at_seq).toBe('number');
    }
  },
  subscribed: (f) => {
    expect(typeof f.sub_id).toBe('number');
    expect(typeof f.seq).toBe('number');
    expect(typeof f.epoch).toBe('string');
    expect(isRefJson(f.ref)).toBe(true);
  },
  change: (f) => {
    expect(typeof f.sub_id).toBe('number');
    expect(typeof f.seq).toBe('number');
    expect(['insert', 'update', 'delete']).toContain(f.op);
    expect(['add', 'update', 'remove']).toContain(f.view);
    expect(typeof f.id).toBe('string');
    expect(typeof f.version).toBe('number');
    expect(f.actor === null || typeof f.actor === 'string').toBe(true);
    expect(typeof f.committed_at).toBe('string');
    expect(f.op === 'delete' ? f.new === null : typeof f.new === 'object').toBe(true);
    expect(f.op === 'insert' ? f.old === null : typeof f.old === 'object').toBe(true);
  },
  snapshot: (f) => {
    expect(typeof f.sub_id).toBe('number');
    expect(typeof f.seq).toBe('number');
    expect(Array.isArray(f.rows)).toBe(true);
    expect(typeof f.done).toBe('boolean');
  },
  aggregate: (f) => {
    expect(typeof f.sub_id).toBe('number');
    expect(typeof f.seq).toBe('number');
    expect(typeof f.full).toBe('boolean');
    expect(Array.isArray(f.groups)).toBe(true);
    for (const g of f.groups as unknown[]) expect(typeof g === 'object' && g !== null && !Array.isArray(g)).toBe(true);
    expect(Array.isArray(f.removed)).toBe(true);
    for (const g of f.removed as unknown[]) expect(typeof g === 'object' && g !== null && !Array.isArray(g)).toBe(true);
  },
  presence_state: (f) => {
    expect(typeof f.channel).toBe('string');
    for (const entries of Object.values(f.state as Record<string, unknown[]>)) {
      for (const e of entries as { conn_id: unknown }[]) expect(typeof e.conn_id).toBe('string');
    }
  },
  presence_diff: (f) => {
    expect(typeof f.channel).toBe('string');
    expect(typeof f.joins).toBe('object');
    expect(typeof f.leaves).toBe('object');
  },
  broadcast: (f) => {
    expect(typeof f.channel).toBe('string');
    expect(typeof f.event).toBe('string');
    expect('payload' in f).toBe(true);
    expect(typeof f.from).toBe('string');
  },
  ok: (f) => expect(isRefJson(f.ref)).toBe(true),
  pong: (f) => expect(typeof f.server_time).toBe('string'),
  error: (f) => {
    expect(typeof f.code).toBe('string');
    expect(typeof f.message).toBe('string');
    expect(f.sub_id === undefined || typeof f.sub_id === 'number').toBe(true);
  },
  resync_required: (f) => {
    expect(typeof f.sub_id).toBe('number');
    expect(['log_trimmed', 'epoch_changed']).toContain(f.reason);
  },
};

describe('protocol fixtures', () => {
  it('cover every server frame type, and each decodes with the fields the SDK reads', () => {
    const seen = new Set<string>();
    for (const [name, text] of server) {
      const f = decodeServerFrame(text);
      expect(f, name).not.toBeNull();
      expect(SERVER_FRAME_TYPES, name).toContain(f!.type);
      readFields[f!.type]!(f as Frame);
      seen.add(f!.type);
    }
    expect([...seen].sort()).toEqual([...SERVER_FRAME_TYPES].sort());
  });

  it('non-objects and frames without a string type decode to nothing', () => {
    for (const text of ['not json', '[]', '7', 'null', '{"type":3}', '{}']) expect(decodeServerFrame(text)).toBeNull();
    expect(decodeServerFrame('{"type":"from_the_future","x":1}')).toEqual({ type: 'from_the_future', x: 1 });
  });

  it('drive a live query: snapshot, changes, resume with since and epoch, refetch on epoch_changed', async () => {
    const rt = new FakeRealtime();
    const sub = frame('subscribed');
    const epoch = sub.epoch as string;
    let round = 0;
    rt.onSubscribe = (_s, f) => {
      round++;
      if (round === 1) return [{ ...sub, ref: f.ref }, frame('snapshot'), { ...frame('snapshot_done'), rows: [] }];
      if (round === 2) return [{ ...frame('resync_required_epoch_changed'), ref: f.ref }];
      return [
        { type: 'subscribed', ref: f.ref, sub_id: 3, seq: 7, epoch: 'next-epoch' },
        { type: 'snapshot', sub_id: 3, seq: 7, rows: [], done: true },
      ];
    };
    const c = fakeClient(rt, fakeFetch(() => json(500, {})));
    const items = c.collection('shipments');
    const q = items.live();
    const events: SubscriptionEvent[] = [];
    items.subscribe((e) => events.push(e));
    expect((await q.ready()).map((r) => r.id)).toEqual(['01jd5x']);

    rt.last.push(frame('change')); // update that moves 01jd5x out (view remove)
    rt.last.push(frame('change_insert'));
    await flush();
    expect(q.rows.map((r) => r.id)).toEqual(['01jd5y']);
    rt.last.push(frame('change_delete'));
    await flush();
    expect(q.rows).toEqual([]);
    expect(events.filter((e) => e.type === 'change').map((e) => (e as { seq: number }).seq)).toEqual([4811, 4812, 4813]);

    rt.last.drop(4001);
    await until('resubscribed', () => rt.sockets.length === 2 && rt.last.sentOfType('subscribe').length >= 2);
    const [resume, restart] = rt.last.sentOfType('subscribe');
    expect(resume).toMatchObject({ collection: 'shipments', since: 4813, epoch });
    const shape = JSON.parse(client.get('subscribe_resume')!) as Frame;
    expect(Object.keys(resume!).filter((k) => k !== 'filter').sort()).toEqual(
      Object.keys(shape).filter((k) => k !== 'filter').sort(),
    );
    // epoch_changed: start over with a snapshot, no since, no stale epoch.
    expect(restart).toMatchObject({ collection: 'shipments', snapshot: true });
    expect(restart).not.toHaveProperty('since');
    expect(restart).not.toHaveProperty('epoch');
    await until('resync reported', () => events.some((e) => e.type === 'resync'));
    expect(events.find((e) => e.type === 'resync')).toEqual({ type: 'resync', reason: 'epoch_changed' });
    await c.close();
  });

  it('resume without epoch from servers that do not send one', async () => {
    const rt = new FakeRealtime(); // its `subscribed` frames carry no epoch
    const c = fakeClient(rt, fakeFetch(() => json(500, {})));
    const events: SubscriptionEvent[] = [];
    c.collection('items').subscribe((e) => events.push(e));
    await until('subscribed', () => events.some((e) => e.type === 'subscribed'));
    rt.last.drop(4001);
    await until('resubscribed', () => rt.sockets.length === 2 && rt.last.sentOfType('subscribe').length === 1);
    const resume = rt.last.sentOfType('subscribe')[0]!;
    expect(resume.since).toBe(0);
    expect(resume).not.toHaveProperty('epoch');
    await c.close();
  });

  it('drive a live aggregate: the subscribe_aggregate request, then the aggregate fixture as a delta', async () => {
    const rt = new FakeRealtime();
    const delta = frame('aggregate');
    const sub = delta.sub_id as number;
    rt.onSubscribe = (_s, f) => [
      { type: 'subscribed', ref: f.ref, sub_id: sub, seq: 4810, epoch: 'e' },
      {
        type: 'aggregate',
        sub_id: sub,
        seq: 4810,
        full: true,
        groups: [
          { status: 'late', count: 2, 'sum(weight_kg)': 10.5 },
          { status: 'lost', count: 1, 'sum(weight_kg)': 1.0 },
          { status: 'ok', count: 9, 'sum(weight_kg)': 31.0 },
        ],
        removed: [],
      },
    ];
    const c = fakeClient(rt, fakeFetch(() => json(500, {})));
    const kpi = c.collection('shipments').aggregate({ filter: 'status=neq.lost', group: ['status'], fn: ['count', 'sum(weight_kg)'] });
    await kpi.ready();
    const { ref: _r, ...sent } = rt.last.sentOfType('subscribe')[0]!;
    const { ref: _f, ...shape } = JSON.parse(client.get('subscribe_aggregate')!) as Frame;
    expect(sent).toEqual(shape);
    rt.last.push(delta);
    await flush();
    expect(kpi.getSnapshot().seq).toBe(4811);
    expect(kpi.groups).toEqual([
      { status: 'late', count: 1, 'sum(weight_kg)': 3.0 },
      { status: 'ok', count: 9, 'sum(weight_kg)': 31.0 },
    ]);
    await c.close();
  });

  it('take the welcome fixture as a usable connection', async () => {
    const rt = new FakeRealtime();
    rt.autoAccept = false;
    const c = fakeClient(rt, fakeFetch(() => json(500, {})));
    await until('socket', () => rt.sockets.length === 1);
    const s = rt.last;
    s.readyState = 1;
    s.onopen?.({});
    s.push(frame('welcome'));
    await c.whenConnected();
    expect(c.getStatus().connId).toBe('c7');
    await c.close();
  });
});
