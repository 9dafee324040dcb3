/**
 * The offline queue survives a reload (a new client on the same storage) and replays
 * exactly once: in order, nothing lost, nothing applied twice, even when the earlier
 * session had already sent some writes before it died.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IDBFactory } from 'fake-indexeddb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { indexedDBStorage, type QueueStorage } from '@livebase/client';
import { fileStorage } from '@livebase/client/node';
import { TestServer, itemsCollection } from './server.js';
import { client, waitFor } from './helpers.js';

let t: TestServer;
const dir = mkdtempSync(join(tmpdir(), 'livebase-queue-'));
beforeAll(async () => {
  t = await TestServer.start();
  await t.createCollection(itemsCollection);
});
afterAll(async () => {
  await t?.stop();
  rmSync(dir, { recursive: true, force: true });
});

type Item = { title: string; qty?: number | null; note?: string | null };

const kinds: [string, () => () => QueueStorage][] = [
  [
    'a file (Node)',
    () => {
      const path = join(dir, `queue-${Math.random().toString(36).slice(2)}.json`);
      return () => fileStorage(path);
    },
  ],
  [
    'IndexedDB',
    () => {
      const factory = new IDBFactory();
      const name = `q-${Math.random().toString(36).slice(2)}`;
      return () => indexedDBStorage(name, factory);
    },
  ],
];

describe.each(kinds)('queue persisted in %s', (_name, makeStorage) => {
  it('is replayed once, in order, by a new client on the same storage ("reload")', async () => {
    const storage = makeStorage();
    const first = client(t, { storage: storage() });
    await first.whenConnected();
    first.goOffline();
    const col = first.collection<Item>('items');
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(`r${i}-${Math.random().toString(36).slice(2, 8)}`);
    for (let i = 0; i < 10; i++) void col.create({ id: ids[i]!, title: `t${i}`, qty: i });
    // Updates queued behind the creates of the same records: chained, applied after them.
    for (let i = 0; i < 10; i++) void col.update(ids[i]!, { note: `v${i}` });
    void col.update(ids[0]!, { qty: 100 });
    void col.delete(ids[9]!);
    expect(first.getQueueStatus().size).toBe(22);
    await first.close(); // the "page" goes away with its queue still stored

    const second = client(t, { storage: storage(), autoConnect: false });
    await second.ready;
    expect(second.getQueueStatus().size).toBe(22);
    // Shown optimistically straight from storage, before any network.
    const live = second.collection<Item>('items').live({ filter: `id=in.(${ids.join(',')})` });
    expect(live.getSnapshot().rows.map((r) => r.id)).toEqual(ids.slice(0, 9));
    expect(live.getSnapshot().rows[0]!.qty).toBe(100);
    second.connect();
    await second.drained(20_000);
    await waitFor('live query equals server', async () => {
      const rows = live.getSnapshot().rows;
      return rows.length === 9 && live.getSnapshot().pendingIds.size === 0 && rows.every((r) => r.version >= 2);
    }, { subscribe: [live.subscribe] });

    const server = await t.list<Item & { id: string }>('items', `id=in.(${ids.join(',')})`);
    expect(server.map((r) => r.id)).toEqual(ids.slice(0, 9));
    for (const r of server) {
      const i = ids.indexOf(r.id);
      expect(r.title).toBe(`t${i}`);
      expect(r.note).toBe(`v${i}`);
      expect(r.qty).toBe(i === 0 ? 100 : i);
    }
    // Once: one event per write, in the order they were made.
    const events = (await t.changes()).filter((e) => ids.includes(e.id));
    expect(events.length).toBe(22);
    const firstUpdate = events.findIndex((e) => e.op === 'update');
    expect(events.slice(0, firstUpdate).every((e) => e.op === 'insert')).toBe(true);
    expect(events[events.length - 1]!.op).toBe('delete');
    await live.close();
    await second.close();
  });

  it('a write sent before the page died (but still stored) is not applied twice', async () => {
    const storage = makeStorage();
    // The first session sends its writes, but "dies" before removing them from storage.
    const inner = storage();
    const forgetful: QueueStorage = { load: () => inner.load(), put: (m) => inner.put(m), remove: async () => {} };
    const first = client(t, { storage: forgetful });
    await first.whenConnected();
    const col = first.collection<Item>('items');
    const made = await Promise.all([0, 1, 2, 3, 4].map((i) => col.create({ title: `sent-${i}`, qty: i })));
    await col.update(made[0]!.id, { qty: 50 });
    await first.close();
    const before = (await t.changes()).length;

    const second = client(t, { storage: storage() });
    await second.ready;
    expect(second.getQueueStatus().size).toBe(6);
    const confirmed: string[] = [];
    second.on('confirmed', (c) => confirmed.push(c.mutation.qid));
    await second.drained(20_000);
    expect(confirmed.length).toBe(6);
    expect((await t.changes()).length).toBe(before); // the server answered from its idempotency store
    expect(second.getQueueStatus().failed).toBe(0);
    await second.close();
  });
});
