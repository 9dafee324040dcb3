/**
 * Conflicts: a write based on a version someone else has since changed comes back 409 and
 * is resolved on the client, by `onConflict` (possibly after asking the user) or a strategy.
 */
import { describe, expect, it } from 'vitest';
import type { AnyRow, ConflictInfo, LivebaseClient } from '@livebase/client';
import { type TestServer, itemsCollection } from './server.js';
import { client, serverPerTest, waitFor } from './helpers.js';

type Item = { title: string; qty?: number | null; status?: string | null; note?: string | null };

let t: TestServer;
const clients = serverPerTest((s) => (t = s), { collection: itemsCollection });

function keep(c: LivebaseClient): LivebaseClient {
  clients.push(c);
  return c;
}

describe('conflicts', () => {
  it('a 409 reaches onConflict with the right base, local and server, and an async answer is applied', async () => {
    const calls: { base: AnyRow | null; local: AnyRow | null; server: AnyRow; info: ConflictInfo }[] = [];
    let answer!: (r: { data: Partial<Item> }) => void;
    const dialog = new Promise<{ data: Partial<Item> }>((res) => (answer = res));
    const A = keep(
      client(t, {
        onConflict: (base, local, server, info) => {
          calls.push({ base, local, server, info });
          return dialog; // like a dialog: answered later
        },
      }),
    );
    const B = keep(client(t));
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const items = A.collection<Item>('items');
    const original = await items.create({ title: 'crate', qty: 1, status: 'open' });
    const live = items.live();
    await live.ready();

    A.goOffline();
    // Someone else changes qty and status meanwhile (v2).
    const theirs = await B.collection<Item>('items').update(original.id, { qty: 2, status: 'late' });
    expect(theirs.version).toBe(2);
    // Our offline edit, based on v1.
    const mine = items.update(original.id, { title: 'crate (fragile)', status: 'done' });
    A.goOnline();

    await waitFor('onConflict was called', () => calls.length === 1);
    const { base, local, server, info } = calls[0]!;
    expect(base).toEqual(original);
    expect(local).toEqual({ ...original, title: 'crate (fragile)', status: 'done' });
    expect(server).toEqual(theirs);
    expect(info).toMatchObject({ collection: 'items', id: original.id, op: 'update', attempt: 0 });
    // While the dialog is open, the local edit is still shown (pending).
    const shown = live.getSnapshot();
    expect(shown.pendingIds.has(original.id)).toBe(true);
    expect(shown.rows.find((r) => r.id === original.id)?.title).toBe('crate (fragile)');

    answer({ data: { title: 'crate (fragile)', note: 'merged by hand' } });
    const final = await mine;
    expect(final).toMatchObject({ version: 3, title: 'crate (fragile)', qty: 2, status: 'late', note: 'merged by hand' });
    expect((await t.http('GET', `/api/collections/items/records/${original.id}`)).data).toEqual(final);
    await waitFor('live row confirmed', () => {
      const s = live.getSnapshot();
      return !s.pendingIds.has(original.id) && s.rows.find((r) => r.id === original.id)?.version === 3;
    }, { subscribe: [live.subscribe] });
    live.close();
  });

  it('merge keeps both sides when they touched different fields; server-wins and client-wins do what they say', async () => {
    const A = keep(client(t)); // default strategy: merge
    const B = keep(client(t));
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const a = A.collection<Item>('items');
    const b = B.collection<Item>('items');
    const r1 = await a.create({ title: 'one', qty: 1, status: 'open' });
    const r2 = await a.create({ title: 'two', qty: 1, status: 'open' });
    const r3 = await a.create({ title: 'three', qty: 1, status: 'open' });
    const conflicts: string[] = [];
    A.on('conflict', (c) => conflicts.push(`${c.id}:${typeof c.resolution === 'string' ? c.resolution : 'data'}:${c.outcome.kind}`));

    A.goOffline();
    await b.update(r1.id, { qty: 5 });
    await b.update(r2.id, { title: 'TWO', qty: 7 });
    await b.update(r3.id, { title: 'THREE' });
    const m1 = a.update(r1.id, { title: 'one (A)', qty: 1 }); // qty unchanged locally → no conflict on qty
    const m2 = a.update(r2.id, { title: 'two (A)' }, { conflict: 'server-wins' });
    const m3 = a.update(r3.id, { title: 'three (A)' }, { conflict: 'client-wins' });
    A.goOnline();

    expect(await m1).toMatchObject({ title: 'one (A)', qty: 5, version: 3 });
    expect(await m2).toMatchObject({ title: 'TWO', qty: 7, version: 2 });
    expect(await m3).toMatchObject({ title: 'three (A)', version: 3 });
    expect(conflicts).toEqual([`${r1.id}:merge:update`, `${r2.id}:server-wins:drop`, `${r3.id}:client-wins:update`]);
  });

  it('a delete that conflicts with a newer edit keeps the record under merge, deletes it under client-wins', async () => {
    const A = keep(client(t));
    const B = keep(client(t));
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const a = A.collection<Item>('items');
    const keepMe = await a.create({ title: 'keep' });
    const dropMe = await a.create({ title: 'drop' });
    A.goOffline();
    await B.collection<Item>('items').update(keepMe.id, { qty: 3 });
    await B.collection<Item>('items').update(dropMe.id, { qty: 3 });
    const d1 = a.delete(keepMe.id);
    const d2 = a.delete(dropMe.id, { conflict: 'client-wins' });
    A.goOnline();
    expect(await d1).toBeNull();
    expect((await d2)?.id).toBe(dropMe.id);
    expect((await t.http('GET', `/api/collections/items/records/${keepMe.id}`)).status).toBe(200);
    expect((await t.http('GET', `/api/collections/items/records/${dropMe.id}`)).status).toBe(404);
  });
});
