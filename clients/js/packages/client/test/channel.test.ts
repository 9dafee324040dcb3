/** Channels: presence bookkeeping, reference counting, restoring after a reconnect. */
import { describe, expect, it } from 'vitest';
import type { PresenceEvent } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, json, until } from './fakes.js';

const noFetch = fakeFetch(() => json(500, {}));

describe('channels', () => {
  it('keep members from presence_state and diffs, reporting joins and leaves', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    const ch = c.channel<{ n: number }>('room');
    const events: PresenceEvent<{ n: number }>[] = [];
    const off = ch.onPresence((e) => events.push(e));
    await until('joined', () => rt.last.sentOfType('join').length === 1);
    const s = rt.last;
    s.push({ type: 'presence_state', channel: 'room', state: { u1: [{ conn_id: 'c7', meta: { n: 1 } }], u2: [{ conn_id: 'c8', meta: { n: 2 } }] } });
    expect(ch.members.map((m) => `${m.key}/${m.conn_id}`)).toEqual(['u1/c7', 'u2/c8']);
    const before = ch.members;
    s.push({ type: 'presence_diff', channel: 'room', joins: { u1: [{ conn_id: 'c9', meta: { n: 3 } }] }, leaves: { u2: [{ conn_id: 'c8', meta: { n: 2 } }] } });
    expect(ch.members.map((m) => `${m.key}/${m.conn_id}`)).toEqual(['u1/c7', 'u1/c9']);
    expect(ch.members).not.toBe(before);
    // A re-track: a leave and a join of the same entry in one diff (meta replaced).
    s.push({ type: 'presence_diff', channel: 'room', joins: { u1: [{ conn_id: 'c7', meta: { n: 10 } }] }, leaves: { u1: [{ conn_id: 'c7', meta: { n: 1 } }] } });
    expect(ch.members.find((m) => m.conn_id === 'c7')?.meta).toEqual({ n: 10 });
    expect(events.map((e) => `${e.type} ${e.member.key}/${e.member.conn_id}`)).toEqual([
      'join u1/c7',
      'join u2/c8',
      'leave u2/c8',
      'join u1/c9',
      'leave u1/c7',
      'join u1/c7',
    ]);
    // Frames of other channels are not ours.
    s.push({ type: 'presence_diff', channel: 'elsewhere', joins: { x: [{ conn_id: 'c1', meta: {} }] }, leaves: {} });
    expect(ch.members.length).toBe(2);
    off();
    await until('left', () => rt.last.sentOfType('leave').length === 1);
    expect(ch.members).toEqual([]);
    await c.close();
  });

  it('join again and track again after a reconnect, reporting who came and went meanwhile', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    const ch = c.channel('doc');
    const events: string[] = [];
    ch.onPresence((e) => events.push(`${e.type} ${e.member.key}`));
    await ch.track({ name: 'me' }, { key: 'me' });
    rt.last.push({ type: 'presence_state', channel: 'doc', state: { me: [{ conn_id: 'c1', meta: { name: 'me' } }], old: [{ conn_id: 'c5', meta: {} }] } });
    rt.last.drop(1006);
    await until('rejoined and retracked', () => rt.sockets.length === 2 && rt.last.sentOfType('presence_track').length === 1);
    expect(rt.last.sentOfType('join')[0]).toMatchObject({ channel: 'doc' });
    expect(rt.last.sentOfType('presence_track')[0]).toMatchObject({ channel: 'doc', key: 'me', meta: { name: 'me' } });
    rt.last.push({ type: 'presence_state', channel: 'doc', state: { me: [{ conn_id: 'c2', meta: { name: 'me' } }], fresh: [{ conn_id: 'c6', meta: {} }] } });
    expect(events.slice(2)).toEqual(['leave me', 'leave old', 'join me', 'join fresh']);
    await c.close();
  });

  it('stay joined while anything holds the channel; send needs it joined', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    const ch = c.channel('x');
    await expect(ch.send('e', 1)).rejects.toMatchObject({ code: 'not_joined' });
    await ch.join();
    const off = ch.on('e', () => {});
    await ch.send('e', { a: 1 });
    expect(rt.last.sentOfType('broadcast')[0]).toMatchObject({ channel: 'x', event: 'e', payload: { a: 1 } });
    await ch.leave();
    expect(rt.last.sentOfType('leave').length).toBe(0); // the handler still holds it
    off();
    await until('left', () => rt.last.sentOfType('leave').length === 1);
    expect(rt.last.sentOfType('join').length).toBe(1);
    await c.close();
  });
});
