/**
 * The realtime socket: one WebSocket per client, its state machine, reconnects with
 * backoff, heartbeats, latency, request/reply matching by `ref`, and the browser's
 * online/offline events.
 *
 * States:
 * - `connecting`: the first attempt (after start, `connect()` or the `online` event);
 * - `connected`: the server's `welcome` arrived;
 * - `reconnecting`: the socket dropped or an attempt failed; the next attempt is scheduled
 *   with exponential backoff and full jitter (`nextRetryAt`);
 * - `offline`: no attempts: the browser reported `offline`, or `disconnect()` was called;
 * - `error`: the server refused the credentials (an `auth` frame answered `unauthorized`)
 *   or `WebSocket` could not be constructed; no automatic retry until `setToken()` or
 *   `connect()`.
 */
import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { LivebaseError, toLivebaseError } from './errors.js';
import { decodeServerFrame } from './frames.js';
import { DEFAULT_QUALITY_THRESHOLDS, gradeLatency, type ConnectionQuality, type QualityThresholds } from './quality.js';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'error';

export interface ConnectionStatus {
  readonly state: ConnectionState;
  /** Mean of the last five `ping` round trips, in milliseconds (null before the first). */
  readonly latencyMs: number | null;
  /** Grade of `latencyMs` (see {@link QualityThresholds}); null until measured. */
  readonly quality: ConnectionQuality | null;
  /** Failed attempts since the last successful connection. */
  readonly attempt: number;
  /** When the next attempt starts (epoch ms), while `reconnecting`. */
  readonly nextRetryAt: number | null;
  /** The server's name for this connection (`welcome.conn_id`). */
  readonly connId: string | null;
  /** The last connection error, kept until the next successful connection. */
  readonly error: LivebaseError | null;
  readonly lastConnectedAt: number | null;
}

/** The part of the WebSocket API the SDK uses: browsers' and the `ws` package's both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface HeartbeatOptions {
  /** How often the client sends `ping` (also the latency sample rate). Default 15 000 ms. */
  intervalMs?: number;
  /** A `pong` missing for this long means the connection is dead: reconnect. Default 10 000 ms. */
  timeoutMs?: number;
}

export interface ConnectionOptions {
  url: string;
  WebSocket: WebSocketConstructor | undefined;
  getToken: () => Promise<string | undefined>;
  backoff?: BackoffOptions;
  heartbeat?: HeartbeatOptions;
  /** No `welcome` within this long after opening a socket: give up on the attempt. Default 10 000 ms. */
  connectTimeoutMs?: number;
  /** A request (`subscribe`, `join`, ...) without a reply for this long fails. Default 15 000 ms. */
  requestTimeoutMs?: number;
  quality?: QualityThresholds;
  /** Follow the browser's `online` / `offline` events (when the environment has them). Default true. */
  watchNetwork?: boolean;
}

/**
 * Any frame from the server, as decoded (see `frames.ts` for the known shapes: narrow with
 * `type`).
 */
export interface ServerFrame {
  type: string;
  ref?: unknown;
  [k: string]: unknown;
}

interface Pending {
  callback: (err: LivebaseError | null, reply: ServerFrame | null) => void;
  timer: ReturnType<typeof setTimeout>;
}

export interface ConnectionEvents {
  status: ConnectionStatus;
  /** A `welcome` arrived: the socket is usable; subscriptions and channels restore themselves. */
  open: ServerFrame;
  /** The socket is gone (dropped, closed, timed out). */
  close: { code: number; reason: string };
  /** Every frame that is not the reply to a pending request. */
  frame: ServerFrame;
}

const REPLY_TYPES = new Set(['ok', 'error', 'subscribed', 'pong', 'resync_required']);
const OPEN = 1;

export class Connection extends Emitter<ConnectionEvents> {
  private ws: WebSocketLike | null = null;
  private readonly backoff: Backoff;
  private status: ConnectionStatus = {
    state: 'offline',
    latencyMs: null,
    quality: null,
    attempt: 0,
    nextRetryAt: null,
    connId: null,
    error: null,
    lastConnectedAt: null,
  };
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private nextRef = 1;
  private pending = new Map<number, Pending>();
  private samples: number[] = [];
  /** Why we are not trying: a manual disconnect or the network being down. */
  private paused: 'manual' | 'network' | 'auth' | null = 'manual';
  private closed = false;
  private everConnected = false;
  private serverTimeoutMs = 45_000;
  private readonly detachNetwork: () => void;
  private attemptId = 0;

