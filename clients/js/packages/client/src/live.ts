/**
 * A live query: rows kept equal to the server's result for (collection, filter), with this
 * client's pending writes applied on top, sorted by `order` (default: by id, the server's
 * list order). It is an external store in the React sense: `subscribe(listener)` and
 * `getSnapshot()` (a new immutable snapshot only when something changed).
 */
import type { RecordCache } from './cache.js';
import { LivebaseError } from './errors.js';
import { recordComparator, type CompiledFilter, type OrderKey } from './filter.js';
import { project } from './optimistic.js';
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
  private dirty = true;
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
    if (this.dirty) this.recompute();
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

  /** Something changed (server rows, pending writes, connection): recompute lazily, tell listeners. */
  invalidate(): void {
    this.dirty = true;
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
    this.dirty = false;
    const e = this.entry;
    const rows = new Map<string, AnyRow>(e ? e.rows : []);
    const pending = this.queue.pending(this.collection);
    const pendingIds = new Set<string>();
    if (pending.length) {
      const proj = project(pending, (id) => this.cache.row(this.collection, id) ?? rows.get(id));
      for (const [id, row] of proj) {
        if (row === null) {
          if (rows.delete(id)) pendingIds.add(id);
        } else if (this.filter.exact ? this.filter.matches(row) : rows.has(id)) {
          rows.set(id, row);
          pendingIds.add(id);
        } else if (rows.delete(id)) {
          pendingIds.add(id);
        }
      }
    }
    const list = [...rows.values()].sort(this.compare) as unknown as Row<T>[];
    const status: LiveStatus = e?.state === 'failed' ? 'error' : e?.ready ? 'ready' : 'loading';
    const error = e?.state === 'failed' ? e.error : null;
    const stale = !e || e.state !== 'active' || (e.live && !e.ready);
    const prev = this.snapshot;
    const sameRows = prev.rows.length === list.length && list.every((r, i) => r === prev.rows[i]);
    const samePending = prev.pendingIds.size === pendingIds.size && [...pendingIds].every((id) => prev.pendingIds.has(id));
    if (sameRows && samePending && prev.status === status && prev.error === error && prev.stale === stale) return;
    this.snapshot = Object.freeze({
      rows: sameRows ? prev.rows : Object.freeze(list),
      status,
      error,
      stale,
      pendingIds: samePending ? prev.pendingIds : pendingIds,
    });
  }
}
