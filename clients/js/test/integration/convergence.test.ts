/**
 * Clients converge on the server's state: concurrent random writes from two clients, and a
 * client that worked offline while others kept writing.
 */
import { describe, expect, it } from 'vitest';
import type { AnyRow, LiveQuery, LivebaseClient, QueueStatus } from '@livebase/client';
import { type TestServer, itemsCollection } from './server.js';
import { byId, client, rng, serverPerTest, waitFor } from './helpers.js';

type Item = { title: string; qty?: number | null; status?: string | null; done?: boolean | null; note?: string | null };

let t: TestServer;
const clients = serverPerTest((s) => (t = s), { collection: itemsCollection });

function track(c: LivebaseClient): LivebaseClient {
  clients.push(c);
  return c;
}

const STATUSES = ['open', 'late', 'done'];
/** Random writes replay from this seed (set LIVEBASE_TEST_SEED to explore others). */
const SEED = Number(process.env.LIVEBASE_TEST_SEED ?? 1);

function randomFields(r: () => number): Partial<Item> {
  const out: Partial<Item> = {};
  if (r() < 0.6) out.qty = r() < 0.15 ? null : Math.floor(r() * 10);
  if (r() < 0.5) out.status = STATUSES[Math.floor(r() * 3)]!;
  if (r() < 0.4) out.done = r() < 0.5;
  if (r() < 0.3) out.note = `n${Math.floor(r() * 1000)}`;
  if (Object.keys(out).length === 0) out.qty = Math.floor(r() * 10);
  return out;
}

/** What differs between live queries and the server (for failure messages). */
async function diff(views: [LiveQuery<Item>, LiveQuery<Item>][]): Promise<string> {
  const all = byId((await t.list('items')) as AnyRow[]);
  const low = byId((await t.list('items', 'qty=lt.5')) as AnyRow[]);
  const out: string[] = [];
  views.forEach(([a, f], i) => {
    for (const [name, q, want] of [['all', a, all], ['low', f, low]] as const) {
      const s = q.getSnapshot();
      const got = byId(s.rows);
      for (const id of new Set([...Object.keys(got), ...Object.keys(want)])) {
        if (JSON.stringify(got[id]) !== JSON.stringify(want[id])) {
          out.push(`client ${i} ${name} ${id}: got ${JSON.stringify(got[id])} want ${JSON.stringify(want[id])}`);
        }
      }
      out.push(`client ${i} ${name}: status ${s.status} stale ${s.stale} pending ${[...s.pendingIds].join(',')}`);
    }
  });
  return out.slice(0, 40).join('\n');
}

/** Live queries of a client equal the server's lists (all rows, and the qty < 5 filter). */
async function converged(views: [LiveQuery<Item>, LiveQuery<Item>][]): Promise<boolean> {
  const all = byId((await t.list('items')) as AnyRow[]);
  const low = byId((await t.list('items', 'qty=lt.5')) as AnyRow[]);
  return views.every(([a, f]) => {
    const sa = a.getSnapshot();
    const sf = f.getSnapshot();
    return (
      sa.pendingIds.size === 0 &&
      JSON.stringify(byId(sa.rows)) === JSON.stringify(all) &&
      JSON.stringify(byId(sf.rows)) === JSON.stringify(low)
    );
  });
}