  constructor(private readonly options: ConnectionOptions) {
    super();
    this.backoff = new Backoff(options.backoff);
    this.detachNetwork = options.watchNetwork === false ? () => {} : this.watchNetwork();
  }

  getStatus(): ConnectionStatus {
    return this.status;
  }

  get connected(): boolean {
    return this.status.state === 'connected';
  }

  /** Starts (or resumes) connecting. */
  connect(): void {
    if (this.closed) return;
    if (this.paused === 'network' && !isBrowserOnline()) {
      this.setStatus({ state: 'offline' });
      return;
    }
    this.paused = null;
    if (this.ws || this.retryTimer) return;
    this.backoff.reset();
    this.attempt(false);
  }

  /** Closes the socket and stays `offline` until `connect()`. */
  disconnect(): void {
    this.paused = 'manual';
    this.teardown(1000, 'client disconnect');
    this.setStatus({ state: 'offline', nextRetryAt: null, connId: null });
  }

  /** Goes `offline` at once (as on the browser's `offline` event); `goOnline()` reconnects. */
  goOffline(): void {
    if (this.closed) return;
    this.paused = 'network';
    this.teardown(1000, 'offline');
    this.setStatus({ state: 'offline', nextRetryAt: null, connId: null });
  }

  /** Reconnects at once with a fresh backoff (as on the browser's `online` event). */
  goOnline(): void {
    if (this.closed || this.paused === 'manual') return;
    this.paused = null;
    this.clearRetry();
    if (this.ws) return;
    this.backoff.reset();
    this.attempt(false);
  }

  /** Drops the current socket (if any) and connects again at once, e.g. to change identity. */
  restart(): void {
    if (this.closed || this.paused === 'manual' || this.paused === 'network') return;
    this.paused = null;
    this.teardown(1000, 'restart');
    this.backoff.reset();
    void this.attempt(this.everConnected);
  }

  /** Ends everything: no more attempts, listeners kept but never called again. */
  close(): void {
    this.closed = true;
    this.paused = 'manual';
    this.detachNetwork();
    this.teardown(1000, 'client closed');
    this.setStatus({ state: 'offline', nextRetryAt: null, connId: null });
  }

