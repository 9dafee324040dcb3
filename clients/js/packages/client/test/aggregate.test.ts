/**
 * Live aggregate stores against a scripted socket: the full frame, deltas (changed groups
 * replace, emptied groups vanish), order by group key, sharing, resume by value after a
 * reconnect or an epoch change, refusals, and the REST one-shot.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { LivebaseError } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, flush, json, until, type Frame } from './fakes.js';

const noFetch = fakeFetch(() => json(500, {}));

type Shipment = { status: 'late' | 'ok' | 'lost'; weight_kg: number | null };

function agg(sub: number, seq: number, groups: Record<string, unknown>[], removed: Record<string, unknown>[] = [], full = false): Frame {
  return { type: 'aggregate', sub_id: sub, seq, full, groups, removed };
}

const fixture = (name: string) =>
  JSON.parse(readFileSync(fileURLToPath(new URL(`../../../../../crates/livebase-protocol/fixtures/client/${name}.json`, import.meta.url)), 'utf8')) as Frame;

describe('live aggregates', () => {
  it('show the full frame, then replace the groups a delta names and drop the ones it removes, sorted by group key', async () => {
    const rt = new FakeRealtime();
    rt.seq = 10;
    rt.aggregates.set('shipments', [
      { status: 'ok', count: 9, 'sum(weight_kg)': 31 },
      { status: 'late', count: 2, 'sum(weight_kg)': 10.5 },
      { status: 'lost', count: 1, 'sum(weight_kg)': null },
    ]);
    const c = fakeClient(rt, noFetch);
    const kpi = c.collection<Shipment>('shipments').aggregate({ filter: 'status=neq.lost', group: ['status'], fn: ['count', 'sum(weight_kg)'] });
    expect(kpi.getSnapshot()).toMatchObject({ status: 'loading', groups: [], seq: null, stale: true });
    const groups = await kpi.ready();
    // The request has the shape of the protocol's fixture.
    const sent = rt.last.sentOfType('subscribe')[0]!;
    const { ref: _ref, ...shape } = fixture('subscribe_aggregate');
    expect({ ...sent, ref: undefined }).toEqual({ ...shape, ref: undefined });
    expect(groups.map((g) => g.status)).toEqual(['late', 'lost', 'ok']);
    expect(kpi.getSnapshot()).toMatchObject({ status: 'ready', seq: 10, stale: false, error: null });
    const sub = rt.subId('shipments', `status=neq.lost#${JSON.stringify(sent.aggregate)}`);

    // A row moves from late to ok: both groups, current values.
    rt.last.push(agg(sub, 11, [{ status: 'late', count: 1, 'sum(weight_kg)': 3 }, { status: 'ok', count: 10, 'sum(weight_kg)': 38.5 }]));
    await flush();
    expect(kpi.groups).toEqual([
      { status: 'late', count: 1, 'sum(weight_kg)': 3 },
      { status: 'lost', count: 1, 'sum(weight_kg)': null },
      { status: 'ok', count: 10, 'sum(weight_kg)': 38.5 },
    ]);
    // The last lost row goes: the group vanishes; a new group appears in its sorted place.
    rt.last.push(agg(sub, 12, [{ status: 'aaa', count: 1, 'sum(weight_kg)': 1 }], [{ status: 'lost' }]));
    await flush();
    expect(kpi.groups.map((g) => g.status)).toEqual(['aaa', 'late', 'ok']);
    expect(kpi.getSnapshot().seq).toBe(12);
    // A delta older than the values held, and one for another subscription, change nothing.
    const before = kpi.getSnapshot();
    rt.last.push(agg(sub, 11, [{ status: 'late', count: 99, 'sum(weight_kg)': 0 }]));
    rt.last.push(agg(sub + 100, 13, [{ status: 'late', count: 98, 'sum(weight_kg)': 0 }]));
    await flush();
    expect(kpi.getSnapshot()).toBe(before);
    kpi.close();
    await until('unsubscribed', () => rt.last.sentOfType('unsubscribe').length === 1);
    expect(rt.last.sentOfType('unsubscribe')[0]).toMatchObject({ sub_id: sub });
    await c.close();
  });

  it('without group hold exactly the one group the server sends', async () => {
    const rt = new FakeRealtime();
    rt.aggregates.set('shipments', [{ count: 0, 'max(weight_kg)': null }]);
    const c = fakeClient(rt, noFetch);
    const kpi = c.collection('shipments').aggregate({ fn: ['count', 'max( weight_kg )'] });
    expect(await kpi.ready()).toEqual([{ count: 0, 'max(weight_kg)': null }]);
    const sent = rt.last.sentOfType('subscribe')[0]!;
    expect(sent.aggregate).toEqual({ fn: ['count', 'max(weight_kg)'] }); // no group, label as the server writes it
    expect(sent).not.toHaveProperty('filter');
    const sub = rt.subId('shipments', `#${JSON.stringify(sent.aggregate)}`);
    rt.last.push(agg(sub, 1, [{ count: 1, 'max(weight_kg)': 4 }]));
    await flush();
    expect(kpi.groups).toEqual([{ count: 1, 'max(weight_kg)': 4 }]);
    await c.close();
  });

  it('after a reconnect subscribe again and let the next full frame replace the values', async () => {
    const rt = new FakeRealtime();
    rt.seq = 5;
    rt.aggregates.set('shipments', [
      { status: 'late', count: 2 },
      { status: 'ok', count: 1 },
    ]);
    rt.onSubscribe = (_s, f) => [
      { type: 'subscribed', ref: f.ref, sub_id: 40, seq: 5, epoch: 'e1' },
      agg(40, 5, [{ status: 'late', count: 2 }, { status: 'ok', count: 1 }], [], true),
    ];
    const c = fakeClient(rt, noFetch);
    const kpi = c.collection('shipments').aggregate({ group: ['status'], fn: ['count'] });
    await kpi.ready();
    rt.last.push(agg(40, 6, [{ status: 'late', count: 3 }]));
    await flush();
    expect(kpi.groups).toEqual([{ status: 'late', count: 3 }, { status: 'ok', count: 1 }]);

    // While away: late emptied, lost appeared. The new connection's reply comes in two steps.
    const second = { reply: (_frames: Frame[]): void => {} };
    rt.onSubscribe = (sock, f) => {
      second.reply = (frames) => frames.map((fr) => sock.push({ ...fr, ref: fr.type === 'subscribed' ? f.ref : undefined }));
      return null;
    };
    rt.last.drop(1006);
    await until('stale', () => kpi.getSnapshot().stale);
    expect(kpi.getSnapshot()).toMatchObject({ status: 'ready', seq: 6 }); // the old values, marked stale
    await until('resubscribed', () => rt.sockets.length === 2 && rt.last.sentOfType('subscribe').length === 1);
    expect(rt.last.sentOfType('subscribe')[0]).toMatchObject({ collection: 'shipments', since: 6, epoch: 'e1', aggregate: { group: ['status'], fn: ['count'] } });
    second.reply([{ type: 'subscribed', sub_id: 40, seq: 9, epoch: 'e1' }]);
    // A delta before the full frame of this subscription would apply to values of another time: ignored.
    rt.last.push(agg(40, 9, [{ status: 'ok', count: 77 }]));
    await flush();
    expect(kpi.getSnapshot()).toMatchObject({ stale: true, seq: 6 });
    rt.last.push(agg(40, 9, [{ status: 'lost', count: 1 }, { status: 'ok', count: 2 }], [], true));
    const s = await kpi.until((x) => !x.stale);
    expect(s.groups).toEqual([{ status: 'lost', count: 1 }, { status: 'ok', count: 2 }]);
    expect(s.seq).toBe(9);
    // A full frame on the running subscription (after an `auth` with another identity) replaces them too.
    rt.last.push(agg(40, 10, [{ status: 'ok', count: 1 }], [], true));
    await flush();
    expect(kpi.groups).toEqual([{ status: 'ok', count: 1 }]);
    await c.close();
  });

  it('on resync_required for a resume ask again without since and take the fresh values', async () => {
    const rt = new FakeRealtime();
    let round = 0;
    rt.onSubscribe = (_s, f) => {
      round++;
      if (round === 1) return [{ type: 'subscribed', ref: f.ref, sub_id: 3, seq: 4, epoch: 'old' }, agg(3, 4, [{ count: 4 }], [], true)];
      if (round === 2) return [{ type: 'resync_required', ref: f.ref, sub_id: 0, reason: 'epoch_changed' }];
      return [{ type: 'subscribed', ref: f.ref, sub_id: 8, seq: 1, epoch: 'new' }, agg(8, 1, [{ count: 1 }], [], true)];
    };
    const c = fakeClient(rt, noFetch);
    const kpi = c.collection('shipments').aggregate({ fn: ['count'] });
    expect(await kpi.ready()).toEqual([{ count: 4 }]);
    rt.last.drop(4001);
    const s = await kpi.until((x) => !x.stale && x.seq === 1, 2000);
    expect(s.groups).toEqual([{ count: 1 }]);
    const [resume, fresh] = rt.last.sentOfType('subscribe');
    expect(resume).toMatchObject({ since: 4, epoch: 'old' });
    expect(fresh).not.toHaveProperty('since');
    expect(fresh).not.toHaveProperty('epoch');
    await c.close();
  });

  it('share one server subscription between stores of the same aggregate; other functions are another', async () => {
    const rt = new FakeRealtime();
    rt.aggregates.set('shipments', [{ status: 'late', count: 2 }]);
    const c = fakeClient(rt, noFetch);
    const col = c.collection('shipments');
    const a = col.aggregate({ group: ['status'], fn: ['count'] });
    const b = col.aggregate({ group: ['status'], fn: [' count '] });
    const other = col.aggregate({ group: ['status'], fn: ['count', 'sum(weight_kg)'] });
    await Promise.all([a.ready(), b.ready(), other.ready()]);
    expect(rt.last.sentOfType('subscribe').map((f) => f.aggregate)).toEqual([
      { group: ['status'], fn: ['count'] },
      { group: ['status'], fn: ['count', 'sum(weight_kg)'] },
    ]);
    const sub = rt.subId('shipments', `#${JSON.stringify({ fn: ['count'], group: ['status'] })}`);
    rt.last.push(agg(sub, 1, [{ status: 'late', count: 3 }]));
    await flush();
    expect(a.groups).toEqual([{ status: 'late', count: 3 }]);
    expect(b.groups).toBe(b.groups);
    expect(b.groups).toEqual(a.groups);
    expect(other.groups).toEqual([{ status: 'late', count: 2 }]);
    a.close();
    await flush();
    expect(rt.last.sentOfType('unsubscribe')).toEqual([]); // b still uses it
    b.close();
    other.close();
    await until('both unsubscribed', () => rt.last.sentOfType('unsubscribe').length === 2);
    await c.close();
  });

  it('report a refused aggregate as status error with the server code', async () => {
    const rt = new FakeRealtime();
    rt.onSubscribe = (_s, f) => [{ type: 'error', ref: f.ref, code: 'invalid_aggregate', message: "sum(eta): 'eta' is not a number field" }];
    const c = fakeClient(rt, noFetch);
    const kpi = c.collection('shipments').aggregate({ fn: ['sum(eta)'] });
    const err = await kpi.ready().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LivebaseError);
    expect((err as LivebaseError).code).toBe('invalid_aggregate');
    expect(kpi.getSnapshot()).toMatchObject({ status: 'error', groups: [] });
    await c.close();
  });

  it('aggregateOnce asks GET /aggregate with the filter, group and functions and returns seq and groups', async () => {
    const rt = new FakeRealtime();
    const f = fakeFetch(() => json(200, { seq: 4, groups: [{ status: 'late', count: 2, 'sum(weight_kg)': 10.5 }] }));
    const c = fakeClient(rt, f);
    const r = await c.collection<Shipment>('shipments').aggregateOnce({ filter: { weight_kg: 'gt.1' }, group: ['status'], fn: ['count', 'sum(weight_kg)'] });
    expect(r).toEqual({ seq: 4, groups: [{ status: 'late', count: 2, 'sum(weight_kg)': 10.5 }] });
    const late: number = r.groups[0]!.count; // typed: count is a number
    expect(late).toBe(2);
    const call = f.calls[0]!;
    expect(call.path).toBe('/api/collections/shipments/aggregate');
    const q = new URL(call.url).searchParams;
    expect([q.get('weight_kg'), q.get('group'), q.get('fn')]).toEqual(['gt.1', 'status', 'count,sum(weight_kg)']);
    expect(call.headers.authorization).toBe('Bearer tok');

    const refused = fakeClient(rt, fakeFetch(() => json(422, { error: { code: 'invalid_aggregate', message: "'eta' …", details: { field: 'eta' } } })));
    const err = (await refused.collection('shipments').aggregateOnce({ fn: ['sum(eta)'] }).catch((e: unknown) => e)) as LivebaseError;
    expect([err.code, err.status, (err.details as { field: string }).field]).toEqual(['invalid_aggregate', 422, 'eta']);
    await Promise.all([c.close(), refused.close()]);
  });
});