describe('convergence', () => {
  it('two clients converge after random concurrent writes', async () => {
    const A = track(client(t));
    const B = track(client(t));
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const views = [A, B].map((c) => {
      const col = c.collection<Item>('items');
      return [col.live(), col.live({ filter: 'qty=lt.5', order: 'qty.desc' })] as [LiveQuery<Item>, LiveQuery<Item>];
    });
    await Promise.all(views.flat().map((v) => v.ready()));
    const failures: string[] = [];
    for (const c of [A, B]) c.on('failed', (f) => failures.push(f.error.code));
    let conflicts = 0;
    for (const c of [A, B]) c.on('conflict', () => conflicts++);

    const writer = async (c: LivebaseClient, view: LiveQuery<Item>, seed: number, n: number) => {
      const r = rng(seed);
      const col = c.collection<Item>('items');
      const settled: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) {
        const rows = view.rows;
        const x = r();
        if (rows.length < 5 || x < 0.3) {
          settled.push(col.create({ title: `t${seed}-${i}`, ...randomFields(r) }));
        } else if (x < 0.88) {
          const row = rows[Math.floor(r() * rows.length)]!;
          settled.push(col.update(row.id, randomFields(r)));
        } else {
          const row = rows[Math.floor(r() * rows.length)]!;
          settled.push(col.delete(row.id));
        }
        // Let the other client's writes and events interleave with ours.
        if (i % 8 === 7) await new Promise((res) => setTimeout(res, Math.floor(r() * 15)));
      }
      await Promise.allSettled(settled);
    };
    await Promise.all([writer(A, views[0]![0], SEED, 150), writer(B, views[1]![0], SEED + 1000, 150)]);
    await Promise.all([A.drained(30_000), B.drained(30_000)]);

    await waitFor('both clients equal the server', () => converged(views), {
      subscribe: views.flat().map((v) => v.subscribe),
      everyMs: 250,
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${await diff(views)}`);
    });
    // The only acceptable failures: writing to a record the other client deleted meanwhile.
    expect(failures.filter((code) => code !== 'not_found')).toEqual([]);
    expect((await t.list('items')).length).toBeGreaterThan(0);
    expect(conflicts).toBeGreaterThanOrEqual(0);
  });

  it('a client offline for 100 writes of its own and 100 of others reconnects and converges, nothing lost or doubled', async () => {
    // A's network drops some answers after the server applied the write: the retry must
    // be answered from the idempotency store, not applied again.
    let writesSent = 0;
    let answersLost = 0;
    let lossy = false;
    const flakyFetch = async (input: string, init?: RequestInit): Promise<Response> => {
      const res = await fetch(input, init);
      if (lossy && init?.method && init.method !== 'GET') {
        writesSent++;
        if (writesSent % 7 === 3) {
          answersLost++;
          await res.arrayBuffer();
          throw new TypeError('fetch failed (answer lost)');
        }
      }
      return res;
    };
    const A = track(client(t, { fetch: flakyFetch }));
    const B = track(client(t));
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const qa = A.collection<Item>('items').live();
    const fa = A.collection<Item>('items').live({ filter: 'qty=lt.5' });
    const qb = B.collection<Item>('items').live();
    const fb = B.collection<Item>('items').live({ filter: 'qty=lt.5' });
    await Promise.all([qa.ready(), fa.ready(), qb.ready(), fb.ready()]);

    // Some records of B's that already exist (and A has seen).
    const bIds: string[] = [];
    for (let i = 0; i < 10; i++) bIds.push((await B.collection<Item>('items').create({ title: `b-seed-${i}`, qty: i })).id);
    await waitFor('A sees the seed', () => qa.rows.length === 10, { subscribe: [qa.subscribe] });

    A.goOffline();
    expect(A.getStatus().state).toBe('offline');

    // 100 writes on A while offline: creates, updates and deletes of its own records.
    const r = rng(SEED + 7);
    const colA = A.collection<Item>('items');
    const model = new Map<string, Item>();
    const aIds: string[] = [];
    const aDeleted = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const live = aIds.filter((id) => !aDeleted.has(id));
      const x = r();
      if (live.length < 3 || x < 0.45) {
        const data: Item = { title: `a-${i}`, ...randomFields(r) };
        const id = `a${String(i).padStart(3, '0')}-${Math.floor(r() * 1e9)}`;
        void colA.create({ ...data, id });
        aIds.push(id);
        model.set(id, data);
      } else if (x < 0.9) {
        const id = live[Math.floor(r() * live.length)]!;
        const patch = randomFields(r);
        void colA.update(id, patch);
        model.set(id, { ...model.get(id)!, ...patch });
      } else {
        const id = live[Math.floor(r() * live.length)]!;
        void colA.delete(id);
        aDeleted.add(id);
        model.delete(id);
      }
    }
    expect(A.getQueueStatus().size).toBe(100);
    expect(A.getQueueStatus().paused).toBe('offline');
    // Shown optimistically while offline.
    const shown = new Set(qa.rows.map((row) => row.id));
    for (const id of model.keys()) expect(shown.has(id)).toBe(true);
    for (const id of aDeleted) expect(shown.has(id)).toBe(false);

    // Meanwhile 100 writes by others (B), on B's records.
    const colB = B.collection<Item>('items');
    const rb = rng(SEED + 8);
    for (let i = 0; i < 100; i++) {
      if (rb() < 0.5) bIds.push((await colB.create({ title: `b-${i}`, ...randomFields(rb) })).id);
      else await colB.update(bIds[Math.floor(rb() * bIds.length)]!, randomFields(rb));
    }

    const progress: QueueStatus[] = [];
    A.on('queue', (s) => progress.push(s));
    lossy = true;
    A.goOnline();
    await A.drained(30_000);
    lossy = false;

    await waitFor('A and B equal the server', () => converged([[qa, fa], [qb, fb]]), {
      subscribe: [qa.subscribe, fa.subscribe, qb.subscribe, fb.subscribe],
      everyMs: 250,
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${await diff([[qa, fa], [qb, fb]])}`);
    });

    // Nothing lost: every record A created and kept has A's last values.
    const server = byId((await t.list('items')) as AnyRow[]);
    for (const [id, want] of model) {
      const got = server[id];
      expect(got, `record ${id}`).toBeDefined();
      for (const [k, v] of Object.entries(want)) expect(got![k] ?? null, `${id}.${k}`).toEqual(v ?? null);
    }
    for (const id of aDeleted) expect(server[id]).toBeUndefined();
    // Nothing doubled: exactly one change event per write of A's.
    const events = (await t.changes()).filter((e) => aIds.includes(e.id));
    expect(events.length).toBe(100);
    expect(events.filter((e) => e.op === 'insert').length).toBe(aIds.length);
    expect(answersLost).toBeGreaterThan(5);
    // Sync progress was observable, ending at 100 of 100.
    const last = progress[progress.length - 1]!;
    expect(last.size).toBe(0);
    expect(last.completed).toBe(100);
    expect(last.total).toBe(100);
    expect(progress.some((s) => s.completed > 0 && s.completed < 100)).toBe(true);
  });
});
