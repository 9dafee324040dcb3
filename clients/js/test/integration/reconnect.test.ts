/** Connection life: server restarts, resume by sequence, resync, credentials. */
import { afterEach, describe, expect, it } from 'vitest';
import type { AnyRow, ConnectionState, LivebaseClient, SubscriptionEvent } from '@livebase/client';
import { TestServer, itemsCollection } from './server.js';
import { byId, client, waitFor } from './helpers.js';

let t: TestServer | undefined;
const clients: LivebaseClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await t?.stop();
  t = undefined;
});

async function equalsServer(rows: readonly AnyRow[], query = ''): Promise<boolean> {
  return JSON.stringify(byId(rows)) === JSON.stringify(byId((await t!.list('items', query)) as AnyRow[]));
}

describe('reconnects', () => {
  it('resumes every subscription from its last seq after a server restart, missing nothing', async () => {
    t = await TestServer.start();
    await t.createCollection(itemsCollection);
    const A = client(t);
    clients.push(A);
    const states: ConnectionState[] = [];
    A.on('status', (s) => states.push(s.state));
    await A.whenConnected();
    const live = A.collection('items').live({ filter: 'qty=gte.3' });
    await live.ready();
    const raw: SubscriptionEvent[] = [];
    const off = A.collection('items').subscribe((e) => raw.push(e));
    await t.http('POST', '/api/collections/items/records', { title: 'before', qty: 5 });
    await waitFor('first change', () => raw.some((e) => e.type === 'change'));

    await t.restart();
    for (let i = 0; i < 20; i++) await t.http('POST', '/api/collections/items/records', { title: `after ${i}`, qty: i % 6 });
    await waitFor('reconnected', () => A.getStatus().state === 'connected' && states.includes('reconnecting'), {
      subscribe: [A.subscribeStatus],
    });
    await waitFor('live query equals the server', () => equalsServer(live.rows, 'qty=gte.3'), { subscribe: [live.subscribe] });
    await waitFor('raw handler saw all 21 inserts', () => raw.filter((e) => e.type === 'change').length === 21);
    const seqs = raw.flatMap((e) => (e.type === 'change' ? [e.seq] : []));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(21);
    expect(raw.some((e) => e.type === 'subscribed' && e.resumed)).toBe(true);
    off();
    live.close();
  });

  it('starts over with a snapshot when the server no longer has the missed events (resync_required)', async () => {
    t = await TestServer.start({ retainEvents: 2 });
    await t.createCollection(itemsCollection);
    const A = client(t);
    clients.push(A);
    await A.whenConnected();
    const live = A.collection('items').live();
    await live.ready();
    const raw: SubscriptionEvent[] = [];
    A.collection('items').subscribe((e) => raw.push(e));
    A.goOffline();
    for (let i = 0; i < 6; i++) await t.http('POST', '/api/collections/items/records', { title: `r${i}` });
    await t.restart(); // only the durable log answers now, and it no longer holds the early events
    A.goOnline();
    await waitFor('resync reported', () => raw.some((e) => e.type === 'resync'));
    await waitFor('live query equals the server', () => equalsServer(live.rows), { subscribe: [live.subscribe] });
    expect(raw.find((e) => e.type === 'resync')).toEqual({ type: 'resync', reason: 'log_trimmed' });
    live.close();
  });

  it('refused credentials put the connection in error; setToken recovers it', async () => {
    t = await TestServer.start();
    await t.createCollection(itemsCollection);
    const A = client(t);
    clients.push(A);
    await A.whenConnected();
    const latency = await A.ping();
    expect(latency).toBeGreaterThanOrEqual(0);
    expect(A.getStatus().quality).not.toBeNull();
    await A.setToken('not-a-valid-token');
    expect(A.getStatus().state).toBe('error');
    expect(A.getStatus().error?.code).toBe('unauthorized');
    // Writes wait (queued) while the credentials are bad...
    const pending = A.collection('items').create({ title: 'while refused' });
    expect(A.getQueueStatus().size).toBe(1);
    await A.setToken(() => t!.adminKey);
    await A.whenConnected(10_000);
    // ...and go through once they are good.
    expect((await pending).title).toBe('while refused');
  });
});
