/** The client: one realtime connection, one write queue, collections and channels on top. */
import { AggregateHub } from './aggregate.js';
import type { BackoffOptions } from './backoff.js';
import { RecordCache } from './cache.js';
import { Channel } from './channel.js';
import { Collection } from './collection.js';
import type { ConflictHandler, ConflictStrategy } from './conflict.js';
import {
  Connection,
  type ConnectionStatus,
  type HeartbeatOptions,
  type WebSocketConstructor,
} from './connection.js';
import { Emitter } from './emitter.js';
import { LivebaseError, toLivebaseError } from './errors.js';
import type { QualityThresholds } from './quality.js';
import { MutationQueue, type ConflictEvent, type OpResult, type QueuedMutation, type QueueStatus } from './queue.js';
import { RestClient, type FetchLike } from './rest.js';
import { defaultStorage, indexedDBStorage, memoryStorage, type QueueStorage } from './storage.js';
import { SubscriptionHub } from './subscriptions.js';
import type { AnyRow } from './types.js';

export type TokenSource = string | null | undefined | (() => string | null | undefined | Promise<string | null | undefined>);

export interface LivebaseClientOptions {
  /** The server's base URL, e.g. `https://livebase.example.com` or `http://127.0.0.1:8080`. */
  url: string;
  /** A token (JWT or admin key) or a function returning one (called for each connection and request). */
  token?: TokenSource;
  /** The WebSocket implementation. Default: `globalThis.WebSocket` (pass `ws`'s in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** The fetch implementation. Default: `globalThis.fetch`. */
  fetch?: FetchLike;
  /** Open the realtime connection at once. Default true (else call `connect()`). */
  autoConnect?: boolean;
  /** Reconnect delays: exponential with full jitter, default 500 ms doubling up to 30 s. */
  backoff?: BackoffOptions;
  /** Client pings (latency, dead-connection detection): default every 15 s, 10 s to answer. */
  heartbeat?: HeartbeatOptions;
  /** Latency grades; default excellent < 50 ms, good < 150 ms, fair < 400 ms, else poor. */
  quality?: QualityThresholds;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** HTTP request timeout. Default 30 000 ms. */
  httpTimeoutMs?: number;
  /**
   * Where queued writes are kept: a QueueStorage (`fileStorage(path)` from
   * `@livebase/client/node`), `'indexeddb'`, or `'memory'`. Default: IndexedDB when the
   * environment has it (database `livebase-queue:<url>`), memory otherwise.
   */
  storage?: QueueStorage | 'indexeddb' | 'memory';
  /** On a 409 version conflict, unless `onConflict` is given. Default `merge`. */
  conflictStrategy?: ConflictStrategy;
  /** Decides conflicts (may ask the user: return a promise). Overrides `conflictStrategy`. */
  onConflict?: ConflictHandler;
  /** Delays between retries of a write after a network error or a 5xx: default 250 ms doubling to 10 s, full jitter. */
  retry?: BackoffOptions;
  /** Resolutions of one write before it fails. Default 5. */
  maxConflictRetries?: number;
  /** Delay before unsubscribing a query (or leaving a channel) nobody uses any more. Default 1000 ms. */
  unsubscribeDelayMs?: number;
  /** Follow the browser's online/offline events. Default true. */
  watchNetwork?: boolean;
}

export interface ClientEvents {
  status: ConnectionStatus;
  queue: QueueStatus;
  /** Any failure: a rolled-back write, a refused request, storage trouble. */
  error: LivebaseError;
  /** A write came back 409 and was resolved (see `resolution` and `outcome`). */
  conflict: ConflictEvent;
  /** A write was confirmed by the server. */
  confirmed: { mutation: QueuedMutation; results: OpResult[] };
  /** A write failed for good and was rolled back. */
  failed: { mutation: QueuedMutation; error: LivebaseError };
}

/** What collections and live queries reach inside the client. */
export interface ClientInternals {
  rest: RestClient;
  cache: RecordCache;
  hub: SubscriptionHub;
  aggregates: AggregateHub;
  queue: MutationQueue;
}

export class LivebaseClient extends Emitter<ClientEvents> {
  readonly url: string;
  private readonly conn: Connection;
  private readonly internals: ClientInternals;
  private readonly channels = new Map<string, Channel<never>>();
  private readonly collections = new Map<string, Collection<never>>();
  private token: TokenSource;
  private lastToken: string | undefined;
  private readonly storage: QueueStorage;
  private readonly lingerMs: number;
  private closed = false;

