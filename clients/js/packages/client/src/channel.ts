/**
 * Channels: broadcast (ephemeral messages between clients) and presence (who is here).
 *
 * A channel is joined on the server while something uses it: an explicit `join()`, a
 * handler registered with `on()` / `onPresence()` / `onMembers()`, or a `track()`. Each of
 * those holds one reference, released by `leave()`, by the function the registration
 * returned, or by `untrack()`. After a reconnect the channel is joined again and the
 * tracked meta sent again; members that came or went in between are reported as joins and
 * leaves.
 */
import type { Connection, ServerFrame } from './connection.js';
import { Emitter } from './emitter.js';
import { LivebaseError, toLivebaseError } from './errors.js';
import { retryDelay } from './subscriptions.js';

export interface PresenceMember<M = Record<string, unknown>> {
  /** The presence key (`track(meta, { key })`, default: the connection id). */
  key: string;
  /** The server connection holding the entry (one key may have several: a user with two tabs). */
  conn_id: string;
  meta: M;
}

export type PresenceEvent<M = Record<string, unknown>> =
  | { type: 'join'; member: PresenceMember<M> }
  | { type: 'leave'; member: PresenceMember<M> };

export interface BroadcastMessage<P = unknown> {
  event: string;
  payload: P;
  /** The sender's connection id. */
  from: string;
}

export interface SendOptions {
  /** Also deliver to this client's own handlers (server echo). Default false. */
  self?: boolean;
  /** Wait for the server's `ok`. Default false. */
  ack?: boolean;
}

interface ChannelEvents {
  members: readonly PresenceMember[];
  presence: PresenceEvent;
}

type RawEntry = { conn_id: string; meta: unknown };

export class Channel<M = Record<string, unknown>> {
  private refs = 0;
  private joined = false;
  private joining: Promise<void> | null = null;
  private joinGen = 0;
  private tracked: { meta: M; key?: string } | null = null;
  private state = new Map<string, PresenceMember<M>>(); // `${key}\u0000${conn_id}` → member
  private membersSnapshot: readonly PresenceMember<M>[] = Object.freeze([]);
  private handlers = new Map<string, Set<(m: BroadcastMessage) => void>>();
  private events = new Emitter<ChannelEvents>();

  private leaveTimer: ReturnType<typeof setTimeout> | null = null;

  /** `lingerMs`: how long the server membership outlives the last reference (a remount keeps it). */
  constructor(
    readonly name: string,
    private readonly conn: Connection,
    private readonly lingerMs = 0,
  ) {}

  /** The members present, sorted by key then connection. Stable until the next change. */
  get members(): readonly PresenceMember<M>[] {
    return this.membersSnapshot;
  }

  getMembers = (): readonly PresenceMember<M>[] => this.membersSnapshot;

  /** Joins (holding one reference); resolves once the server confirmed, or at once if offline. */
  join(): Promise<void> {
    this.refs++;
    return this.ensureJoined();
  }

  /** Releases one reference; the server membership ends with the last one (after the linger delay). */
  async leave(): Promise<void> {
    if (this.refs === 0) return;
    this.refs--;
    if (this.refs > 0) return;
    if (this.lingerMs <= 0) return this.leaveNow();
    if (this.leaveTimer) clearTimeout(this.leaveTimer);
    this.leaveTimer = setTimeout(() => {
      this.leaveTimer = null;
      if (this.refs === 0) void this.leaveNow();
    }, this.lingerMs);
  }

  private async leaveNow(): Promise<void> {
    this.tracked = null;
    const wasJoined = this.joined || this.joining !== null;
    this.joined = false;
    this.joining = null;
    this.joinGen++;
    this.setState(new Map(), false);
    if (wasJoined && this.conn.connected) {
      await this.conn.request({ type: 'leave', channel: this.name }).catch(() => {});
    }
  }

  /** Publishes this client's presence on the channel (joins if needed). Tracking again replaces the meta. */
  async track(meta: M, opts: { key?: string } = {}): Promise<void> {
    if (!this.tracked) this.refs++;
    this.tracked = { meta, ...(opts.key !== undefined ? { key: opts.key } : {}) };
    await this.ensureJoined();
    if (this.joined && this.conn.connected) await this.sendTrack();
  }

  /** Withdraws this client's presence (and the reference `track` held). */
  async untrack(): Promise<void> {
    if (!this.tracked) return;
    this.tracked = null;
    if (this.joined && this.conn.connected) {
      await this.conn.request({ type: 'presence_untrack', channel: this.name }).catch(() => {});
    }
    await this.leave();
  }

  /** Sends a broadcast to the channel's members. Needs the channel joined and the connection up. */
  async send(event: string, payload: unknown, opts: SendOptions = {}): Promise<void> {
    if (this.refs === 0) throw new LivebaseError('not_joined', `join channel '${this.name}' before sending`);
    if (this.joining) await this.joining;
    const frame: Record<string, unknown> = { type: 'broadcast', channel: this.name, event, payload };
    if (opts.self) frame.self = true;
    if (opts.ack) {
      frame.ack = true;
      await this.conn.request(frame);
      return;
    }
    if (!this.conn.send(frame)) throw new LivebaseError('not_connected', `cannot broadcast on '${this.name}': not connected`);
  }

  /** Handles broadcasts of `event` (`'*'` for every event). Joins; the returned function releases. */
  on<P = unknown>(event: string, handler: (payload: P, message: BroadcastMessage<P>) => void): () => void {
    const wrapped = (m: BroadcastMessage) => handler(m.payload as P, m as BroadcastMessage<P>);
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(wrapped);
    return this.hold(() => set.delete(wrapped));
  }

