/**
 * Server subscriptions, multiplexed: one per (collection, filter) per connection, however
 * many live queries and handlers on the page want it (the server names a query, not a
 * connection's subscription, and refuses a second one on the same connection).
 *
 * An entry keeps, per query, the highest `seq` received; after any reconnect it subscribes
 * again with `since` so nothing is missed or repeated, and on `resync_required` it starts
 * over with a snapshot. Entries that back a live query keep the server's result rows: a
 * snapshot, then every change applied by its `view` (add / update / remove). An entry
 * nobody uses any more is unsubscribed after a short delay, so a component that unmounts
 * and mounts again (React StrictMode, route changes) keeps its subscription.
 */
import type { RecordCache } from './cache.js';
import type { Connection, ServerFrame } from './connection.js';
import { frameEpoch, type SubscribeRequest } from './frames.js';
import type { LivebaseError } from './errors.js';
import type { CompiledFilter } from './filter.js';
import type { AnyRow, ChangeEvent, SubscriptionEvent } from './types.js';

/** How long to wait before asking again: the server's `retry in N ms`, else a second. */
export function retryDelay(err: LivebaseError): number {
  const m = /retry in (\d+) ?ms/.exec(err.message);
  return m ? Math.min(30_000, Number(m[1]) + 50) : 1000;
}

export type EntryState = 'idle' | 'subscribing' | 'active' | 'unsubscribing' | 'failed';

/** Something that shows an entry's rows (a live query): told when they change. */
export interface EntryView {
  /** These rows changed (or, without ids, anything may have: rows, status, staleness). */
  invalidate(ids?: Iterable<string>): void;
}

