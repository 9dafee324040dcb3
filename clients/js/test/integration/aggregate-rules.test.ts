/**
 * Live aggregates under collection rules: each user counts only the rows it may see, and
 * after `setToken` with another identity the fresh values (a `full` frame) replace the old.
 */
import { describe, expect, it } from 'vitest';
import { type TestServer, userToken } from './server.js';
import { client, serverPerTest } from './helpers.js';

const SECRET = 'test-secret-for-hs256-tokens-0123456789';

let t: TestServer;
const clients = serverPerTest((s) => (t = s), {
  start: { jwtSecret: SECRET },
  collection: {
    name: 'shipments',
    fields: [
      { name: 'status', type: 'select', values: ['late', 'ok'] },
      { name: 'owner', type: 'text' },
    ],
    rules: { list: 'auth.role != "anon"', view: 'record.owner == auth.sub || auth.role == "manager"' },
  },
});

describe('live aggregates under rules', () => {
  it('count only what the user may see, and switch to the new identity’s values after setToken', async () => {
    for (const owner of ['u1', 'u2', 'u2']) {
      expect((await t.http('POST', '/api/collections/shipments/records', { status: 'late', owner })).status).toBe(201);
    }
    const A = client(t, { token: userToken(SECRET, 'u1', 3600) });
    clients.push(A);
    const kpi = A.collection('shipments').aggregate({ fn: ['count'] });
    expect(await kpi.ready()).toEqual([{ count: 1 }]);
    expect((await A.collection('shipments').aggregateOnce({ fn: ['count'] })).groups).toEqual([{ count: 1 }]);
    await t.http('POST', '/api/collections/shipments/records', { status: 'ok', owner: 'u2' });
    await t.http('POST', '/api/collections/shipments/records', { status: 'ok', owner: 'u1' });
    await kpi.until((s) => s.groups[0]?.count === 2, 20_000, 'u1’s second row counted');

    const connId = A.getStatus().connId;
    await A.setToken(userToken(SECRET, 'boss', 3600, 'manager'));
    const s = await kpi.until((x) => x.groups[0]?.count === 5, 20_000, 'the manager’s count');
    expect(s.groups).toEqual([{ count: 5 }]);
    expect(A.getStatus().connId).toBe(connId); // an `auth` frame on the same socket, not a reconnect
    expect((await A.collection('shipments').aggregateOnce({ fn: ['count'] })).groups).toEqual([{ count: 5 }]);
    kpi.close();
  });
});
