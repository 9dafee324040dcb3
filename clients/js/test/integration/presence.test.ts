/** Presence and broadcast between real clients. */
import WebSocket from 'ws';
import { describe, expect, it } from 'vitest';
import type { PresenceEvent, WebSocketConstructor } from '@livebase/client';
import type { TestServer } from './server.js';
import { client, serverPerTest, waitFor } from './helpers.js';

let t: TestServer;
const clients = serverPerTest((s) => (t = s));

/** A `ws` WebSocket that remembers its instances, so a test can cut one at the TCP level. */
function trackingWebSocket(sockets: WebSocket[]): WebSocketConstructor {
  class Tracked extends WebSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  return Tracked as unknown as WebSocketConstructor;
}

describe('presence and broadcast', () => {
  it('members appear when tracked and vanish when their connection goes, cleanly or abruptly', async () => {
    const sockets: WebSocket[] = [];
    const A = client(t);
    const B = client(t, { WebSocket: trackingWebSocket(sockets) });
    const C = client(t);
    clients.push(A, B, C);
    await Promise.all([A.whenConnected(), B.whenConnected(), C.whenConnected()]);
    const room = A.channel<{ name: string }>('doc:9');
    const events: PresenceEvent<{ name: string }>[] = [];
    room.onPresence((e) => events.push(e));
    await room.join();
    await B.channel<{ name: string }>('doc:9').track({ name: 'Bob' }, { key: 'bob' });
    await C.channel<{ name: string }>('doc:9').track({ name: 'Cy' }, { key: 'cy' });
    const keys = () => room.members.map((m) => m.key).join(',');
    await waitFor('bob and cy present', () => keys() === 'bob,cy', { subscribe: [room.subscribeMembers] });
    expect(room.members.find((m) => m.key === 'bob')?.meta).toEqual({ name: 'Bob' });
    expect(events.filter((e) => e.type === 'join').map((e) => e.member.key).sort()).toEqual(['bob', 'cy']);

    // Clean disconnect: C goes offline (closes its socket).
    C.goOffline();
    await waitFor('cy left', () => keys() === 'bob', { subscribe: [room.subscribeMembers] });
    expect(events.some((e) => e.type === 'leave' && e.member.key === 'cy')).toBe(true);

    // Abrupt: B's TCP connection is cut with no close frame; the server notices and drops the entry.
    const bobConn = room.members.find((m) => m.key === 'bob')!.conn_id;
    sockets[sockets.length - 1]!.terminate();
    await waitFor('bob left', () => events.some((e) => e.type === 'leave' && e.member.conn_id === bobConn), {
      subscribe: [room.subscribeMembers],
    });
    // B reconnects by itself, joins again and tracks again.
    await waitFor('bob back on a new connection', () => room.members.some((m) => m.key === 'bob' && m.conn_id !== bobConn), {
      subscribe: [room.subscribeMembers],
    });
    expect(B.getStatus().state).toBe('connected');
  });

  it('broadcast reaches other members, and the sender only with self', async () => {
    const A = client(t);
    const B = client(t);
    clients.push(A, B);
    await Promise.all([A.whenConnected(), B.whenConnected()]);
    const got: { who: string; payload: unknown; from: string }[] = [];
    A.channel('room:1').on<{ x: number }>('cursor', (p, m) => got.push({ who: 'A', payload: p, from: m.from }));
    const offB = B.channel('room:1').on<{ x: number }>('cursor', (p, m) => got.push({ who: 'B', payload: p, from: m.from }));
    await Promise.all([A.channel('room:1').join(), B.channel('room:1').join()]);
    await B.channel('room:1').send('cursor', { x: 1 }, { ack: true });
    await waitFor('A got it', () => got.length === 1);
    expect(got[0]).toEqual({ who: 'A', payload: { x: 1 }, from: B.getStatus().connId });
    await B.channel('room:1').send('cursor', { x: 2 }, { self: true, ack: true });
    await waitFor('both got it', () => got.length === 3);
    expect(got.slice(1).map((g) => g.who).sort()).toEqual(['A', 'B']);
    offB();
    await expect(A.channel('room:2').send('cursor', {})).rejects.toMatchObject({ code: 'not_joined' });
  });
});
