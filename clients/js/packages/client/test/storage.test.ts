/** Queue storages keep what they are given, across instances (a reload). */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IDBFactory } from 'fake-indexeddb';
import { afterAll, describe, expect, it } from 'vitest';
import { indexedDBStorage, memoryStorage, type QueuedMutation, type QueueStorage } from '@livebase/client';
import { fileStorage } from '@livebase/client/node';

const dir = mkdtempSync(join(tmpdir(), 'livebase-storage-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function m(i: number): QueuedMutation {
  return {
    qid: `q${i}`,
    key: `q${i}`,
    order: 1000 + i,
    collection: 'items',
    batch: false,
    ops: [{ op: 'update', id: `r${i}`, data: { n: i, nested: { a: [i] } }, ifVersion: i, base: null }],
    createdAt: 1,
    attempts: 0,
  };
}

const factories: [string, () => () => QueueStorage][] = [
  ['memory', () => {
    const s = memoryStorage();
    return () => s;
  }],
  ['IndexedDB', () => {
    const idb = new IDBFactory();
    return () => indexedDBStorage('t', idb);
  }],
  ['file', () => {
    const path = join(dir, `${Math.random().toString(36).slice(2)}`, 'queue.json');
    return () => fileStorage(path);
  }],
];

describe.each(factories)('%s storage', (_name, make) => {
  it('puts, replaces, removes, and reads back in a new instance', async () => {
    const open = make();
    const s = open();
    await Promise.all([1, 2, 3, 4].map((i) => s.put(m(i))));
    await s.put({ ...m(2), key: 'q2~1', attempts: 1 });
    await s.remove('q3');
    await s.close?.();
    const again = open();
    const got = (await again.load()).sort((a, b) => a.order - b.order);
    expect(got.map((x) => x.qid)).toEqual(['q1', 'q2', 'q4']);
    expect(got[1]).toEqual({ ...m(2), key: 'q2~1', attempts: 1 });
    // What was stored is a copy: later changes to the object do not leak in.
    const obj = m(9);
    await again.put(obj);
    obj.key = 'changed';
    expect((await again.load()).find((x) => x.qid === 'q9')?.key).toBe('q9');
    await again.close?.();
  });
});

describe('file storage', () => {
  it('writes atomically (no temporary files left behind, valid JSON every time)', async () => {
    const sub = join(dir, 'atomic');
    const path = join(sub, 'q.json');
    const s = fileStorage(path);
    await Promise.all(Array.from({ length: 50 }, (_, i) => s.put(m(i))));
    expect(readdirSync(sub)).toEqual(['q.json']);
    expect((JSON.parse(readFileSync(path, 'utf8')) as { mutations: unknown[] }).mutations.length).toBe(50);
  });
});
