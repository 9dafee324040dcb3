/** The connection state machine against a scripted socket. */
import { afterEach, describe, expect, it } from 'vitest';
import type { ConnectionState } from '@livebase/client';
import { FakeRealtime, fakeClient, fakeFetch, json, until } from './fakes.js';

const noFetch = fakeFetch(() => json(500, {}));

describe('connection', () => {
  it('goes connecting → connected, then reconnecting (with backoff) → connected after a drop', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch, { backoff: { baseMs: 40, capMs: 40, random: () => 0.5 } });
    const states: ConnectionState[] = [c.getStatus().state];
    c.on('status', (s) => {
      if (states[states.length - 1] !== s.state) states.push(s.state);
    });
    await c.whenConnected();
    expect(c.getStatus().connId).toBe('c1');
    expect(rt.last.url).toBe('ws://livebase.test/api/realtime?token=tok');
    rt.last.drop(1001);
    const st = c.getStatus();
    expect(st.state).toBe('reconnecting');
    expect(st.attempt).toBe(1);
    expect(st.nextRetryAt! - Date.now()).toBeLessThanOrEqual(20);
    await c.whenConnected();
    expect(rt.sockets.length).toBe(2);
    expect(states).toEqual(['connecting', 'connected', 'reconnecting', 'connected']);
    await c.close();
  });

  it('backs off with growing windows while the server is unreachable, and resets after success', async () => {
    const rt = new FakeRealtime();
    rt.autoAccept = false;
    const draws: number[] = [];
    const c = fakeClient(rt, noFetch, {
      backoff: {
        baseMs: 1,
        capMs: 8,
        random: () => {
          draws.push(1);
          return 0.99;
        },
      },
    });
    const windows: number[] = [];
    c.on('status', (s) => {
      if (s.state === 'reconnecting' && s.nextRetryAt) windows.push(s.attempt);
    });
    for (let i = 0; i < 5; i++) {
      await until(`attempt ${i + 1}`, () => rt.sockets.length === i + 1);
      rt.last.fail();
    }
    expect(windows).toEqual([1, 2, 3, 4, 5]);
    await until('attempt 6', () => rt.sockets.length === 6);
    rt.last.accept();
    expect(c.getStatus()).toMatchObject({ state: 'connected', attempt: 0, error: null });
    await c.close();
  });

  it('measures latency with pings and grades it', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch, { quality: { excellent: 50, good: 150, fair: 400 } });
    await c.whenConnected();
    const rtt = await c.ping();
    expect(rtt).toBeGreaterThanOrEqual(0);
    await until('latency', () => c.getStatus().latencyMs !== null);
    expect(c.getStatus().quality).toBe('excellent');
    await c.close();
  });

  it('reconnects when a pong does not come back in time', async () => {
    const rt = new FakeRealtime();
    rt.answerPings = false;
    const c = fakeClient(rt, noFetch, { heartbeat: { intervalMs: 10, timeoutMs: 30 } });
    await c.whenConnected();
    await until('a second socket', () => rt.sockets.length >= 2, 2000);
    expect(rt.sockets[0]!.closedByClient).toBe(true);
    expect(c.getStatus().error?.code).toBe('timeout');
    await c.close();
  });

  it('gives up an attempt that gets no welcome in time', async () => {
    const rt = new FakeRealtime();
    rt.autoAccept = false;
    const c = fakeClient(rt, noFetch, { connectTimeoutMs: 20 });
    await until('timed out and retried', () => rt.sockets.length >= 2);
    expect(rt.sockets[0]!.closedByClient).toBe(true);
    rt.last.accept();
    await c.whenConnected();
    await c.close();
  });

  describe('browser network events', () => {
    const g = globalThis as unknown as Record<string, unknown>;
    const saved = { add: g.addEventListener, remove: g.removeEventListener, nav: Object.getOwnPropertyDescriptor(globalThis, 'navigator') };
    afterEach(() => {
      g.addEventListener = saved.add;
      g.removeEventListener = saved.remove;
      if (saved.nav) Object.defineProperty(globalThis, 'navigator', saved.nav);
    });

    it('go offline at once on `offline` and reconnect at once on `online`', async () => {
      const target = new EventTarget();
      g.addEventListener = target.addEventListener.bind(target);
      g.removeEventListener = target.removeEventListener.bind(target);
      const rt = new FakeRealtime();
      const c = fakeClient(rt, noFetch, { watchNetwork: true, backoff: { baseMs: 60_000, capMs: 60_000 } });
      await c.whenConnected();
      target.dispatchEvent(new Event('offline'));
      expect(c.getStatus().state).toBe('offline');
      expect(rt.sockets[0]!.closedByClient).toBe(true);
      // Writes made now wait in the queue.
      void c.collection('items').create({ title: 'offline' });
      expect(c.getQueueStatus()).toMatchObject({ size: 1, paused: 'offline' });
      target.dispatchEvent(new Event('online'));
      expect(c.getStatus().state).toBe('reconnecting');
      await c.whenConnected(1000); // no 60 s backoff: `online` retries at once
      expect(rt.sockets.length).toBe(2);
      await c.close();
    });

    it('start offline when the browser says so', async () => {
      const target = new EventTarget();
      g.addEventListener = target.addEventListener.bind(target);
      g.removeEventListener = target.removeEventListener.bind(target);
      Object.defineProperty(globalThis, 'navigator', { value: { onLine: false }, configurable: true });
      const rt = new FakeRealtime();
      const c = fakeClient(rt, noFetch, { watchNetwork: true });
      expect(c.getStatus().state).toBe('offline');
      expect(rt.sockets.length).toBe(0);
      Object.defineProperty(globalThis, 'navigator', { value: { onLine: true }, configurable: true });
      target.dispatchEvent(new Event('online'));
      await c.whenConnected(1000);
      await c.close();
    });
  });

  it('sends a new token as an auth frame; a refused one puts the connection in error', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    await c.setToken('fresh');
    expect(rt.last.sentOfType('auth')[0]).toMatchObject({ token: 'fresh' });
    rt.autoReply = false;
    const refused = c.setToken('bad');
    await until('auth sent', () => rt.last.sentOfType('auth').length === 2);
    const auth = rt.last.sentOfType('auth')[1]!;
    rt.last.push({ type: 'error', ref: auth.ref, code: 'unauthorized', message: 'invalid or expired token' });
    await refused;
    expect(c.getStatus()).toMatchObject({ state: 'error', error: { code: 'unauthorized' } });
    rt.autoReply = true;
    await c.setToken(async () => 'good');
    await c.whenConnected();
    expect(rt.last.url).toContain('token=good');
    await c.close();
  });

  it('signing out (no token) reconnects anonymously instead of keeping the old identity', async () => {
    const rt = new FakeRealtime();
    const c = fakeClient(rt, noFetch);
    await c.whenConnected();
    expect(rt.last.url).toContain('token=tok');
    await c.setToken(null);
    await until('a new socket', () => rt.sockets.length === 2);
    expect(rt.sockets[0]!.closedByClient).toBe(true);
    expect(rt.last.url).toBe('ws://livebase.test/api/realtime');
    await c.whenConnected();
    await c.close();
  });

  it('without any WebSocket implementation it reports an error instead of throwing', async () => {
    const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
    (globalThis as { WebSocket?: unknown }).WebSocket = undefined;
    try {
      const c = fakeClient(new FakeRealtime(), noFetch, { WebSocket: undefined });
      await until('error', () => c.getStatus().state === 'error');
      expect(c.getStatus().error?.code).toBe('no_websocket');
      await c.close();
    } finally {
      (globalThis as { WebSocket?: unknown }).WebSocket = saved;
    }
  });
});
