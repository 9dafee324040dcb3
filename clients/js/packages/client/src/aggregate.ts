/**
 * Live aggregates: `count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)` over the rows of a
 * collection that match a filter, grouped by up to two fields, kept current by the server
 * (`subscribe` with `aggregate`, docs/protocol.md "Live aggregates").
 *
 * One server subscription per (collection, filter, group, fn) per connection, however many
 * stores want it (the server refuses a second one on the same connection). The first
 * `aggregate` frame (`full`) holds every group; later ones hold the groups a change moved
 * (replacing them) and the groups it emptied (`removed`). An aggregate resumes by value:
 * after any reconnect the entry subscribes again and the next `full` frame replaces what it
 * held (so does the `full` frame that follows an `auth` with a new identity).
 */
import type { Connection, ServerFrame } from './connection.js';
import { LivebaseError } from './errors.js';
import type { CompiledFilter, FilterInput } from './filter.js';
import { frameEpoch, type AggregateFrame, type SubscribeRequest } from './frames.js';
import type { LiveStatus } from './live.js';
import { retryDelay } from './subscriptions.js';

/** A group as the server renders it: its group fields, then one value per function. */
export type AggregateGroup = Record<string, unknown>;

/** What a function's value can be: numbers (count, sum, avg, min, max), text or datetime (min, max), null over no values. */
export type AggregateValue = number | string | null;

/**
 * A typed group row: the group fields (typed from the collection's `T` when it names them)
 * and one entry per function, keyed as written (`"sum(weight_kg)"`).
 */
export type AggregateRow<T extends object, G extends string, F extends string> = {
  readonly [K in G]: K extends keyof T ? T[K] | null : unknown;
} & {
  readonly [K in F]: K extends 'count' ? number : AggregateValue;
};

export interface AggregateQuery<G extends string = string, F extends string = string> {
  /** Filter in the REST grammar, as for lists and live queries. */
  filter?: FilterInput;
  /** Zero, one or two group fields. Without, there is exactly one group. */
  group?: readonly G[];
  /** At least one of `count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)`. */
  fn: readonly F[];
}

export interface AggregateSnapshot<R extends object = AggregateGroup> {
  /** Every group, sorted by its group-field values (nulls first, then numbers, then text). */
  readonly groups: readonly R[];
  /** The change the values are current at; null before the first values. */
  readonly seq: number | null;
  /** `loading` until the first values, `ready` after, `error` if the server refused the aggregate. */
  readonly status: LiveStatus;
  readonly error: LivebaseError | null;
  /** The values may be behind the server: not (yet) subscribed with fresh values on the current connection. */
  readonly stale: boolean;
}

/** Something that shows an aggregate entry's values: told when anything changed. */
interface AggregateView {
  invalidate(): void;
}

/** `sum( weight_kg )` → `sum(weight_kg)`: the label the server keys values by. */
export function normalizeFn(fn: string): string {
  return fn.replace(/\s+/g, '');
}

/** The identity of a group: its group-field values, in group order. */
export function groupKey(group: readonly string[], g: Readonly<Record<string, unknown>>): string {
  return JSON.stringify(group.map((f) => g[f] ?? null));
}

function rank(v: unknown): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'boolean') return 1;
  if (typeof v === 'number') return 2;
  if (typeof v === 'string') return 3;
  return 4;
}

