/**
 * The write queue against a fake server: persistence (fake IndexedDB), replay order,
 * idempotency keys, base versions, conflict strategies, rollback.
 */
import { IDBFactory } from 'fake-indexeddb';
import { describe, expect, it } from 'vitest';
import { indexedDBStorage, type AnyRow, type LivebaseError, type QueueStatus } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, json, row, until, type FetchCall } from './fakes.js';

/** A tiny REST server in memory: enough of the records API for the queue. */
function memoryServer() {
  const records = new Map<string, AnyRow>();
  let n = 0;
  const applied: string[] = [];
  const seenKeys = new Map<string, Response>();
  const handler = (c: FetchCall): Response => {
    const key = c.headers['idempotency-key'];
    if (key && seenKeys.has(key)) return seenKeys.get(key)!.clone();
    const m = /^\/api\/collections\/items\/records(?:\/(.+))?$/.exec(c.path);
    let res: Response;
    if (!m) res = json(404, { error: { code: 'not_found', message: 'no route' } });
    else if (c.method === 'POST') {
      const body = c.body as Record<string, unknown>;
      const id = (body.id as string) ?? `s${++n}`;
      const r = { ...row(id, 1), ...body, id } as AnyRow;
      records.set(id, r);
      applied.push(`create ${id}`);
      res = json(201, r);
    } else {
      const id = decodeURIComponent(m[1]!);
      const cur = records.get(id);
      const ifMatch = c.headers['if-match'];
      if (!cur) res = json(404, { error: { code: 'not_found', message: 'gone' } });
      else if (ifMatch && Number(ifMatch) !== cur.version) {
        res = json(409, { error: { code: 'version_conflict', message: 'stale', details: { current: cur, fields: [] } } });
      } else if (c.method === 'PATCH') {
        const next = { ...cur, ...(c.body as object), version: cur.version + 1 } as AnyRow;
        records.set(id, next);
        applied.push(`update ${id} ${JSON.stringify(c.body)}`);
        res = json(200, next);
      } else {
        records.delete(id);
        applied.push(`delete ${id}`);
        res = json(200, cur);
      }
    }
    if (key && res.status < 500) seenKeys.set(key, res.clone());
    return res;
  };
  return { records, applied, handler };
}