  /** Called for every member that joins or leaves. Joins; the returned function releases. */
  onPresence(handler: (e: PresenceEvent<M>) => void): () => void {
    const off = this.events.on('presence', handler as (e: PresenceEvent) => void);
    return this.hold(off);
  }

  /** Called with the full member list after every change. Joins; the returned function releases. */
  onMembers(handler: (members: readonly PresenceMember<M>[]) => void): () => void {
    const off = this.events.on('members', handler as (m: readonly PresenceMember[]) => void);
    return this.hold(off);
  }

  /** For external stores: listens to member changes without joining. */
  subscribeMembers = (listener: () => void): (() => void) => this.events.on('members', () => listener());

  private hold(release: () => void): () => void {
    this.refs++;
    void this.ensureJoined().catch(() => {});
    let done = false;
    return () => {
      if (done) return;
      done = true;
      release();
      void this.leave();
    };
  }

  private ensureJoined(): Promise<void> {
    if (this.leaveTimer) {
      clearTimeout(this.leaveTimer);
      this.leaveTimer = null;
    }
    if (this.joined) return Promise.resolve();
    if (this.joining) return this.joining;
    if (!this.conn.connected) return Promise.resolve(); // joined on the next welcome
    const gen = ++this.joinGen;
    const p = this.conn
      .request({ type: 'join', channel: this.name })
      .then(async () => {
        if (gen !== this.joinGen) return;
        this.joined = true;
        this.joining = null;
        if (this.tracked) await this.sendTrack();
      })
      .catch((e: unknown) => {
        if (gen !== this.joinGen) return;
        this.joining = null;
        const err = toLivebaseError(e);
        if (err.code === 'not_connected') return; // joined on the next welcome
        if (err.code === 'rate_limited' || err.code === 'timeout') {
          // Ask again shortly (the join is still wanted while references are held).
          return new Promise<void>((resolve) => setTimeout(resolve, retryDelay(err))).then(() =>
            this.refs > 0 && gen === this.joinGen ? this.ensureJoined() : undefined,
          );
        }
        throw err;
      });
    this.joining = p;
    return p;
  }

  private async sendTrack(): Promise<void> {
    const t = this.tracked;
    if (!t) return;
    const frame: Record<string, unknown> = { type: 'presence_track', channel: this.name, meta: t.meta ?? {} };
    if (t.key !== undefined) frame.key = t.key;
    await this.conn.request(frame).catch((e: unknown) => {
      const err = toLivebaseError(e);
      if (err.code !== 'not_connected') throw err;
    });
  }

  // ------------------------------------------------------------------- from the client

  /** A new connection: join again if still used. */
  onOpen(): void {
    this.joined = false;
    this.joining = null;
    this.joinGen++;
    if (this.refs > 0) void this.ensureJoined().catch(() => {});
  }

  onClose(): void {
    this.joined = false;
    this.joining = null;
    this.joinGen++;
  }

  onFrame(f: ServerFrame): void {
    switch (f.type) {
      case 'broadcast': {
        const msg: BroadcastMessage = { event: String(f.event), payload: f.payload, from: String(f.from ?? '') };
        for (const key of [msg.event, '*']) {
          for (const h of [...(this.handlers.get(key) ?? [])]) {
            try {
              h(msg);
            } catch (err) {
              queueMicrotask(() => {
                throw err;
              });
            }
          }
        }
        break;
      }
      case 'presence_state': {
        const next = new Map<string, PresenceMember<M>>();
        for (const [key, list] of Object.entries((f.state ?? {}) as Record<string, RawEntry[]>)) {
          for (const en of list ?? []) {
            next.set(`${key}\u0000${en.conn_id}`, { key, conn_id: en.conn_id, meta: (en.meta ?? {}) as M });
          }
        }
        this.setState(next, true);
        break;
      }
      case 'presence_diff': {
        const next = new Map(this.state);
        for (const [key, list] of Object.entries((f.leaves ?? {}) as Record<string, RawEntry[]>)) {
          for (const en of list ?? []) next.delete(`${key}\u0000${en.conn_id}`);
        }
        for (const [key, list] of Object.entries((f.joins ?? {}) as Record<string, RawEntry[]>)) {
          for (const en of list ?? []) {
            next.set(`${key}\u0000${en.conn_id}`, { key, conn_id: en.conn_id, meta: (en.meta ?? {}) as M });
          }
        }
        this.setState(next, true);
        break;
      }
    }
  }

  /** Replaces the member map, reporting the difference as leaves then joins. */
  private setState(next: Map<string, PresenceMember<M>>, report: boolean): void {
    const prev = this.state;
    this.state = next;
    const leaves: PresenceMember<M>[] = [];
    const joins: PresenceMember<M>[] = [];
    for (const [k, m] of prev) {
      const n = next.get(k);
      if (!n) leaves.push(m);
      else if (JSON.stringify(n.meta) !== JSON.stringify(m.meta)) {
        leaves.push(m);
        joins.push(n);
      }
    }
    for (const [k, m] of next) if (!prev.has(k)) joins.push(m);
    if (leaves.length === 0 && joins.length === 0) return;
    this.membersSnapshot = Object.freeze(
      [...next.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.conn_id < b.conn_id ? -1 : a.conn_id > b.conn_id ? 1 : 0)),
    );
    if (report) {
      for (const member of leaves) this.events.emit('presence', { type: 'leave', member: member as PresenceMember });
      for (const member of joins) this.events.emit('presence', { type: 'join', member: member as PresenceMember });
    }
    this.events.emit('members', this.membersSnapshot as readonly PresenceMember[]);
  }
}