export class QueryEntry {
  /** Server rows of the query's result (live entries). */
  rows = new Map<string, AnyRow>();
  /**
   * Versions this entry already shows thanks to our own confirmed writes (the REST answer
   * came before the change event): older events for these ids are stale and skipped.
   */
  floors = new Map<string, { version: number; deleted: boolean }>();
  /** A full snapshot has been applied since the entry last had to start over. */
  ready = false;
  /** Keeps result rows (a live query uses it); plain entries only pass events on. */
  live = false;
  lastSeq: number | null = null;
  /** The server epoch `lastSeq` belongs to (from `subscribed`), sent back beside `since`. */
  epoch: string | null = null;
  subId: number | null = null;
  state: EntryState = 'idle';
  error: LivebaseError | null = null;
  snapshotBuf: AnyRow[] | null = null;
  readonly handlers = new Set<(e: SubscriptionEvent) => void>();
  readonly views = new Set<EntryView>();
  /** Bumped whenever an in-flight request's answer must be ignored. */
  gen = 0;
  restartPending = false;
  lingerTimer: ReturnType<typeof setTimeout> | null = null;
  retryTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    readonly key: string,
    readonly collection: string,
    readonly filter: CompiledFilter,
  ) {}

  get used(): boolean {
    return this.handlers.size > 0 || this.views.size > 0;
  }

  emit(e: SubscriptionEvent): void {
    for (const h of [...this.handlers]) {
      try {
        h(e);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  invalidateViews(ids?: Iterable<string>): void {
    for (const v of this.views) v.invalidate(ids);
  }
}

export interface HubOptions {
  /** Wait this long after the last user leaves before unsubscribing. Default 1000 ms. */
  lingerMs?: number;
}

export class SubscriptionHub {
  private entries = new Map<string, QueryEntry>();
  private bySub = new Map<number, QueryEntry>();
  private readonly lingerMs: number;

  constructor(
    private readonly conn: Connection,
    private readonly cache: RecordCache,
    opts: HubOptions = {},
  ) {
    this.lingerMs = opts.lingerMs ?? 1000;
    conn.on('open', () => this.onOpen());
    conn.on('close', () => this.onClose());
    conn.on('frame', (f) => this.onFrame(f));
  }

  entriesOf(collection: string): QueryEntry[] {
    return [...this.entries.values()].filter((e) => e.collection === collection);
  }

  private entry(collection: string, filter: CompiledFilter): QueryEntry {
    const key = `${collection}\u0000${filter.key}`;
    let e = this.entries.get(key);
    if (!e) {
      e = new QueryEntry(key, collection, filter);
      this.entries.set(key, e);
    }
    if (e.lingerTimer) {
      clearTimeout(e.lingerTimer);
      e.lingerTimer = null;
    }
    return e;
  }

  attachView(collection: string, filter: CompiledFilter, view: EntryView): QueryEntry {
    const e = this.entry(collection, filter);
    e.views.add(view);
    if (!e.live) this.makeLive(e);
    this.start(e);
    return e;
  }

  detachView(e: QueryEntry, view: EntryView): void {
    e.views.delete(view);
    this.maybeRelease(e);
  }

  attachHandler(collection: string, filter: CompiledFilter, handler: (ev: SubscriptionEvent) => void): () => void {
    const e = this.entry(collection, filter);
    e.handlers.add(handler);
    const running = e.state === 'active' && e.lastSeq !== null;
    this.start(e);
    if (running) {
      // Joining a running subscription: it starts here for this handler.
      queueMicrotask(() => {
        if (e.handlers.has(handler)) handler({ type: 'subscribed', seq: e.lastSeq ?? 0, resumed: false });
      });
    }
    return () => {
      if (!e.handlers.delete(handler)) return;
      this.maybeRelease(e);
    };
  }

  /** A live query joined an entry that only passed events on: it needs a snapshot now. */
  private makeLive(e: QueryEntry): void {
    e.live = true;
    e.ready = false;
    if (e.lastSeq !== null && e.handlers.size > 0) {
      e.emit({ type: 'resync', reason: 'restarted_with_snapshot' });
    }
    e.lastSeq = null;
    if (e.state === 'active') void this.restart(e);
    else if (e.state === 'subscribing') e.restartPending = true;
  }

  private maybeRelease(e: QueryEntry): void {
    if (e.used || e.lingerTimer) return;
    e.lingerTimer = setTimeout(() => {
      e.lingerTimer = null;
      if (e.used) return;
      if (e.state === 'active') void this.unsubscribe(e);
      else if (e.state === 'idle' || e.state === 'failed') this.drop(e);
      // subscribing: the reply handler sees it is unused; unsubscribing: already leaving
    }, this.lingerMs);
  }

  private drop(e: QueryEntry): void {
    if (e.retryTimer) clearTimeout(e.retryTimer);
    e.retryTimer = null;
    if (this.entries.get(e.key) === e) this.entries.delete(e.key);
    if (e.subId !== null && this.bySub.get(e.subId) === e) this.bySub.delete(e.subId);
  }

  private start(e: QueryEntry): void {
    if (!this.conn.connected || !e.used) return;
    if (e.state !== 'idle' && e.state !== 'failed') return;
    e.state = 'subscribing';
    const gen = ++e.gen;
    const frame: SubscribeRequest = { type: 'subscribe', collection: e.collection };
    if (e.filter.source) frame.filter = e.filter.source;
    const resuming = e.lastSeq !== null && (!e.live || e.ready);
    if (resuming) {
      frame.since = e.lastSeq!;
      if (e.epoch !== null) frame.epoch = e.epoch;
    } else if (e.live) frame.snapshot = true;
    this.conn.requestWith(frame, (err, reply) => {
      if (err) this.onSubscribeError(e, gen, err);
      else this.onSubscribeReply(e, gen, reply!, resuming);
    });
  }

  private onSubscribeReply(e: QueryEntry, gen: number, reply: ServerFrame, resuming: boolean): void {
    if (gen !== e.gen) return;
    if (reply.type === 'resync_required') {
      // `log_trimmed`, `epoch_changed` (the server's seqs mean something else now) or a
      // reason added later: all alike, start over (a live query refetches its snapshot).
      e.state = 'idle';
      e.lastSeq = null;
      e.epoch = null;
      e.ready = false;
      e.emit({ type: 'resync', reason: String(reply.reason ?? 'resync_required') });
      this.start(e);
      return;
    }
    const subId = Number(reply.sub_id);
    const seq = Number(reply.seq);
    // The epoch the seqs that follow belong to (none from servers without epochs).
    e.epoch = frameEpoch(reply);
    e.subId = subId;
    this.bySub.set(subId, e);
    e.state = 'active';
    e.error = null;
    if (!e.live || resuming) {
      e.lastSeq = seq;
      e.snapshotBuf = null;
    } else {
      e.snapshotBuf = [];
    }
    e.emit({ type: 'subscribed', seq, resumed: resuming });
    e.invalidateViews();
    if (!e.used) {
      void this.unsubscribe(e);
    } else if (e.restartPending) {
      e.restartPending = false;
      void this.restart(e);
    }
  }

  private onSubscribeError(e: QueryEntry, gen: number, err: LivebaseError): void {
    if (gen !== e.gen) return;
    e.state = 'idle';
    if (err.code === 'not_connected') return; // starts again on the next welcome
    if (err.code === 'timeout' || err.code === 'rate_limited') {
      e.retryTimer = setTimeout(() => {
        e.retryTimer = null;
        this.start(e);
      }, retryDelay(err));
      return;
    }
    if (err.code === 'already_subscribed') {
      // Our own earlier subscription to the same query is still registered: end it, start again.
      const field = (err.details as { sub_id?: unknown } | undefined)?.sub_id;
      const m = typeof field === 'number' ? [String(field), String(field)] : /sub_id (\d+)/.exec(err.message);
      if (m) {
        const stale = Number(m[1]);
        e.state = 'unsubscribing';
        const g = ++e.gen;
        this.conn.requestWith({ type: 'unsubscribe', sub_id: stale }, (unsubErr) => {
          if (g !== e.gen) return;
          e.state = 'idle';
          if (!unsubErr) this.start(e);
        });
        return;
      }
    }
    e.state = 'failed';
    e.error = err;
    e.emit({ type: 'error', error: err });
    e.invalidateViews();
  }

  /** Ends the server subscription and starts a new one (a live query needs a snapshot). */
  private restart(e: QueryEntry): Promise<void> {
    return this.unsubscribe(e);
  }

  /** Ends the server subscription; starts again if the entry is still used, else forgets it. */
  private unsubscribe(e: QueryEntry): Promise<void> {
    const subId = e.subId;
    if (subId === null) return Promise.resolve();
    e.subId = null;
    if (this.bySub.get(subId) === e) this.bySub.delete(subId);
    e.state = 'unsubscribing';
    e.snapshotBuf = null;
    const gen = ++e.gen;
    return new Promise((resolve) => {
      // Errors mean it is gone already (not subscribed, or the connection dropped).
      this.conn.requestWith({ type: 'unsubscribe', sub_id: subId }, () => {
        resolve();
        if (gen !== e.gen) return;
        e.state = 'idle';
        if (e.used) this.start(e);
        else this.drop(e);
      });
    });
  }

  private onOpen(): void {
    for (const e of [...this.entries.values()]) {
      if (!e.used) {
        this.drop(e);
        continue;
      }
      if (e.state === 'failed') e.state = 'idle';
      this.start(e);
    }
  }

  private onClose(): void {
    this.bySub.clear();
    for (const e of [...this.entries.values()]) {
      e.gen++;
      e.subId = null;
      e.snapshotBuf = null;
      e.restartPending = false;
      if (e.retryTimer) clearTimeout(e.retryTimer);
      e.retryTimer = null;
      if (e.state !== 'failed') e.state = 'idle';
      if (e.live && !e.ready) e.lastSeq = null;
      if (!e.used) this.drop(e);
      else e.invalidateViews(); // now stale
    }
  }

  private onFrame(f: ServerFrame): void {
    if (f.type === 'change') {
      const e = this.bySub.get(Number(f.sub_id));
      if (!e || e.state !== 'active') return;
      const c = f as unknown as ChangeEvent;
      if (e.lastSeq !== null && c.seq <= e.lastSeq) return; // already have it
      if (e.snapshotBuf) return; // cannot happen: changes follow the last snapshot chunk
      e.lastSeq = c.seq;
      this.applyChange(e, c);
      e.emit(c);
    } else if (f.type === 'snapshot') {
      const e = this.bySub.get(Number(f.sub_id));
      if (!e || !e.snapshotBuf) return;
      const rows = Array.isArray(f.rows) ? (f.rows as AnyRow[]) : [];
      for (const r of rows) e.snapshotBuf.push(r);
      if (f.done === true) this.applySnapshot(e, Number(f.seq));
    }
  }

  private applyChange(e: QueryEntry, c: ChangeEvent): void {
    const col = e.collection;
    // The shared cache learns the newest version; each entry judges staleness by its own floors.
    if (c.op === 'delete') this.cache.acceptDelete(col, c.id, c.version);
    else if (c.new) this.cache.acceptRow(col, c.new as AnyRow, c.op === 'insert');
    if (!e.live || !e.ready) return;
    const f = e.floors.get(c.id);
    if (f) {
      const stale = c.view === 'remove' ? c.version < f.version : f.deleted ? c.version <= f.version : c.version < f.version;
      if (stale) return;
      e.floors.delete(c.id);
    }
    if (c.view === 'remove') e.rows.delete(c.id);
    else if (c.new) e.rows.set(c.id, c.new as AnyRow);
    e.invalidateViews([c.id]);
  }

  private applySnapshot(e: QueryEntry, seq: number): void {
    const col = e.collection;
    const rows = new Map<string, AnyRow>();
    for (const r of e.snapshotBuf ?? []) {
      this.cache.acceptRow(col, r);
      rows.set(r.id, r);
    }
    // Our confirmed writes newer than the snapshot stay visible until their events arrive.
    for (const [id, f] of e.floors) {
      const r = rows.get(id);
      if (r && r.version >= f.version && !f.deleted) {
        e.floors.delete(id);
        continue;
      }
      if (f.deleted) {
        if (!r || r.version <= f.version) rows.delete(id);
        continue;
      }
      const newer = this.cache.row(col, id);
      if (newer && newer.version >= f.version && e.filter.matches(newer)) rows.set(id, newer);
      else if (newer && newer.version >= f.version) rows.delete(id);
    }
    e.rows = rows;
    e.snapshotBuf = null;
    e.ready = true;
    e.lastSeq = seq;
    e.invalidateViews();
  }

  /** The server answered one of our writes: show its records in every live query now. */
  applyConfirmed(collection: string, changes: { id: string; row: AnyRow | null; version: number }[]): void {
    const entries = this.entriesOf(collection).filter((e) => e.live);
    if (entries.length === 0) return;
    for (const ch of changes) {
      for (const e of entries) {
        const cur = e.rows.get(ch.id);
        if (cur && cur.version > ch.version) continue;
        if (ch.row === null) {
          e.rows.delete(ch.id);
        } else if (e.filter.exact) {
          if (e.filter.matches(ch.row)) e.rows.set(ch.id, ch.row);
          else e.rows.delete(ch.id);
        } else if (cur) {
          e.rows.set(ch.id, ch.row);
        }
        e.floors.set(ch.id, { version: ch.version, deleted: ch.row === null });
        if (e.floors.size > 10_000) {
          // Floors whose events never come (rows that match neither before nor after): forget the oldest.
          const oldest = e.floors.keys().next().value;
          if (oldest !== undefined) e.floors.delete(oldest);
        }
      }
    }
    const ids = changes.map((c) => c.id);
    for (const e of entries) e.invalidateViews(ids);
  }

  close(): void {
    for (const e of this.entries.values()) {
      if (e.lingerTimer) clearTimeout(e.lingerTimer);
      if (e.retryTimer) clearTimeout(e.retryTimer);
    }
    this.entries.clear();
    this.bySub.clear();
  }
}