describe('the write queue', () => {
  it('stores writes before sending them and replays them in order after a reload, with chained base versions', async () => {
    const idb = new IDBFactory();
    const rt = new FakeRealtime();
    const server = memoryServer();
    const f = fakeFetch(server.handler);
    const a = fakeClient(rt, f, { storage: indexedDBStorage('q', idb), autoConnect: false });
    const items = a.collection('items');
    void items.create({ id: 'x', title: 'one' });
    void items.update('x', { title: 'two' });
    void items.create({ id: 'y', title: 'other' });
    void items.update('x', { qty: 3 });
    void items.delete('y');
    await a.close();
    expect(f.calls).toEqual([]);

    // What is stored, in order, each with its own idempotency key.
    const stored = (await indexedDBStorage('q', idb).load()).sort((p, q) => p.order - q.order);
    expect(stored.map((m) => `${m.ops[0]!.op} ${m.ops[0]!.id}`)).toEqual(['create x', 'update x', 'create y', 'update x', 'delete y']);
    expect(new Set(stored.map((m) => m.key)).size).toBe(5);
    expect(stored[1]!.ops[0]!.chained).toBe(true);

    const b = fakeClient(rt, f, { storage: indexedDBStorage('q', idb) });
    await b.drained(2000);
    expect(server.applied).toEqual(['create x', 'update x {"title":"two"}', 'create y', 'update x {"qty":3}', 'delete y']);
    expect(f.calls.map((c) => c.headers['idempotency-key'])).toEqual(stored.map((m) => m.key));
    // Updates behind a create of the same record are based on its answer.
    expect(f.calls.map((c) => c.headers['if-match'] ?? '-')).toEqual(['-', '1', '-', '2', '1']);
    expect(await indexedDBStorage('q', idb).load()).toEqual([]);
    await b.close();
  });

  it('retries a lost answer with the same idempotency key, so nothing applies twice', async () => {
    const rt = new FakeRealtime();
    const server = memoryServer();
    let failures = 0;
    const f = fakeFetch((c) => {
      const res = server.handler(c);
      if (failures < 2) {
        failures++;
        throw new TypeError('network down (answer lost)');
      }
      return res;
    });
    const a = fakeClient(rt, f);
    const created = await a.collection('items').create({ title: 'once' });
    expect(created.title).toBe('once');
    expect(f.calls.length).toBe(3);
    expect(new Set(f.calls.map((c) => c.headers['idempotency-key'])).size).toBe(1);
    expect(server.applied.length).toBe(1);
    await a.close();
  });

  it('keeps 5xx answers at the head and retries; the order of later writes is kept', async () => {
    const rt = new FakeRealtime();
    const server = memoryServer();
    let n = 0;
    const f = fakeFetch((c) => (++n <= 2 ? json(503, { error: { code: 'unavailable', message: 'busy' } }) : server.handler(c)));
    const a = fakeClient(rt, f);
    const items = a.collection('items');
    const p1 = items.create({ id: 'p', title: '1' });
    const p2 = items.create({ id: 'q', title: '2' });
    await Promise.all([p1, p2]);
    expect(server.applied).toEqual(['create p', 'create q']);
    await a.close();
  });

  it('shows writes at once and rolls them back (with an error event) when the server refuses', async () => {
    const rt = new FakeRealtime();
    rt.rows.set('items', [row('k', 1, { title: 'kept' })]);
    const f = fakeFetch((c) =>
      c.method === 'PATCH'
        ? json(422, { error: { code: 'validation_failed', message: 'invalid fields: qty', details: { fields: [{ field: 'qty' }] } } })
        : json(404, {}),
    );
    const a = fakeClient(rt, f);
    const errors: LivebaseError[] = [];
    a.on('error', (e) => errors.push(e));
    const live = a.collection('items').live();
    await live.ready();
    const p = a.collection('items').update('k', { qty: -1 });
    // Optimistic: visible synchronously, marked pending.
    expect(live.rows[0]).toMatchObject({ id: 'k', qty: -1 });
    expect(live.getSnapshot().pendingIds.has('k')).toBe(true);
    await expect(p).rejects.toMatchObject({ code: 'validation_failed', status: 422 });
    expect(live.rows[0]).toEqual(row('k', 1, { title: 'kept' }));
    expect(live.getSnapshot().pendingIds.size).toBe(0);
    expect(errors.map((e) => e.code)).toEqual(['validation_failed']);
    expect(f.calls[0]!.headers['if-match']).toBe('1');
    await a.close();
  });

  it('runs onConflict with base, local and server; waits for its async answer, holding later writes back', async () => {
    const rt = new FakeRealtime();
    const base = row('r', 1, { title: 'crate', qty: 1 });
    const current = row('r', 2, { title: 'crate', qty: 2 });
    rt.rows.set('items', [base]);
    const server = memoryServer();
    server.records.set('r', current as AnyRow);
    const f = fakeFetch(server.handler);
    let answer!: (v: 'client-wins') => void;
    const seen: unknown[] = [];
    const a = fakeClient(rt, f, {
      onConflict: (b, l, s, info) => {
        seen.push({ b, l, s, info });
        return new Promise((res) => (answer = res));
      },
    });
    const live = a.collection('items').live();
    await live.ready();
    const first = a.collection('items').update('r', { title: 'crate (A)' });
    const second = a.collection('items').create({ id: 'later', title: 'after the conflict' });
    await until('onConflict called', () => seen.length === 1);
    expect(seen[0]).toEqual({
      b: base,
      l: { ...base, title: 'crate (A)' },
      s: current,
      info: { collection: 'items', id: 'r', op: 'update', fields: [], attempt: 0 },
    });
    expect(f.calls.length).toBe(1); // the create waits behind the conflict
    answer('client-wins');
    expect(await first).toMatchObject({ version: 3, title: 'crate (A)', qty: 2 });
    await second;
    expect(f.calls.map((c) => `${c.method} ${c.headers['if-match'] ?? '-'}`)).toEqual(['PATCH 1', 'PATCH 2', 'POST -']);
    // The resolution went out under a new idempotency key (the old one holds the 409).
    expect(f.calls[1]!.headers['idempotency-key']).not.toBe(f.calls[0]!.headers['idempotency-key']);
    await a.close();
  });

  it.each([
    ['server-wins', { title: 'crate', qty: 2 }, 2],
    ['client-wins', { title: 'crate (A)', qty: 9 }, 3],
    ['merge', { title: 'crate (A)', qty: 2 }, 3],
  ] as const)('strategy %s', async (strategy, expected, version) => {
    const rt = new FakeRealtime();
    rt.rows.set('items', [row('r', 1, { title: 'crate', qty: 1 })]);
    const server = memoryServer();
    server.records.set('r', row('r', 2, { title: 'crate', qty: 2 }) as AnyRow);
    const f = fakeFetch(server.handler);
    const a = fakeClient(rt, f, { conflictStrategy: strategy });
    const conflicts: string[] = [];
    a.on('conflict', (c) => conflicts.push(c.outcome.kind));
    const live = a.collection('items').live();
    await live.ready();
    const result = await a.collection('items').update('r', { title: 'crate (A)', qty: 9 });
    expect(result).toMatchObject({ ...expected, version });
    expect(conflicts).toEqual([strategy === 'server-wins' ? 'drop' : 'update']);
    await until('live row settled', () => live.getSnapshot().pendingIds.size === 0 && live.rows[0]?.version === version);
    expect(live.rows[0]).toMatchObject(expected);
    await a.close();
  });

  it('pauses on 401 until new credentials, then goes on', async () => {
    const rt = new FakeRealtime();
    const server = memoryServer();
    const f = fakeFetch((c) => (c.headers.authorization === 'Bearer good' ? server.handler(c) : json(401, { error: { code: 'unauthorized', message: 'expired' } })));
    const a = fakeClient(rt, f, { token: 'expired' });
    const statuses: QueueStatus[] = [];
    a.on('queue', (s) => statuses.push(s));
    const p = a.collection('items').create({ title: 'x' });
    await until('paused', () => a.getQueueStatus().paused === 'auth');
    await a.setToken('good');
    expect((await p).title).toBe('x');
    expect(a.getQueueStatus()).toMatchObject({ size: 0, completed: 1, total: 1, paused: null });
    expect(statuses.some((s) => s.paused === 'auth')).toBe(true);
    await a.close();
  });

  it('a batch is one request, all or nothing, with per-op base versions', async () => {
    const rt = new FakeRealtime();
    rt.rows.set('items', [row('a', 4, { title: 'A' }), row('b', 2, { title: 'B' })]);
    const f = fakeFetch((c) => {
      const ops = (c.body as { ops: Record<string, unknown>[] }).ops;
      return json(200, {
        results: ops.map((o) => ({ op: o.op, record: row(String(o.id), o.op === 'create' ? 1 : 5, (o.data ?? {}) as object) })),
      });
    });
    const a = fakeClient(rt, f);
    const live = a.collection('items').live();
    await live.ready();
    const res = await a.collection('items').batch([
      { op: 'create', id: 'c', data: { title: 'C' } },
      { op: 'update', id: 'a', data: { title: 'A2' } },
      { op: 'delete', id: 'b' },
    ]);
    expect(res.map((r) => r.op)).toEqual(['create', 'update', 'delete']);
    expect(f.calls[0]!.path).toBe('/api/collections/items/batch');
    expect(f.calls[0]!.body).toEqual({
      ops: [
        { op: 'create', id: 'c', data: { title: 'C' } },
        { op: 'update', id: 'a', data: { title: 'A2' }, if_version: 4 },
        { op: 'delete', id: 'b', if_version: 2 },
      ],
    });
    expect(live.rows.map((r) => r.id)).toEqual(['a', 'c']);
    await a.close();
  });
});