  constructor(options: LivebaseClientOptions) {
    super();
    if (!options.url) throw new Error('LivebaseClient: `url` is required');
    this.url = options.url.replace(/\/+$/, '');
    this.token = options.token;
    const fetchImpl = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    if (!fetchImpl) throw new Error('LivebaseClient: no fetch implementation: pass `fetch`');
    const rest = new RestClient(this.url, () => this.resolveToken(), fetchImpl as FetchLike, options.httpTimeoutMs ?? 30_000);
    const cache = new RecordCache();
    this.conn = new Connection({
      url: `${this.url.replace(/^http/, 'ws')}/api/realtime`,
      WebSocket: options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
      getToken: () => this.resolveToken(),
      ...(options.backoff ? { backoff: options.backoff } : {}),
      ...(options.heartbeat ? { heartbeat: options.heartbeat } : {}),
      ...(options.quality ? { quality: options.quality } : {}),
      ...(options.connectTimeoutMs !== undefined ? { connectTimeoutMs: options.connectTimeoutMs } : {}),
      ...(options.requestTimeoutMs !== undefined ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
      ...(options.watchNetwork !== undefined ? { watchNetwork: options.watchNetwork } : {}),
    });
    this.lingerMs = options.unsubscribeDelayMs ?? 1000;
    const hub = new SubscriptionHub(this.conn, cache, { lingerMs: this.lingerMs });
    const aggregates = new AggregateHub(this.conn, this.lingerMs);
    const s = options.storage;
    this.storage =
      s === 'memory' ? memoryStorage() : s === 'indexeddb' ? indexedDBStorage(`livebase-queue:${this.url}`) : (s ?? defaultStorage(`livebase-queue:${this.url}`));
    const queue = new MutationQueue({
      rest,
      cache,
      storage: this.storage,
      isOnline: () => this.conn.connected,
      conflictStrategy: options.conflictStrategy ?? 'merge',
      ...(options.onConflict ? { onConflict: options.onConflict } : {}),
      maxConflictRetries: options.maxConflictRetries ?? 5,
      ...(options.retry ? { retry: options.retry } : {}),
      refreshToken: () => this.refreshToken(),
      applyConfirmed: (collection, results) => this.applyConfirmed(collection, results),
      pendingChanged: (collection, ids) => {
        for (const e of hub.entriesOf(collection)) e.invalidateViews(ids);
      },
    });
    this.internals = { rest, cache, hub, aggregates, queue };

    this.conn.on('status', (st) => {
      queue.emitStatus();
      this.emit('status', st);
    });
    this.conn.on('open', () => {
      for (const ch of this.channels.values()) ch.onOpen();
      queue.kick();
    });
    this.conn.on('close', () => {
      for (const ch of this.channels.values()) ch.onClose();
    });
    this.conn.on('frame', (f) => {
      if (typeof f.channel === 'string') this.channels.get(f.channel)?.onFrame(f);
      else if (f.type === 'error') {
        const err = new LivebaseError(String(f.code ?? 'error'), String(f.message ?? 'server error'), 0, f);
        if (err.code === 'token_expired') void this.onTokenExpired(err);
        else this.emit('error', err);
      }
    });
    queue.on('status', (st) => this.emit('queue', st));
    queue.on('error', (e) => this.emit('error', e));
    queue.on('conflict', (e) => this.emit('conflict', e));
    queue.on('confirmed', (e) => this.emit('confirmed', e));
    queue.on('failed', (e) => this.emit('failed', e));

    if (options.autoConnect !== false) this.conn.connect();
  }

  /** A collection handle (cheap; the same object for the same name). */
  collection<T extends object = Record<string, unknown>>(name: string): Collection<T> {
    let c = this.collections.get(name);
    if (!c) {
      c = new Collection<never>(name, this.internals);
      this.collections.set(name, c);
    }
    return c as unknown as Collection<T>;
  }

  /** A broadcast / presence channel (the same object for the same name). */
  channel<M = Record<string, unknown>>(name: string): Channel<M> {
    let ch = this.channels.get(name);
    if (!ch) {
      ch = new Channel<never>(name, this.conn, this.lingerMs);
      this.channels.set(name, ch);
    }
    return ch as unknown as Channel<M>;
  }

  // ----------------------------------------------------------------- connection

  getStatus = (): ConnectionStatus => this.conn.getStatus();

  /** For external stores (`useSyncExternalStore`): called on every status change. */
  subscribeStatus = (listener: () => void): (() => void) => this.on('status', () => listener());

  connect(): void {
    this.conn.connect();
  }

  /** Closes the realtime connection and stays offline (writes queue up) until `connect()`. */
  disconnect(): void {
    this.conn.disconnect();
  }

  /** Simulates the browser's `offline` event (tests, "work offline" toggles). */
  goOffline(): void {
    this.conn.goOffline();
  }

  /** Simulates the browser's `online` event: reconnect at once. */
  goOnline(): void {
    this.conn.goOnline();
  }

  /** One round trip now, in milliseconds. */
  ping(): Promise<number> {
    return this.conn.ping();
  }

  /** Resolves once connected (or rejects after `timeoutMs`). */
  whenConnected(timeoutMs = 30_000): Promise<void> {
    if (this.conn.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new LivebaseError('timeout', `not connected after ${timeoutMs} ms (state ${this.conn.getStatus().state})`));
      }, timeoutMs);
      const off = this.conn.on('status', (s) => {
        if (s.state !== 'connected') return;
        clearTimeout(timer);
        off();
        resolve();
      });
    });
  }

  // ----------------------------------------------------------------- auth

  /**
   * Replaces the credentials: used by every later request and connection, and sent on
   * the open socket as an `auth` frame. Resumes a queue paused by a 401. No token (sign-out)
   * reconnects anonymously, so nothing keeps flowing under the old identity.
   */
  async setToken(token: TokenSource): Promise<void> {
    this.token = token;
    const t = await this.resolveToken();
    this.internals.queue.resumeAuth();
    if (t) await this.conn.authenticate(t).catch((e: unknown) => this.emit('error', toLivebaseError(e)));
    else this.conn.restart();
  }

  private async resolveToken(): Promise<string | undefined> {
    const t = typeof this.token === 'function' ? await this.token() : this.token;
    this.lastToken = t ?? undefined;
    return this.lastToken;
  }

  /**
   * The server paused our subscriptions because the token expired: a token function is
   * asked for a fresh one, sent with `auth` (the server then replays what was missed). With
   * a fixed token the app hears about it (`error` event, code `token_expired`) and calls
   * `setToken`.
   */
  private async onTokenExpired(err: LivebaseError): Promise<void> {
    if (typeof this.token === 'function') {
      try {
        const t = await this.resolveToken();
        if (t) {
          await this.conn.authenticate(t);
          return;
        }
      } catch (e) {
        this.emit('error', toLivebaseError(e));
        return;
      }
    }
    this.emit('error', err);
  }

  /** After a 401: ask the token function again; true when it gave a different token. */
  private async refreshToken(): Promise<boolean> {
    if (typeof this.token !== 'function') return false;
    const before = this.lastToken;
    const t = await this.resolveToken();
    if (!t || t === before) return false;
    await this.conn.authenticate(t).catch(() => {});
    return true;
  }

  // ----------------------------------------------------------------- queue

  getQueueStatus = (): QueueStatus => this.internals.queue.getStatus();

  subscribeQueue = (listener: () => void): (() => void) => this.on('queue', () => listener());

  /** The writes not yet confirmed, in order. */
  pendingWrites(): readonly QueuedMutation[] {
    return this.internals.queue.pending();
  }

  /** Resolves once the stored queue of an earlier session has been read. */
  get ready(): Promise<void> {
    return this.internals.queue.loaded;
  }

  /** Resolves when every queued write is settled (or rejects after `timeoutMs`). */
  drained(timeoutMs?: number): Promise<void> {
    return this.internals.queue.drained(timeoutMs);
  }

  private applyConfirmed(collection: string, results: OpResult[]): void {
    const { cache, hub } = this.internals;
    const changes: { id: string; row: AnyRow | null; version: number }[] = [];
    for (const r of results) {
      if (!r?.record || typeof r.record.id !== 'string') continue;
      if (r.op === 'delete') {
        cache.acceptDelete(collection, r.record.id, r.record.version);
        changes.push({ id: r.record.id, row: null, version: r.record.version });
      } else {
        cache.acceptRow(collection, r.record, r.op === 'create');
        const newest = cache.row(collection, r.record.id) ?? r.record;
        changes.push({ id: r.record.id, row: newest, version: newest.version });
      }
    }
    hub.applyConfirmed(collection, changes);
  }

  /** Closes the connection and stops the queue (stored writes stay for the next session). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.internals.queue.close();
    this.conn.close();
    this.internals.hub.close();
    this.internals.aggregates.close();
    await this.internals.queue.flush().catch(() => {});
    await this.storage.close?.();
  }
}

export function createClient(options: LivebaseClientOptions): LivebaseClient {
  return new LivebaseClient(options);
}
