/**
 * Live aggregates against the real server: the numbers move with creates, moves between
 * groups and deletes made over REST; the REST one-shot says the same at the same seq; after
 * an offline period the next full frame brings the values back in line.
 */
import { describe, expect, it } from 'vitest';
import type { AggregateSnapshot } from '@livebase/client';
import { type TestServer } from './server.js';
import { client, serverPerTest, waitFor } from './helpers.js';

type Shipment = { status: 'late' | 'ok' | 'lost'; weight_kg: number | null };

let t: TestServer;
const clients = serverPerTest((s) => (t = s), {
  collection: {
    name: 'shipments',
    fields: [
      { name: 'status', type: 'select', values: ['late', 'ok', 'lost'] },
      { name: 'weight_kg', type: 'number' },
    ],
  },
});

async function create(status: string, weight_kg: number | null): Promise<string> {
  const r = await t.http<{ id: string }>('POST', '/api/collections/shipments/records', { status, weight_kg });
  expect(r.status).toBe(201);
  return r.data.id;
}

const QUERY = { group: ['status'], fn: ['count', 'sum(weight_kg)'] } as const;

describe('live aggregates', () => {
  it('follow creates, a move between groups and deletes; the REST one-shot equals the live values', async () => {
    const A = client(t);
    clients.push(A);
    const shipments = A.collection<Shipment>('shipments');
    const kpi = shipments.aggregate({ group: [...QUERY.group], fn: [...QUERY.fn] });
    expect(await kpi.ready()).toEqual([]); // grouped, no rows: no groups

    const a = await create('late', 2);
    await create('late', 3.5);
    await create('ok', 1);
    let s = await kpi.until((x) => x.groups.length === 2 && x.groups[0]!.count === 2 && x.groups[1]!.count === 1, 20_000, 'three rows counted');
    expect(s.groups).toEqual([
      { status: 'late', count: 2, 'sum(weight_kg)': 5.5 },
      { status: 'ok', count: 1, 'sum(weight_kg)': 1 },
    ]);

    // A row moves from late to ok: both groups move.
    const moved = await t.http('PATCH', `/api/collections/shipments/records/${a}`, { status: 'ok' });
    expect(moved.status).toBe(200);
    s = await kpi.until((x) => x.groups.find((g) => g.status === 'ok')?.count === 2, 20_000, 'the move');
    expect(s.groups).toEqual([
      { status: 'late', count: 1, 'sum(weight_kg)': 3.5 },
      { status: 'ok', count: 2, 'sum(weight_kg)': 3 },
    ]);

    // Deleting the last late row removes its group.
    const [late] = await t.list<{ id: string }>('shipments', 'status=eq.late');
    expect((await t.http('DELETE', `/api/collections/shipments/records/${late!.id}`)).status).toBe(200);
    s = await kpi.until((x) => x.groups.length === 1, 20_000, 'late group removed');
    expect(s.groups).toEqual([{ status: 'ok', count: 2, 'sum(weight_kg)': 3 }]);

    // The one-shot over REST says the same at the same seq.
    const rest = await shipments.aggregateOnce({ group: [...QUERY.group], fn: [...QUERY.fn] });
    s = await kpi.until((x) => x.seq === rest.seq, 20_000, `live values at seq ${rest.seq}`);
    expect(rest.groups).toEqual(s.groups);

    // Filters apply as for lists; without group there is one group.
    const heavy = shipments.aggregate({ filter: { weight_kg: 'gt.1.5' }, fn: ['count', 'max(weight_kg)'] });
    expect(await heavy.ready()).toEqual([{ count: 1, 'max(weight_kg)': 2 }]);
    expect((await shipments.aggregateOnce({ filter: { weight_kg: 'gt.1.5' }, fn: ['count', 'max(weight_kg)'] })).groups).toEqual([
      { count: 1, 'max(weight_kg)': 2 },
    ]);
    heavy.close();
    kpi.close();
  });

  it('after an offline period the aggregate subscribes again and the fresh values replace the old ones', async () => {
    const A = client(t);
    clients.push(A);
    await create('late', 1);
    const kpi = A.collection<Shipment>('shipments').aggregate({ group: [...QUERY.group], fn: [...QUERY.fn] });
    expect(await kpi.ready()).toEqual([{ status: 'late', count: 1, 'sum(weight_kg)': 1 }]);
    A.goOffline();
    await waitFor('stale while offline', () => kpi.getSnapshot().stale, { subscribe: [kpi.subscribe] });
    // While away: the late row goes, two ok rows come.
    const [late] = await t.list<{ id: string }>('shipments', 'status=eq.late');
    await t.http('DELETE', `/api/collections/shipments/records/${late!.id}`);
    await create('ok', 4);
    await create('ok', null);
    expect(kpi.groups).toEqual([{ status: 'late', count: 1, 'sum(weight_kg)': 1 }]);
    A.goOnline();
    const s: AggregateSnapshot = await kpi.until((x) => !x.stale, 20_000, 'fresh values after reconnect');
    expect(s.groups).toEqual([{ status: 'ok', count: 2, 'sum(weight_kg)': 4 }]);
    const rest = await A.collection('shipments').aggregateOnce({ group: ['status'], fn: ['count', 'sum(weight_kg)'] });
    expect(rest).toEqual({ seq: s.seq, groups: s.groups });
    kpi.close();
  });

  it('a refused aggregate fails with invalid_aggregate, live and over REST', async () => {
    const A = client(t);
    clients.push(A);
    const bad = A.collection('shipments').aggregate({ fn: ['sum(status)'] });
    await expect(bad.ready(20_000)).rejects.toMatchObject({ code: 'invalid_aggregate' });
    await expect(A.collection('shipments').aggregateOnce({ fn: ['sum(status)'] })).rejects.toMatchObject({
      code: 'invalid_aggregate',
      status: 422,
      details: { field: 'status' },
    });
    bad.close();
  });
});
