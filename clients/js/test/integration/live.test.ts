import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestServer, itemsCollection } from './server.js';
import { byId, client, waitFor } from './helpers.js';

let t: TestServer;
beforeAll(async () => {
  t = await TestServer.start();
  await t.createCollection(itemsCollection);
});
afterAll(async () => {
  await t?.stop();
});

describe('smoke', () => {
  it('connects, live query follows writes from REST and the SDK', async () => {
    const c = client(t);
    await c.whenConnected(10_000);
    const items = c.collection<{ title: string; qty?: number; status?: string }>('items');
    const q = items.live({ filter: 'qty=gte.5' });
    await q.ready();
    expect(q.rows).toEqual([]);
    const a = await items.create({ title: 'a', qty: 7 });
    expect(a.version).toBe(1);
    await waitFor('row a', () => q.rows.length === 1, { subscribe: [q.subscribe] });
    await t.http('POST', '/api/collections/items/records', { title: 'b', qty: 9 });
    await waitFor('row b', () => q.rows.length === 2, { subscribe: [q.subscribe] });
    await items.update(a.id, { qty: 1 });
    await waitFor('a moved out', () => q.rows.length === 1, { subscribe: [q.subscribe] });
    const rest = await t.list('items', 'qty=gte.5');
    expect(byId(q.rows)).toEqual(byId(rest as never));
    const st = c.getStatus();
    expect(st.state).toBe('connected');
    await c.close();
  });
});
