/**
 * Test doubles: an in-memory realtime endpoint speaking the protocol's frames, and a fake
 * fetch. Frames are delivered synchronously so tests decide exactly what happens when.
 */
import { createClient, type LivebaseClient, type LivebaseClientOptions, type WebSocketConstructor, type WebSocketLike } from '@livebase/client';

export type Frame = Record<string, unknown> & { type: string };

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  sent: Frame[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closedByClient = false;

  constructor(
    readonly url: string,
    private readonly server: FakeRealtime,
  ) {}

  /** The server accepts the connection and says welcome. */
  accept(connId = `c${this.server.sockets.indexOf(this) + 1}`): void {
    this.readyState = 1;
    this.onopen?.({});
    this.push({ type: 'welcome', conn_id: connId, server_time: new Date().toISOString(), heartbeat_ms: 15000, timeout_ms: 45000 });
  }

  push(frame: Frame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server (or the network) ends the connection. */
  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }

  /** A failed handshake. */
  fail(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: '' });
  }

  send(data: string): void {
    const f = JSON.parse(data) as Frame;
    this.sent.push(f);
    this.server.handle(this, f);
  }

  close(): void {
    this.closedByClient = true;
    this.readyState = 3;
  }

  sentOfType(type: string): Frame[] {
    return this.sent.filter((f) => f.type === type);
  }
}

export class FakeRealtime {
  sockets: FakeSocket[] = [];
  /** Accept new sockets at once (in a macrotask). */
  autoAccept = true;
  /** Answer requests automatically. */
  autoReply = true;
  /** Answer pings (false: simulate a dead connection). */
  answerPings = true;
  seq = 0;
  private subIds = new Map<string, number>();
  private nextSub = 1;
  /** Rows for snapshot subscriptions, by collection. */
  rows = new Map<string, Record<string, unknown>[]>();
  /** Current groups of live aggregates, by collection (sent as the `full` frame on subscribe). */
  aggregates = new Map<string, Record<string, unknown>[]>();
  /** Override a subscribe reply (return null to not answer). */
  onSubscribe: ((sock: FakeSocket, f: Frame) => Frame[] | null) | null = null;

  readonly WebSocket: WebSocketConstructor;

  constructor() {
    const server = this;
    this.WebSocket = class {
      constructor(url: string) {
        const s = new FakeSocket(url, server);
        server.sockets.push(s);
        if (server.autoAccept) setTimeout(() => s.readyState === 0 && s.accept(), 0);
        return s;
      }
    } as unknown as WebSocketConstructor;
  }

  get last(): FakeSocket {
    const s = this.sockets[this.sockets.length - 1];
    if (!s) throw new Error('no socket yet');
    return s;
  }

  subId(collection: string, filter?: unknown): number {
    const key = `${collection}\u0000${String(filter ?? '')}`;
    let id = this.subIds.get(key);
    if (!id) {
      id = this.nextSub++;
      this.subIds.set(key, id);
    }
    return id;
  }

  handle(sock: FakeSocket, f: Frame): void {
    if (!this.autoReply) return;
    const ref = f.ref;
    switch (f.type) {
      case 'ping':
        if (this.answerPings) sock.push({ type: 'pong', ref, server_time: new Date().toISOString() });
        break;
      case 'subscribe': {
        const custom = this.onSubscribe?.(sock, f);
        if (custom !== undefined && custom !== null) {
          for (const fr of custom) sock.push(fr);
          break;
        }
        if (custom === null && this.onSubscribe) break;
        if (f.aggregate) {
          // Aggregates resume by value: `subscribed`, then every current group.
          const sub = this.subId(String(f.collection), `${String(f.filter ?? '')}#${JSON.stringify(f.aggregate)}`);
          const seq = Math.max(this.seq, typeof f.since === 'number' ? f.since : 0);
          sock.push({ type: 'subscribed', ref, sub_id: sub, seq });
          sock.push({ type: 'aggregate', sub_id: sub, seq, full: true, groups: this.aggregates.get(String(f.collection)) ?? [], removed: [] });
          break;
        }
        const sub = this.subId(String(f.collection), f.filter);
        const seq = typeof f.since === 'number' ? f.since : this.seq;
        sock.push({ type: 'subscribed', ref, sub_id: sub, seq });
        if (f.snapshot) sock.push({ type: 'snapshot', sub_id: sub, seq, rows: this.rows.get(String(f.collection)) ?? [], done: true });
        break;
      }
      case 'join':
        sock.push({ type: 'ok', ref });
        sock.push({ type: 'presence_state', channel: f.channel, state: {} });
        break;
      case 'unsubscribe':
      case 'leave':
      case 'presence_track':
      case 'presence_untrack':
      case 'auth':
        sock.push({ type: 'ok', ref });
        break;
      case 'broadcast':
        if (f.ack) sock.push({ type: 'ok', ref });
        break;
    }
  }
}

export interface FetchCall {
  method: string;
  url: string;
  path: string;
  headers: Record<string, string>;
  body: unknown;
}

export type FetchHandler = (call: FetchCall) => Response | Promise<Response>;

/** A fetch that records calls and answers with `handler`. */
export function fakeFetch(handler: FetchHandler): { fetch: (input: string, init?: RequestInit) => Promise<Response>; calls: FetchCall[] } {
  const calls: FetchCall[] = [];
  return {
    calls,
    fetch: async (input, init) => {
      const u = new URL(input);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries((init?.headers ?? {}) as Record<string, string>)) headers[k.toLowerCase()] = v;
      const call: FetchCall = {
        method: init?.method ?? 'GET',
        url: input,
        path: u.pathname,
        headers,
        body: typeof init?.body === 'string' ? JSON.parse(init.body) : undefined,
      };
      calls.push(call);
      return handler(call);
    },
  };
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });
}

/** A server record. */
export function row(id: string, version: number, fields: object = {}): Record<string, unknown> & { id: string; version: number } {
  return { id, version, created_at: '2026-01-01T00:00:00.000000Z', updated_at: `2026-01-01T00:00:0${Math.min(version, 9)}.000000Z`, ...fields };
}

export function fakeClient(rt: FakeRealtime, f: { fetch: (input: string, init?: RequestInit) => Promise<Response> }, extra: Partial<LivebaseClientOptions> = {}): LivebaseClient {
  return createClient({
    url: 'http://livebase.test',
    token: 'tok',
    WebSocket: rt.WebSocket,
    fetch: f.fetch,
    storage: 'memory',
    backoff: { baseMs: 5, capMs: 20 },
    retry: { baseMs: 5, capMs: 20 },
    unsubscribeDelayMs: 0,
    watchNetwork: false,
    ...extra,
  });
}

/** Lets pending promise callbacks and 0 ms timers run. */
export async function flush(times = 3): Promise<void> {
  for (let i = 0; i < times; i++) await new Promise((r) => setTimeout(r, 0));
}

export async function until(what: string, check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
