/**
 * A live query: rows kept equal to the server's result for (collection, filter), with this
 * client's pending writes applied on top, sorted by `order` (default: by id, the server's
 * list order). It is an external store in the React sense: `subscribe(listener)` and
 * `getSnapshot()` (a new immutable snapshot only when something changed).
 */
import type { RecordCache } from './cache.js';
import { LivebaseError } from './errors.js';
import { recordComparator, type CompiledFilter, type OrderKey } from './filter.js';
import { project, type Projection } from './optimistic.js';
import type { MutationQueue } from './queue.js';
import type { EntryView, QueryEntry, SubscriptionHub } from './subscriptions.js';
import type { AnyRow, Row } from './types.js';

export type LiveStatus = 'loading' | 'ready' | 'error';

export interface LiveSnapshot<T extends object = Record<string, unknown>> {
  /** The rows, sorted. Pending writes included (optimistic). */
  readonly rows: readonly Row<T>[];
  /** `loading` until the first snapshot, `ready` after it, `error` if the server refused the query. */
  readonly status: LiveStatus;
  readonly error: LivebaseError | null;
  /** The rows may be behind the server: not (yet) subscribed on the current connection. */
  readonly stale: boolean;
  /** Ids of rows with writes not yet confirmed by the server. */
  readonly pendingIds: ReadonlySet<string>;
}

export class LiveQuery<T extends object = Record<string, unknown>> implements EntryView {
  private listeners = new Set<() => void>();
  private retained = 0;
  private entry: QueryEntry | null = null;
  private dirty: Set<string> | 'all' = 'all';
  /** The rows shown, by id (the same rows as the snapshot's sorted list). */
  private byId = new Map<string, AnyRow>();
  private scheduled = false;
  private snapshot: LiveSnapshot<T> = {
    rows: [],
    status: 'loading',
    error: null,
    stale: true,
    pendingIds: new Set(),
  };
  private readonly compare: (a: Record<string, unknown>, b: Record<string, unknown>) => number;

  constructor(
    private readonly hub: SubscriptionHub,
    private readonly queue: MutationQueue,
    private readonly cache: RecordCache,
    readonly collection: string,
    readonly filter: CompiledFilter,
    order: OrderKey[],
  ) {
    this.compare = recordComparator(order);
  }

  private activate(): void {
    if (this.entry) return;
    this.entry = this.hub.attachView(this.collection, this.filter, this);
    this.invalidate();
  }

  private deactivate(): void {
    if (!this.entry) return;
    this.hub.detachView(this.entry, this);
    this.entry = null;
  }

  /** Keeps the query subscribed without a listener, until `close()`. */
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

  getSnapshot = (): LiveSnapshot<T> => {
    if (this.dirty === 'all' || this.dirty.size > 0) this.recompute();
    return this.snapshot;
  };

  /** The rows right now. */
  get rows(): readonly Row<T>[] {
    return this.getSnapshot().rows;
  }

  /** Resolves with the rows once the first snapshot is in; rejects if the server refuses the query. */
  ready(timeoutMs = 30_000): Promise<readonly Row<T>[]> {
    const s = this.getSnapshot();
    if (s.status === 'ready') return Promise.resolve(s.rows);
    if (s.status === 'error') return Promise.reject(s.error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new LivebaseError('timeout', `live query on '${this.collection}' not ready after ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.subscribe(() => {
        const n = this.getSnapshot();
        if (n.status === 'loading') return;
        clearTimeout(timer);
        off();
        if (n.status === 'ready') resolve(n.rows);
        else reject(n.error);
      });
    });
  }

  /**
   * Something changed: these rows (server rows or pending writes), or without ids anything
   * (rows, status, staleness). Recomputed lazily; listeners are told in a microtask.
   */
  invalidate(ids?: Iterable<string>): void {
    if (ids === undefined) this.dirty = 'all';
    else if (this.dirty !== 'all') {
      for (const id of ids) this.dirty.add(id);
    }
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

  /** The row this query shows for `id` (server row with pending writes applied), or undefined. */
  private visible(id: string, proj: Projection): AnyRow | undefined {
    const server = this.entry?.rows.get(id);
    if (!proj.has(id)) return server;
    const p = proj.get(id);
    if (p === null || p === undefined) return undefined;
    return (this.filter.exact ? this.filter.matches(p) : server !== undefined) ? p : undefined;
  }

  private recompute(): void {
    const dirty = this.dirty;
    this.dirty = new Set();
    const e = this.entry;
    const pending = this.queue.pending(this.collection);
    const proj: Projection = pending.length
      ? project(pending, (id) => this.cache.row(this.collection, id) ?? e?.rows.get(id))
      : new Map();
    const prev = this.snapshot;
    let sorted = prev.rows as unknown as AnyRow[];
    let changed = false;
    if (dirty === 'all' || dirty.size > Math.max(64, this.byId.size >> 3)) {
      // Rebuild: a snapshot, a reconnect, or many rows at once.
      const next = new Map<string, AnyRow>();
      for (const [id, r] of e ? e.rows : []) if (!proj.has(id)) next.set(id, r);
      for (const id of proj.keys()) {
        const r = this.visible(id, proj);
        if (r) next.set(id, r);
      }
      const list = [...next.values()].sort(this.compare);
      changed = list.length !== sorted.length || list.some((r, i) => r !== sorted[i]);
      if (changed) sorted = list;
      this.byId = next;
    } else {
      // Move only the rows that changed: O(k log n) searches and one copy of the array.
      let copy: AnyRow[] | null = null;
      for (const id of dirty) {
        const before = this.byId.get(id);
        const after = this.visible(id, proj);
        if (before === after) continue;
        copy ??= sorted.slice();
        if (before) {
          let i = lowerBound(copy, before, this.compare);
          if (copy[i] !== before) i = copy.indexOf(before);
          if (i >= 0) copy.splice(i, 1);
          this.byId.delete(id);
        }
        if (after) {
          copy.splice(lowerBound(copy, after, this.compare), 0, after);
          this.byId.set(id, after);
        }
      }
      if (copy) {
        sorted = copy;
        changed = true;
      }
    }
    const pendingIds = new Set<string>();
    for (const id of proj.keys()) if (this.byId.has(id) || e?.rows.has(id)) pendingIds.add(id);
    const status: LiveStatus = e?.state === 'failed' ? 'error' : e?.ready ? 'ready' : 'loading';
    const error = e?.state === 'failed' ? e.error : null;
    const stale = !e || e.state !== 'active' || (e.live && !e.ready);
    const samePending = prev.pendingIds.size === pendingIds.size && [...pendingIds].every((id) => prev.pendingIds.has(id));
    if (!changed && samePending && prev.status === status && prev.error === error && prev.stale === stale) return;
    this.snapshot = Object.freeze({
      rows: changed ? (Object.freeze(sorted) as unknown as readonly Row<T>[]) : prev.rows,
      status,
      error,
      stale,
      pendingIds: samePending ? prev.pendingIds : pendingIds,
    });
  }
}

/** First index whose row sorts at or after `row`. */
function lowerBound(list: readonly AnyRow[], row: AnyRow, cmp: (a: AnyRow, b: AnyRow) => number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmp(list[mid]!, row) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
