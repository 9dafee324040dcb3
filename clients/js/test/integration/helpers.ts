import WebSocket from 'ws';
import { createClient, type LivebaseClient, type LivebaseClientOptions, type WebSocketConstructor } from '@livebase/client';
import { afterEach, beforeEach } from 'vitest';
import { TestServer, type ServerOptions } from './server.js';

/**
 * Registers the per-test fixture shared by the integration files: a fresh server before each
 * test (with `collection` created, when given), handed to `set`; after each test, the clients
 * pushed onto the returned list are closed and the server stopped.
 */
export function serverPerTest(
  set: (t: TestServer) => void,
  opts: { start?: ServerOptions; collection?: unknown } = {},
): LivebaseClient[] {
  const clients: LivebaseClient[] = [];
  let server: TestServer | undefined;
  beforeEach(async () => {
    server = await TestServer.start(opts.start);
    set(server);
    if (opts.collection) await server.createCollection(opts.collection);
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await server?.stop();
    server = undefined;
  });
  return clients;
}

/** A client against the test server (admin key as token; `ws` as WebSocket; quick reconnects). */
export function client(t: TestServer, extra: Partial<LivebaseClientOptions> = {}): LivebaseClient {
  return createClient({
    url: t.url,
    token: t.adminKey,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    storage: 'memory',
    backoff: { baseMs: 50, capMs: 500 },
    retry: { baseMs: 20, capMs: 300 },
    unsubscribeDelayMs: 20,
    ...extra,
  });
}

/**
 * Waits until `check()` is true, re-checking whenever `subscribe` reports a change (and
 * at most every `everyMs` as a fallback); rejects after `timeoutMs` with `what`.
 */
export function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  opts: { timeoutMs?: number; everyMs?: number; subscribe?: ((l: () => void) => () => void)[] } = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  return new Promise((resolve, reject) => {
    let done = false;
    let busy = false;
    const offs: (() => void)[] = [];
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      clearInterval(poll);
      for (const o of offs) o();
      if (err) reject(err);
      else resolve();
    };
    const test = async () => {
      if (done || busy) return;
      busy = true;
      try {
        if (await check()) finish();
      } catch (e) {
        finish(e as Error);
      } finally {
        busy = false;
      }
    };
    const timer = setTimeout(() => finish(new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`)), timeoutMs);
    const poll = setInterval(() => void test(), opts.everyMs ?? 100);
    for (const s of opts.subscribe ?? []) offs.push(s(() => void test()));
    void test();
  });
}

/** A deterministic PRNG (mulberry32) so random tests replay. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Rows keyed by id, without the fields that differ between identical rows (none) — for comparisons. */
export function byId<T extends { id: string }>(rows: readonly T[]): Record<string, T> {
  const out: Record<string, T> = {};
  for (const r of [...rows].sort((a, b) => (a.id < b.id ? -1 : 1))) out[r.id] = r;
  return out;
}