  /** Sends a frame when connected; returns false otherwise. */
  send(frame: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (!ws || !this.connected || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends a request with a fresh `ref` and resolves with its reply (`ok`, `subscribed`,
   * `pong`, `resync_required`); an `error` reply rejects with its code.
   */
  request(frame: Record<string, unknown>, timeoutMs?: number): Promise<ServerFrame> {
    return new Promise<ServerFrame>((resolve, reject) => {
      this.requestWith(frame, (err, reply) => (err ? reject(err) : resolve(reply!)), timeoutMs);
    });
  }

  /**
   * Like `request`, but the callback runs synchronously when the reply is read, before
   * any later frame is handled (a `subscribed` reply and the snapshot frames behind it
   * can arrive in one read, and the snapshot must find the subscription registered).
   */
  requestWith(
    frame: Record<string, unknown>,
    callback: (err: LivebaseError | null, reply: ServerFrame | null) => void,
    timeoutMs = this.options.requestTimeoutMs ?? 15_000,
  ): void {
    const ref = this.nextRef++;
    const fail = (err: LivebaseError) => callback(err, null);
    if (!this.connected) {
      fail(new LivebaseError('not_connected', `cannot send '${String(frame.type)}': not connected`));
      return;
    }
    const timer = setTimeout(() => {
      this.pending.delete(ref);
      fail(new LivebaseError('timeout', `no reply to '${String(frame.type)}' within ${timeoutMs} ms`));
    }, timeoutMs);
    this.pending.set(ref, { callback, timer });
    if (!this.send({ ...frame, ref })) {
      clearTimeout(timer);
      this.pending.delete(ref);
      fail(new LivebaseError('not_connected', `cannot send '${String(frame.type)}': not connected`));
    }
  }

  /** Measures one round trip now; also feeds the latency figure. */
  async ping(): Promise<number> {
    const started = now();
    await this.request({ type: 'ping' }, this.options.heartbeat?.timeoutMs ?? 10_000);
    const rtt = now() - started;
    this.recordLatency(rtt);
    return rtt;
  }

  /** Sends the new token on the open socket (`auth` frame). Resolves when accepted. */
  async authenticate(token: string): Promise<void> {
    if (this.status.state === 'error' && this.paused === 'auth') {
      // The old credentials were refused: try again from scratch with the new ones.
      this.paused = null;
      this.setStatus({ state: 'offline', error: null });
      this.connect();
      return;
    }
    if (!this.connected) return; // the next connection sends it in the URL
    try {
      await this.request({ type: 'auth', token });
    } catch (e) {
      const err = toLivebaseError(e);
      if (err.code === 'unauthorized' || err.code === 'forbidden') {
        this.paused = 'auth';
        this.teardown(1000, 'unauthorized');
        this.setStatus({ state: 'error', error: err, nextRetryAt: null, connId: null });
      }
      throw err;
    }
  }

  // ---------------------------------------------------------------------------------------

  private setStatus(patch: Partial<ConnectionStatus>): void {
    const next = { ...this.status, ...patch };
    const s = this.status;
    if (
      next.state === s.state &&
      next.latencyMs === s.latencyMs &&
      next.quality === s.quality &&
      next.attempt === s.attempt &&
      next.nextRetryAt === s.nextRetryAt &&
      next.connId === s.connId &&
      next.error === s.error &&
      next.lastConnectedAt === s.lastConnectedAt
    ) {
      return;
    }
    this.status = Object.freeze(next);
    this.emit('status', this.status);
  }

  private async attempt(isRetry: boolean): Promise<void> {
    this.retryTimer = null;
    if (this.closed || this.paused) return;
    const id = ++this.attemptId;
    this.setStatus({
      state: this.everConnected || isRetry ? 'reconnecting' : 'connecting',
      nextRetryAt: null,
    });
    let token: string | undefined;
    try {
      token = await this.options.getToken();
    } catch (e) {
      if (id !== this.attemptId) return;
      this.fail(new LivebaseError('token_error', `the token provider failed: ${toLivebaseError(e).message}`));
      return;
    }
    if (id !== this.attemptId || this.closed || this.paused) return;
    const Ctor = this.options.WebSocket;
    if (!Ctor) {
      this.paused = 'auth';
      this.setStatus({
        state: 'error',
        error: new LivebaseError(
          'no_websocket',
          'no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package) in the client options',
        ),
      });
      return;
    }
    const url = token ? `${this.options.url}${this.options.url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : this.options.url;
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (e) {
      this.paused = 'auth';
      this.setStatus({ state: 'error', error: new LivebaseError('bad_url', toLivebaseError(e).message) });
      return;
    }
    this.ws = ws;
    this.connectTimer = setTimeout(() => {
      if (this.ws === ws) this.dropSocket(ws, 4000, 'connect timeout', new LivebaseError('timeout', 'no welcome from the server in time'));
    }, this.options.connectTimeoutMs ?? 10_000);
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      if (ev.code === 4003) {
        // The server refused the token given at connect (its error frame came first):
        // retrying with the same credentials cannot help. `setToken` starts again.
        this.paused = 'auth';
        const code = ev.reason || 'invalid_token';
        this.dropSocket(ws, ev.code, ev.reason, new LivebaseError(code, `the server refused the token (${code})`));
        this.setStatus({ error: new LivebaseError(code, `the server refused the token (${code})`) });
        return;
      }
      this.dropSocket(ws, ev.code, ev.reason, ev.code === 1000 ? null : new LivebaseError('disconnected', `connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`));
    };
    ws.onerror = () => {
      // A close event follows; some implementations skip it when the handshake fails.
      if (this.ws !== ws) return;
      if (ws.readyState !== OPEN) this.dropSocket(ws, 1006, 'error', new LivebaseError('network_error', 'could not connect'));
    };
  }

  private onMessage(data: unknown): void {
    let text: string;
    try {
      text = typeof data === 'string' ? data : new TextDecoder().decode(data as ArrayBuffer);
    } catch {
      return;
    }
    const frame: ServerFrame | null = decodeServerFrame(text);
    if (!frame) return;
    if (frame.type === 'welcome') {
      this.onWelcome(frame);
      return;
    }
    if (REPLY_TYPES.has(frame.type) && typeof frame.ref === 'number') {
      const p = this.pending.get(frame.ref);
      if (p) {
        this.pending.delete(frame.ref);
        clearTimeout(p.timer);
        try {
          if (frame.type === 'error') {
            p.callback(new LivebaseError(String(frame.code ?? 'error'), String(frame.message ?? 'request failed'), 0, frame), null);
          } else {
            p.callback(null, frame);
          }
        } catch (err) {
          queueMicrotask(() => {
            throw err;
          });
        }
        return;
      }
    }
    this.emit('frame', frame);
  }

  private onWelcome(frame: ServerFrame): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    this.everConnected = true;
    this.backoff.reset();
    if (typeof frame.timeout_ms === 'number') this.serverTimeoutMs = frame.timeout_ms;
    this.setStatus({
      state: 'connected',
      attempt: 0,
      nextRetryAt: null,
      connId: typeof frame.conn_id === 'string' ? frame.conn_id : null,
      error: null,
      lastConnectedAt: Date.now(),
    });
    this.emit('open', frame);
    this.scheduleHeartbeat(0);
  }

  /** The first ping goes out right away (a latency figure at once), then every interval. */
  private scheduleHeartbeat(delay: number): void {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    const ws = this.ws;
    if (!ws) return;
    this.heartbeatTimer = setTimeout(() => {
      if (this.ws !== ws || !this.connected) return;
      const timeout = this.options.heartbeat?.timeoutMs ?? 10_000;
      this.ping().then(
        () => {
          if (this.ws === ws) this.scheduleHeartbeat(this.heartbeatInterval());
        },
        (e: LivebaseError) => {
          if (this.ws !== ws) return;
          if (e.code === 'timeout') {
            this.dropSocket(ws, 4002, 'pong timeout', new LivebaseError('timeout', `no pong within ${timeout} ms`));
          }
        },
      );
    }, delay);
  }

  private heartbeatInterval(): number {
    const wanted = this.options.heartbeat?.intervalMs ?? 15_000;
    // Stay well inside the server's silence timeout even if nothing else is sent.
    return Math.max(10, Math.min(wanted, Math.floor(this.serverTimeoutMs / 3)));
  }

  private recordLatency(rtt: number): void {
    this.samples.push(rtt);
    if (this.samples.length > 5) this.samples.shift();
    const mean = Math.round(this.samples.reduce((a, b) => a + b, 0) / this.samples.length);
    this.setStatus({ latencyMs: mean, quality: gradeLatency(mean, this.options.quality ?? DEFAULT_QUALITY_THRESHOLDS) });
  }

  private fail(err: LivebaseError): void {
    this.scheduleRetry(err);
  }

  /** The socket is gone (or judged dead): clean up and schedule the next attempt. */
  private dropSocket(ws: WebSocketLike, code: number, reason: string, err: LivebaseError | null): void {
    if (this.ws !== ws) return;
    this.teardown(1000, reason, code);
    if (this.closed || this.paused) {
      this.setStatus({ state: this.paused === 'auth' ? 'error' : 'offline', nextRetryAt: null, connId: null });
      return;
    }
    this.scheduleRetry(err);
  }

  private scheduleRetry(err: LivebaseError | null): void {
    if (this.closed || this.paused) return;
    this.clearRetry();
    const delay = this.backoff.next();
    this.setStatus({
      state: 'reconnecting',
      connId: null,
      attempt: this.backoff.attempt,
      nextRetryAt: Date.now() + delay,
      error: err ?? this.status.error,
    });
    this.retryTimer = setTimeout(() => void this.attempt(true), delay);
  }

  private clearRetry(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** Closes the socket (if any) without waiting for the close handshake; fails pending requests. */
  private teardown(code: number, reason: string, reportedCode = code): void {
    this.attemptId++;
    this.clearRetry();
    if (this.connectTimer) clearTimeout(this.connectTimer);
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.connectTimer = null;
    this.heartbeatTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = () => {};
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.callback(new LivebaseError('not_connected', 'the connection closed before the reply'), null);
    }
    if (ws) this.emit('close', { code: reportedCode, reason });
  }

  private watchNetwork(): () => void {
    const g = globalThis as unknown as {
      addEventListener?: (t: string, f: () => void) => void;
      removeEventListener?: (t: string, f: () => void) => void;
    };
    if (typeof g.addEventListener !== 'function' || typeof g.removeEventListener !== 'function') return () => {};
    const off = () => this.goOffline();
    const on = () => this.goOnline();
    g.addEventListener('offline', off);
    g.addEventListener('online', on);
    if (!isBrowserOnline()) this.paused = 'network';
    return () => {
      g.removeEventListener?.('offline', off);
      g.removeEventListener?.('online', on);
    };
  }
}

function isBrowserOnline(): boolean {
  const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
  return nav?.onLine !== false;
}

function now(): number {
  const p = (globalThis as { performance?: { now(): number } }).performance;
  return p ? p.now() : Date.now();
}
