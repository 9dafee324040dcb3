/** The React hooks against a scripted realtime socket (happy-dom). */
import { act, cleanup, render, screen } from '@testing-library/react';
import { StrictMode, useState } from 'react';
import { afterEach, describe, expect, it } from 'vitest';
import type { LivebaseClient } from '@livebase/client';
import {
  LivebaseProvider,
  useBroadcast,
  useConnectionStatus,
  useLiveAggregate,
  useLiveQuery,
  useMutation,
  usePresence,
  useQueueStatus,
  useRecord,
} from '@livebase/react';
import { FakeRealtime, fakeClient, fakeFetch, json, row, until } from '../../client/test/fakes.js';

type Item = { title: string; qty?: number };

const clients: LivebaseClient[] = [];
afterEach(async () => {
  cleanup();
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

function setup(fetchHandler = fakeFetch(() => json(500, {}))) {
  const rt = new FakeRealtime();
  const client = fakeClient(rt, fetchHandler, { watchNetwork: false });
  clients.push(client);
  const wrap = (ui: React.ReactNode) => render(<LivebaseProvider client={client}>{ui}</LivebaseProvider>);
  return { rt, client, wrap };
}

function Titles({ filter, testid = 'titles' }: { filter?: string; testid?: string }) {
  const { rows, status, pendingIds } = useLiveQuery<Item>('items', { filter, order: 'title' });
  return (
    <div data-testid={testid} data-status={status}>
      {rows.map((r) => `${r.title}${pendingIds.has(r.id) ? '*' : ''}`).join(',')}
    </div>
  );
}

describe('react hooks', () => {
  it('useLiveQuery renders the rows and follows changes; useMutation shows writes at once', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const { rt, wrap } = setup(
      fakeFetch(async (c) => {
        await gate; // the server answers when the test says so
        return json(201, row(String((c.body as { id: string }).id), 1, c.body as object));
      }),
    );
    rt.rows.set('items', [row('a', 1, { title: 'apple' })]);
    let create!: (d: Item) => Promise<unknown>;
    function Add() {
      const m = useMutation<Item>('items');
      create = (d) => m.create(d);
      return <span data-testid="pending">{m.pending}</span>;
    }
    wrap(
      <>
        <Titles />
        <Add />
      </>,
    );
    await act(() => until('ready', () => screen.getByTestId('titles').dataset.status === 'ready'));
    expect(screen.getByTestId('titles').textContent).toBe('apple');
    const sub = rt.subId('items', undefined);
    await act(async () => {
      rt.last.push({ type: 'change', sub_id: sub, seq: 1, op: 'insert', view: 'add', id: 'b', version: 1, actor: null, committed_at: 't', new: row('b', 1, { title: 'banana' }), old: null });
    });
    expect(screen.getByTestId('titles').textContent).toBe('apple,banana');
    let p!: Promise<unknown>;
    await act(async () => {
      p = create({ title: 'cherry' });
    });
    expect(screen.getByTestId('titles').textContent).toBe('apple,banana,cherry*');
    expect(screen.getByTestId('pending').textContent).toBe('1');
    open();
    await act(() => p);
    expect(screen.getByTestId('titles').textContent).toBe('apple,banana,cherry');
    expect(screen.getByTestId('pending').textContent).toBe('0');
  });

  it('components reading one query render the same rows and share one subscription, even in StrictMode', async () => {
    const { rt, wrap } = setup();
    rt.rows.set('items', [row('a', 1, { title: 'apple', qty: 1 })]);
    wrap(
      <StrictMode>
        <Titles filter="qty=lt.5" testid="one" />
        <Titles filter="qty=lt.5" testid="two" />
      </StrictMode>,
    );
    await act(() => until('ready', () => screen.getByTestId('two').dataset.status === 'ready'));
    await act(async () => {
      rt.last.push({ type: 'change', sub_id: rt.subId('items', 'qty=lt.5'), seq: 1, op: 'insert', view: 'add', id: 'b', version: 1, actor: null, committed_at: 't', new: row('b', 1, { title: 'box', qty: 2 }), old: null });
    });
    expect(screen.getByTestId('one').textContent).toBe('apple,box');
    expect(screen.getByTestId('two').textContent).toBe('apple,box');
    expect(rt.last.sentOfType('subscribe').length).toBe(1);
    expect(rt.last.sentOfType('unsubscribe').length).toBe(0);
  });

  it('useRecord follows one record', async () => {
    const { rt, wrap } = setup();
    rt.onSubscribe = (_s, f) => [
      { type: 'subscribed', ref: f.ref, sub_id: 3, seq: 0 },
      { type: 'snapshot', sub_id: 3, seq: 0, rows: f.filter === 'id=eq.r1' ? [row('r1', 2, { title: 'one' })] : [], done: true },
    ];
    function Rec({ id }: { id: string | null }) {
      const { record, status } = useRecord<Item>('items', id);
      return <div data-testid="rec">{`${status}:${record ? `${record.title}@${record.version}` : 'none'}`}</div>;
    }
    const { rerender } = wrap(<Rec id={null} />);
    expect(screen.getByTestId('rec').textContent).toBe('loading:none');
    const client = clients[0]!;
    rerender(
      <LivebaseProvider client={client}>
        <Rec id="r1" />
      </LivebaseProvider>,
    );
    await act(() => until('loaded', () => screen.getByTestId('rec').textContent === 'ready:one@2'));
    await act(async () => {
      rt.last.push({ type: 'change', sub_id: 3, seq: 1, op: 'delete', view: 'remove', id: 'r1', version: 2, actor: null, committed_at: 't', new: null, old: row('r1', 2) });
    });
    expect(screen.getByTestId('rec').textContent).toBe('ready:none');
  });

  it('useConnectionStatus and useQueueStatus follow the client', async () => {
    const { rt, client, wrap } = setup();
    function Status() {
      const s = useConnectionStatus();
      const q = useQueueStatus();
      return <div data-testid="st">{`${s.state}|${q.size}|${q.paused ?? '-'}`}</div>;
    }
    wrap(<Status />);
    await act(() => client.whenConnected());
    expect(screen.getByTestId('st').textContent).toBe('connected|0|-');
    act(() => client.goOffline());
    expect(screen.getByTestId('st').textContent).toBe('offline|0|offline');
    act(() => {
      void client.collection('items').create({ title: 'queued' });
    });
    expect(screen.getByTestId('st').textContent).toBe('offline|1|offline');
    expect(rt.sockets[0]!.closedByClient).toBe(true);
  });

  it('usePresence lists members, tracks meta (again when it changes) and untracks on unmount', async () => {
    const { rt, client, wrap } = setup();
    function Who({ name }: { name: string }) {
      const { members } = usePresence<{ name: string }>('doc:1', { name }, { key: 'me' });
      return <div data-testid="who">{members.map((m) => `${m.key}:${m.meta.name}`).join(',')}</div>;
    }
    const ui = (name: string, show = true) => <LivebaseProvider client={client}>{show ? <Who name={name} /> : null}</LivebaseProvider>;
    const { rerender } = wrap(<Who name="Ada" />);
    await act(() => until('tracked', () => rt.sockets[0]?.sentOfType('presence_track').length === 1));
    expect(rt.last.sentOfType('presence_track')[0]).toMatchObject({ channel: 'doc:1', key: 'me', meta: { name: 'Ada' } });
    await act(async () => {
      rt.last.push({ type: 'presence_diff', channel: 'doc:1', joins: { me: [{ conn_id: 'c1', meta: { name: 'Ada' } }], bo: [{ conn_id: 'c2', meta: { name: 'Bo' } }] }, leaves: {} });
    });
    expect(screen.getByTestId('who').textContent).toBe('bo:Bo,me:Ada');
    rerender(ui('Ada L.'));
    await act(() => until('re-tracked', () => rt.last.sentOfType('presence_track').length === 2));
    expect(rt.last.sentOfType('presence_track')[1]).toMatchObject({ meta: { name: 'Ada L.' } });
    expect(rt.last.sentOfType('presence_untrack').length).toBe(0);
    rerender(ui('Ada L.', false));
    await act(() => until('left', () => rt.last.sentOfType('leave').length === 1));
    expect(rt.last.sentOfType('presence_untrack').length).toBe(1);
  });

  it('useBroadcast receives events and sends them', async () => {
    const { rt, client, wrap } = setup();
    function Cursor() {
      const [last, setLast] = useState('none');
      const send = useBroadcast<{ x: number }>('room', 'cursor', (p, m) => setLast(`${p.x} from ${m.from}`));
      return (
        <button data-testid="cur" onClick={() => void send({ x: 42 })}>
          {last}
        </button>
      );
    }
    wrap(<Cursor />);
    await act(() => client.whenConnected());
    await act(() => until('joined', () => rt.last.sentOfType('join').length === 1));
    await act(async () => {
      rt.last.push({ type: 'broadcast', channel: 'room', event: 'cursor', payload: { x: 7 }, from: 'c9' });
      rt.last.push({ type: 'broadcast', channel: 'room', event: 'other', payload: { x: 8 }, from: 'c9' });
    });
    expect(screen.getByTestId('cur').textContent).toBe('7 from c9');
    await act(async () => {
      screen.getByTestId('cur').click();
    });
    await act(() => until('sent', () => rt.last.sentOfType('broadcast').length === 1));
    expect(rt.last.sentOfType('broadcast')[0]).toMatchObject({ channel: 'room', event: 'cursor', payload: { x: 42 } });
  });

  it('useLiveAggregate renders KPI tiles from the full frame and follows deltas and a reconnect, one subscription for both tiles', async () => {
    const { rt, wrap } = setup();
    rt.aggregates.set('shipments', [
      { status: 'ok', count: 9, 'sum(weight_kg)': 31 },
      { status: 'late', count: 2, 'sum(weight_kg)': 10.5 },
    ]);
    type Shipment = { status: string; weight_kg: number };
    function Tile({ testid }: { testid: string }) {
      const { groups, status, seq } = useLiveAggregate<Shipment>('shipments', { group: ['status'], fn: ['count', 'sum(weight_kg)'] });
      const late = groups.find((g) => g.status === 'late');
      return (
        <div data-testid={testid} data-status={status} data-seq={String(seq)}>
          {late ? `${late.count} late, ${String(late['sum(weight_kg)'])} kg` : 'none late'}|{groups.map((g) => g.status).join(',')}
        </div>
      );
    }
    wrap(
      <StrictMode>
        <Tile testid="a" />
        <Tile testid="b" />
      </StrictMode>,
    );
    await act(() => until('ready', () => screen.getByTestId('b').dataset.status === 'ready'));
    expect(screen.getByTestId('a').textContent).toBe('2 late, 10.5 kg|late,ok');
    expect(rt.last.sentOfType('subscribe').length).toBe(1);
    const sub = rt.subId('shipments', `#${JSON.stringify(rt.last.sentOfType('subscribe')[0]!.aggregate)}`);
    await act(async () => {
      rt.last.push({ type: 'aggregate', sub_id: sub, seq: 1, full: false, groups: [{ status: 'ok', count: 11, 'sum(weight_kg)': 41.5 }], removed: [{ status: 'late' }] });
    });
    expect(screen.getByTestId('a').textContent).toBe('none late|ok');
    expect(screen.getByTestId('b').dataset.seq).toBe('1');
    // Reconnect: the fresh full frame replaces what the tiles showed.
    rt.seq = 5;
    rt.aggregates.set('shipments', [{ status: 'late', count: 1, 'sum(weight_kg)': 2 }]);
    await act(async () => rt.last.drop(1006));
    await act(() => until('fresh values', () => screen.getByTestId('a').dataset.seq === '5'));
    expect(screen.getByTestId('a').textContent).toBe('1 late, 2 kg|late');
    expect(screen.getByTestId('b').textContent).toBe('1 late, 2 kg|late');
    expect(rt.last.sentOfType('subscribe').length).toBe(1);
  });
});