function compareValues(a: unknown, b: unknown): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 1 || ra === 2) return Number(a) - Number(b);
  if (ra === 3) return (a as string) < (b as string) ? -1 : (a as string) > (b as string) ? 1 : 0;
  if (ra === 4) {
    const x = JSON.stringify(a);
    const y = JSON.stringify(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  return 0;
}

/** Orders groups by their group fields, field by field. */
export function compareGroups(group: readonly string[]): (a: AggregateGroup, b: AggregateGroup) => number {
  return (a, b) => {
    for (const f of group) {
      const c = compareValues(a[f], b[f]);
      if (c !== 0) return c;
    }
    return 0;
  };
}

type EntryState = 'idle' | 'subscribing' | 'active' | 'unsubscribing' | 'failed';

export class AggregateEntry {
  /** Groups by key (see {@link groupKey}), current at `seq`. */
  groups = new Map<string, AggregateGroup>();
  seq: number | null = null;
  /** The server epoch `seq` belongs to (from `subscribed`), sent back beside `since`. */
  epoch: string | null = null;
  /** A `full` frame arrived on the current subscription (deltas before it are not applied). */
  fresh = false;
  /** Values have been received at least once. */
  ready = false;
  subId: number | null = null;
  state: EntryState = 'idle';
  error: LivebaseError | null = null;
  readonly views = new Set<AggregateView>();
  gen = 0;
  lingerTimer: ReturnType<typeof setTimeout> | null = null;
  retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Bumped when the values change (stores rebuild their sorted list then). */
  version = 0;

  constructor(
    readonly key: string,
    readonly collection: string,
    readonly filter: CompiledFilter,
    readonly group: readonly string[],
    readonly fns: readonly string[],
  ) {}

  invalidateViews(): void {
    for (const v of this.views) v.invalidate();
  }

  /** Applies one `aggregate` frame; false when it was not for the current values. */
  apply(f: AggregateFrame): boolean {
    const groups = Array.isArray(f.groups) ? f.groups : [];
    const removed = Array.isArray(f.removed) ? f.removed : [];
    const seq = Number(f.seq);
    if (f.full) {
      this.groups = new Map(groups.map((g) => [groupKey(this.group, g), g]));
      this.fresh = true;
      this.ready = true;
    } else {
      // Deltas carry current values: one older than what we hold would move them back.
      if (!this.fresh || (this.seq !== null && seq < this.seq)) return false;
      for (const g of removed) this.groups.delete(groupKey(this.group, g));
      for (const g of groups) this.groups.set(groupKey(this.group, g), g);
    }
    this.seq = seq;
    this.version++;
    return true;
  }
}

export class AggregateHub {
  private entries = new Map<string, AggregateEntry>();
  private bySub = new Map<number, AggregateEntry>();

  constructor(
    private readonly conn: Connection,
    private readonly lingerMs = 1000,
  ) {
    conn.on('open', () => this.onOpen());
    conn.on('close', () => this.onClose());
    conn.on('frame', (f) => this.onFrame(f));
  }

  attach(collection: string, filter: CompiledFilter, group: readonly string[], fns: readonly string[], view: AggregateView): AggregateEntry {
    const key = JSON.stringify([collection, filter.key, group, fns]);
    let e = this.entries.get(key);
    if (!e) {
      e = new AggregateEntry(key, collection, filter, group, fns);
      this.entries.set(key, e);
    }
    if (e.lingerTimer) {
      clearTimeout(e.lingerTimer);
      e.lingerTimer = null;
    }
    e.views.add(view);
    this.start(e);
    return e;
  }

  detach(e: AggregateEntry, view: AggregateView): void {
    e.views.delete(view);
    if (e.views.size > 0 || e.lingerTimer) return;
    e.lingerTimer = setTimeout(() => {
      e.lingerTimer = null;
      if (e.views.size > 0) return;
      if (e.state === 'active') this.unsubscribe(e);
      else if (e.state === 'idle' || e.state === 'failed') this.drop(e);
      // subscribing: the reply handler sees it is unused; unsubscribing: already leaving
    }, this.lingerMs);
  }

  private drop(e: AggregateEntry): void {
    if (e.retryTimer) clearTimeout(e.retryTimer);
    e.retryTimer = null;
    if (this.entries.get(e.key) === e) this.entries.delete(e.key);
    if (e.subId !== null && this.bySub.get(e.subId) === e) this.bySub.delete(e.subId);
  }

  private start(e: AggregateEntry, resume = true): void {
    if (!this.conn.connected || e.views.size === 0) return;
    if (e.state !== 'idle' && e.state !== 'failed') return;
    e.state = 'subscribing';
    e.fresh = false;
    const gen = ++e.gen;
    const frame: SubscribeRequest = { type: 'subscribe', collection: e.collection, aggregate: { fn: [...e.fns] } };
    if (e.group.length) frame.aggregate!.group = [...e.group];
    if (e.filter.source) frame.filter = e.filter.source;
    // Resume by value: values current at or after what we hold.
    if (resume && e.seq !== null) {
      frame.since = e.seq;
      if (e.epoch !== null) frame.epoch = e.epoch;
    }
    this.conn.requestWith(frame as unknown as Record<string, unknown>, (err, reply) => {
      if (gen !== e.gen) return;
      if (err) this.onSubscribeError(e, err);
      else this.onSubscribed(e, reply!);
    });
  }

  private onSubscribed(e: AggregateEntry, reply: ServerFrame): void {
    if (reply.type === 'resync_required') {
      // The seq we held belongs to another epoch: ask for the current values afresh.
      e.state = 'idle';
      e.epoch = null;
      this.start(e, false);
      return;
    }
    const subId = Number(reply.sub_id);
    e.subId = subId;
    e.epoch = frameEpoch(reply);
    this.bySub.set(subId, e);
    e.state = 'active';
    e.error = null;
    e.invalidateViews();
    if (e.views.size === 0) this.unsubscribe(e);
  }

  private onSubscribeError(e: AggregateEntry, err: LivebaseError): void {
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
      // Our own earlier subscription is still registered: end it, start again.
      const stale = (err.details as { sub_id?: unknown } | undefined)?.sub_id;
      if (typeof stale === 'number') {
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
    e.invalidateViews();
  }

  private unsubscribe(e: AggregateEntry): void {
    const subId = e.subId;
    if (subId === null) return;
    e.subId = null;
    if (this.bySub.get(subId) === e) this.bySub.delete(subId);
    e.state = 'unsubscribing';
    e.fresh = false;
    const gen = ++e.gen;
    this.conn.requestWith({ type: 'unsubscribe', sub_id: subId }, () => {
      if (gen !== e.gen) return;
      e.state = 'idle';
      if (e.views.size > 0) this.start(e);
      else this.drop(e);
    });
  }

  private onOpen(): void {
    for (const e of [...this.entries.values()]) {
      if (e.views.size === 0) {
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
      e.fresh = false;
      if (e.retryTimer) clearTimeout(e.retryTimer);
      e.retryTimer = null;
      if (e.state !== 'failed') e.state = 'idle';
      if (e.views.size === 0) this.drop(e);
      else e.invalidateViews(); // now stale
    }
  }

  private onFrame(f: ServerFrame): void {
    if (f.type !== 'aggregate') return;
    const e = this.bySub.get(Number(f.sub_id));
    if (!e || e.state !== 'active') return;
    if (e.apply(f as unknown as AggregateFrame)) e.invalidateViews();
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

/**
 * A live aggregate as an external store (React's `useSyncExternalStore`): `subscribe` and
 * `getSnapshot` (a new immutable snapshot only when something changed), `retain`/`close`
 * to keep it subscribed without listeners, `ready()` for the first values.
 */
export class LiveAggregate<R extends object = AggregateGroup> implements AggregateView {
  private listeners = new Set<() => void>();
  private retained = 0;
  private entry: AggregateEntry | null = null;
  private scheduled = false;
  private seenEntry: AggregateEntry | null = null;
  private seenVersion = -1;
  private snapshot: AggregateSnapshot<R> = Object.freeze({ groups: Object.freeze([]) as readonly R[], seq: null, status: 'loading', error: null, stale: true });
  private readonly compare: (a: AggregateGroup, b: AggregateGroup) => number;
  readonly group: readonly string[];
  readonly fns: readonly string[];

  constructor(
    private readonly hub: AggregateHub,
    readonly collection: string,
    readonly filter: CompiledFilter,
    group: readonly string[],
    fns: readonly string[],
  ) {
    this.group = Object.freeze([...group]);
    this.fns = Object.freeze(fns.map(normalizeFn));
    this.compare = compareGroups(this.group);
  }

  private activate(): void {
    if (this.entry) return;
    this.entry = this.hub.attach(this.collection, this.filter, this.group, this.fns, this);
    this.invalidate();
  }

  private deactivate(): void {
    if (!this.entry) return;
    this.hub.detach(this.entry, this);
    this.entry = null;
  }

  /** Keeps the aggregate subscribed without a listener, until `close()`. */
  retain(): this {
    this.retained++;
    this.activate();
    return this;
  }

  /** Ends a `retain()` (and the subscription, when nothing else uses it). */
  close(): void {
    if (this.retained > 0) this.retained--;
    if (this.retained === 0 && this.listeners.size === 0) this.deactivate();
  }

  /** Registers a listener (called after changes, in a microtask); returns its removal. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    this.activate();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0 && this.retained === 0) this.deactivate();
    };
  };

  getSnapshot = (): AggregateSnapshot<R> => {
    this.recompute();
    return this.snapshot;
  };

  /** The groups right now. */
  get groups(): readonly R[] {
    return this.getSnapshot().groups;
  }

  /** Resolves with the groups once the first values are in; rejects if the server refuses the aggregate. */
  ready(timeoutMs = 30_000): Promise<readonly R[]> {
    return this.until((s) => s.status !== 'loading' && (s.status === 'error' || !s.stale), timeoutMs, 'not ready').then((s) => s.groups);
  }

  /**
   * Resolves with the first snapshot `check` accepts (tested now and after every change);
   * rejects when the aggregate fails or after `timeoutMs`.
   */
  until(check: (s: AggregateSnapshot<R>) => boolean, timeoutMs = 30_000, what = 'condition not met'): Promise<AggregateSnapshot<R>> {
    const s = this.getSnapshot();
    if (s.status === 'error') return Promise.reject(s.error);
    if (check(s)) return Promise.resolve(s);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new LivebaseError('timeout', `live aggregate on '${this.collection}': ${what} after ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.subscribe(() => {
        const n = this.getSnapshot();
        if (n.status === 'error') {
          clearTimeout(timer);
          off();
          reject(n.error);
        } else if (check(n)) {
          clearTimeout(timer);
          off();
          resolve(n);
        }
      });
    });
  }

  /** Something changed (values, status, staleness): listeners are told in a microtask. */
  invalidate(): void {
    if (this.scheduled || this.listeners.size === 0) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      for (const l of [...this.listeners]) {
        try {
          l();
        } catch (err) {
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    });
  }

  private recompute(): void {
    const e = this.entry;
    const prev = this.snapshot;
    let groups = prev.groups;
    if (e && (e !== this.seenEntry || e.version !== this.seenVersion)) {
      this.seenEntry = e;
      this.seenVersion = e.version;
      groups = Object.freeze([...e.groups.values()].sort(this.compare)) as unknown as readonly R[];
    }
    const seq = e ? e.seq : prev.seq;
    const status: LiveStatus = e?.state === 'failed' ? 'error' : e?.ready ? 'ready' : 'loading';
    const error = e?.state === 'failed' ? e.error : null;
    const stale = !e || e.state !== 'active' || !e.fresh;
    if (groups === prev.groups && seq === prev.seq && status === prev.status && error === prev.error && stale === prev.stale) return;
    this.snapshot = Object.freeze({ groups, seq, status, error, stale });
  }
}
