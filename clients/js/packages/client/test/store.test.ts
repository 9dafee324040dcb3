/**
 * Live query stores against a scripted socket: snapshots, change views, sequence
 * bookkeeping, multiplexing, resume and resync, optimistic rows.
 */
import { describe, expect, it } from 'vitest';
import type { SubscriptionEvent } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, flush, json, row, until, type Frame } from './fakes.js';

const noFetch = fakeFetch(() => json(500, {}));

function change(sub: number, seq: number, op: 'insert' | 'update' | 'delete', view: 'add' | 'update' | 'remove', r: Record<string, unknown> & { id: string; version: number }, old: unknown = null): Frame {
  return { type: 'change', sub_id: sub, seq, op, view, id: r.id, version: r.version, actor: 'admin', committed_at: 't', new: op === 'delete' ? null : r, old };
}

describe('live query stores', () => {
  it('apply snapshot chunks, then add / update / remove; repeated or unknown frames change nothing', async () => {
    const rt = new FakeRealtime();
    rt.onSubscribe = (_s, f) => [
      { type: 'subscribed', ref: f.ref, sub_id: 7, seq: 10 },
      { type: 'snapshot', sub_id: 7, seq: 10, rows: [row('a', 1, { qty: 1 })], done: false },
    ];
    const c = fakeClient(rt, noFetch);
    const q = c.collection('items').live({ filter: 'qty=lt.5' });
    await until('subscribed', () => rt.sockets[0]?.sentOfType('subscribe').length === 1);
    expect(rt.last.sentOfType('subscribe')[0]).toMatchObject({ collection: 'items', filter: 'qty=lt.5', snapshot: true });
    expect(q.getSnapshot()).toMatchObject({ status: 'loading', rows: [] }); // partial snapshot not shown
    rt.last.push({ type: 'snapshot', sub_id: 7, seq: 10, rows: [row('b', 1, { qty: 2 })], done: true });
    const ready = await q.ready();
    expect(ready.map((r) => r.id)).toEqual(['a', 'b']);
    expect(q.getSnapshot().stale).toBe(false);

    const s = rt.last;
    s.push(change(7, 11, 'insert', 'add', row('c', 1, { qty: 3 })));
    s.push(change(7, 12, 'update', 'update', row('a', 2, { qty: 4 })));
    s.push(change(7, 13, 'update', 'remove', row('b', 2, { qty: 9 })));
    s.push(change(7, 12, 'update', 'update', row('a', 9, { qty: 0 }))); // seq already seen
    s.push(change(99, 14, 'insert', 'add', row('z', 1))); // not ours
    await flush();
    expect(q.rows).toEqual([row('a', 2, { qty: 4 }), row('c', 1, { qty: 3 })]);
    s.push(change(7, 15, 'delete', 'remove', row('c', 1)));
    await flush();
    expect(q.rows.map((r) => r.id)).toEqual(['a']);
    const snap = q.getSnapshot();
    expect(q.getSnapshot()).toBe(snap); // stable until something changes
    await c.close();
  });

  it('share one server subscription per (collection, filter) between live queries and handlers', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    const items = c.collection('items');
    const q1 = items.live({ filter: 'qty=gt.5' });
    const q2 = items.live({ filter: ' qty=gt.5', order: 'qty.desc' });
    const events: SubscriptionEvent[] = [];
    const off = items.subscribe((e) => events.push(e), { filter: 'qty=gt.5' });
    const q3 = items.live({ filter: { qty: 'gt.5' } });
    const other = items.live({ filter: 'qty=lt.5' });
    await Promise.all([q1.ready(), q2.ready(), q3.ready(), other.ready()]);
    expect(rt.last.sentOfType('subscribe').map((f) => f.filter)).toEqual(['qty=gt.5', 'qty=lt.5']);
    const sub = rt.subId('items', 'qty=gt.5');
    rt.last.push(change(sub, 1, 'insert', 'add', row('x', 1, { qty: 6 })));
    rt.last.push(change(sub, 2, 'insert', 'add', row('y', 1, { qty: 8 })));
    await flush();
    expect(q1.rows.map((r) => r.id)).toEqual(['x', 'y']);
    expect(q2.rows.map((r) => r.id)).toEqual(['y', 'x']); // its own order
    expect(q3.rows.length).toBe(2);
    expect(events.filter((e) => e.type === 'change').length).toBe(2);
    off();
    q1.close();
    q2.close();
    q3.close();
    await until('unsubscribed', () => rt.last.sentOfType('unsubscribe').length === 1);
    expect(rt.last.sentOfType('unsubscribe')[0]).toMatchObject({ sub_id: sub });
    await c.close();
  });

  it('resume every query from its last seq after a reconnect; start over with a snapshot on resync_required', async () => {
    const rt = new FakeRealtime();
    rt.rows.set('items', [row('a', 1)]);
    const c = fakeClient(rt, noFetch);
    const items = c.collection('items');
    const all = items.live();
    const events: SubscriptionEvent[] = [];
    items.subscribe((e) => events.push(e), { filter: 'qty=gt.1' });
    await all.ready();
    await until('both subscribed', () => rt.last.sentOfType('subscribe').length === 2);
    const subAll = rt.subId('items', undefined);
    const subRaw = rt.subId('items', 'qty=gt.1');
    rt.last.push(change(subAll, 5, 'insert', 'add', row('b', 1)));
    rt.last.push(change(subRaw, 6, 'insert', 'add', row('c', 1, { qty: 2 })));
    await flush();

    // The connection drops; the server has trimmed what the unfiltered query missed.
    rt.onSubscribe = (_s, f) =>
      f.filter === undefined
        ? f.since !== undefined
          ? [{ type: 'resync_required', ref: f.ref, sub_id: subAll, reason: 'log_trimmed' }]
          : [
              { type: 'subscribed', ref: f.ref, sub_id: subAll, seq: 40 },
              { type: 'snapshot', sub_id: subAll, seq: 40, rows: [row('a', 3), row('d', 1)], done: true },
            ]
        : [{ type: 'subscribed', ref: f.ref, sub_id: subRaw, seq: Number(f.since) }];
    const first = rt.last;
    first.drop(4001);
    expect(all.getSnapshot().stale).toBe(true);
    expect(all.rows.map((r) => r.id)).toEqual(['a', 'b']); // kept while reconnecting
    await until('resubscribed', () => rt.sockets.length === 2 && rt.last.sentOfType('subscribe').length === 3);
    const sent = rt.last.sentOfType('subscribe');
    expect(sent.filter((f) => f.since !== undefined).map((f) => [f.filter ?? '', f.since])).toEqual([
      ['', 5],
      ['qty=gt.1', 6],
    ]);
    expect(sent.filter((f) => f.snapshot === true).map((f) => f.filter ?? '')).toEqual(['']);
    await until('snapshot replaced the rows', () => all.rows.map((r) => r.id).join() === 'a,d');
    expect(all.rows[0]!.version).toBe(3);
    expect(events.some((e) => e.type === 'subscribed' && e.resumed)).toBe(true);
    await c.close();
  });

  it('keep a subscription that is dropped and taken up again within the delay (StrictMode)', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch, { unsubscribeDelayMs: 50 });
    await c.whenConnected();
    const q = c.collection('items').live({}, { lazy: true });
    const off1 = q.subscribe(() => {});
    off1();
    const off2 = q.subscribe(() => {});
    await q.ready();
    await new Promise((r) => setTimeout(r, 80));
    expect(rt.last.sentOfType('subscribe').length).toBe(1);
    expect(rt.last.sentOfType('unsubscribe').length).toBe(0);
    off2();
    await until('unsubscribed after the delay', () => rt.last.sentOfType('unsubscribe').length === 1);
    await c.close();
  });

  it('a live query joining a plain subscription restarts it with a snapshot and tells handlers to resync', async () => {
    const rt = new FakeRealtime();
    rt.rows.set('items', [row('a', 1)]);
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    const events: SubscriptionEvent[] = [];
    c.collection('items').subscribe((e) => events.push(e));
    await until('plain subscription', () => events.some((e) => e.type === 'subscribed'));
    expect(rt.last.sentOfType('subscribe')[0]).not.toHaveProperty('snapshot');
    const q = c.collection('items').live();
    expect((await q.ready()).map((r) => r.id)).toEqual(['a']);
    expect(rt.last.sent.map((f) => f.type).filter((t) => t !== 'ping')).toEqual(['subscribe', 'unsubscribe', 'subscribe']);
    expect(events.map((e) => e.type)).toEqual(['subscribed', 'resync', 'subscribed']);
    await c.close();
  });

  it('show a create in the views whose filter it matches; the confirmed record replaces it; older events do not regress it', async () => {
    const rt = new FakeRealtime();
    const f = fakeFetch((call) => {
      const body = call.body as Record<string, unknown>;
      if (call.method === 'POST') return json(201, row(String(body.id), 1, { title: body.title, qty: body.qty }));
      return json(200, row('n', 2, { title: 't', qty: 9 }));
    });
    const c = fakeClient(rt, f);
    const items = c.collection<{ title: string; qty: number }>('items');
    const low = items.live({ filter: 'qty=lt.5' });
    const high = items.live({ filter: 'qty=gte.5' });
    await Promise.all([low.ready(), high.ready()]);
    const created = items.create({ id: 'n', title: 't', qty: 3 });
    expect(low.rows.map((r) => r.id)).toEqual(['n']);
    expect(low.rows[0]!.version).toBe(0);
    expect(high.rows).toEqual([]);
    await created;
    await flush();
    expect(low.rows[0]).toMatchObject({ id: 'n', version: 1 });
    expect(low.getSnapshot().pendingIds.size).toBe(0);

    await items.update('n', { qty: 9 });
    await flush();
    expect(low.rows).toEqual([]);
    expect(high.rows[0]).toMatchObject({ id: 'n', version: 2, qty: 9 });
    // The insert event (older than what the write's answer showed) arrives late: ignored.
    rt.last.push(change(rt.subId('items', 'qty=lt.5'), 3, 'insert', 'add', row('n', 1, { title: 't', qty: 3 })));
    await flush();
    expect(low.rows).toEqual([]);
    // The update event brings it in line (removes from low, keeps in high).
    rt.last.push(change(rt.subId('items', 'qty=lt.5'), 4, 'update', 'remove', row('n', 2, { title: 't', qty: 9 })));
    rt.last.push(change(rt.subId('items', 'qty=gte.5'), 4, 'update', 'add', row('n', 2, { title: 't', qty: 9 })));
    await flush();
    expect(low.rows).toEqual([]);
    expect(high.rows.map((r) => r.version)).toEqual([2]);
    await c.close();
  });

  it('ask again after rate_limited; end a stale subscription named by already_subscribed', async () => {
    const rt = new FakeRealtime();
    let calls = 0;
    rt.onSubscribe = (_s, f) => {
      calls++;
      if (calls === 1) return [{ type: 'error', ref: f.ref, code: 'rate_limited', message: 'too many messages; retry in 5 ms' }];
      if (calls === 2) return [{ type: 'error', ref: f.ref, code: 'already_subscribed', message: 'already subscribed', sub_id: 4 }];
      return [
        { type: 'subscribed', ref: f.ref, sub_id: 4, seq: 0 },
        { type: 'snapshot', sub_id: 4, seq: 0, rows: [row('a', 1)], done: true },
      ];
    };
    const c = fakeClient(rt, noFetch);
    const q = c.collection('items').live();
    expect((await q.ready()).map((r) => r.id)).toEqual(['a']);
    expect(rt.last.sent.filter((f) => f.type !== 'ping').map((f) => f.type)).toEqual(['subscribe', 'subscribe', 'unsubscribe', 'subscribe']);
    expect(rt.last.sentOfType('unsubscribe')[0]).toMatchObject({ sub_id: 4 });
    await c.close();
  });

  it('report a refused query as an error status', async () => {
    const rt = new FakeRealtime();
    rt.onSubscribe = (_s, f) => [{ type: 'error', ref: f.ref, code: 'bad_filter', message: "unknown operator 'gtx'" }];
    const c = fakeClient(rt, noFetch);
    const q = c.collection('items').live({ filter: 'qty=gtx.1' });
    await expect(q.ready()).rejects.toMatchObject({ code: 'bad_filter' });
    expect(q.getSnapshot().status).toBe('error');
    await c.close();
  });

  it('keep rows sorted through random changes (moving single rows equals sorting from scratch)', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    const q = c.collection('items').live({ order: 'qty.desc,title' });
    await q.ready();
    const sub = rt.subId('items', undefined);
    const model = new Map<string, Record<string, unknown> & { id: string; version: number }>();
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const expected = () =>
      [...model.values()]
        .sort((a, b) => {
          const qa = a.qty as number | null;
          const qb = b.qty as number | null;
          if (qa === null && qb !== null) return -1; // desc: nulls first
          if (qb === null && qa !== null) return 1;
          if (qa !== qb) return (qb as number) - (qa as number);
          if (a.title !== b.title) return (a.title as string) < (b.title as string) ? -1 : 1;
          return a.id < b.id ? -1 : 1;
        })
        .map((r) => r.id);
    let seq = 0;
    for (let step = 0; step < 600; step++) {
      const id = `r${Math.floor(rand() * 40)}`;
      const cur = model.get(id);
      if (cur && rand() < 0.25) {
        model.delete(id);
        rt.last.push(change(sub, ++seq, 'delete', 'remove', cur));
      } else {
        const next = row(id, (cur?.version ?? 0) + 1, { qty: rand() < 0.15 ? null : Math.floor(rand() * 6), title: ['a', 'b', 'c'][Math.floor(rand() * 3)] });
        model.set(id, next);
        rt.last.push(change(sub, ++seq, cur ? 'update' : 'insert', cur ? 'update' : 'add', next));
      }
      if (step % 7 === 0) {
        await flush(1);
        expect(q.rows.map((r) => r.id)).toEqual(expected());
      }
    }
    await flush(1);
    expect(q.rows.map((r) => r.id)).toEqual(expected());
    await c.close();
  });
});
