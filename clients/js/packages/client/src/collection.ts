/** One collection: reads, live queries, raw change events and (queued, optimistic) writes. */
import { LiveAggregate, normalizeFn, type AggregateQuery, type AggregateRow } from './aggregate.js';
import type { ConflictStrategy } from './conflict.js';
import type { LivebaseError } from './errors.js';
import { compileFilter, filterToString, parseOrder, type FilterInput } from './filter.js';
import { LiveQuery } from './live.js';
import type { OpResult, WriteInput } from './queue.js';
import type { ClientInternals } from './client.js';
import type { AnyRow, ListResult, Patch, Row, SubscriptionEvent } from './types.js';

export interface ListOptions {
  /** Filter in the REST grammar: `"qty=gt.5&status=in.(open,late)"` or `{ qty: 'gt.5' }`. */
  filter?: FilterInput;
  /** `"qty.desc,title"` (modifiers asc, desc, nullsfirst, nullslast). */
  order?: string;
  limit?: number;
  offset?: number;
  /** The `next_cursor` of the previous page. */
  cursor?: string | null;
  /** Also return `total` (count=exact). */
  count?: boolean;
  select?: string | string[];
}

export interface LiveQueryOptions {
  filter?: FilterInput;
  /** Client-side sort of the rows; default `id` (the server's list order). */
  order?: string;
}

export interface WriteOptions {
  /** The conflict strategy for this write (instead of the client's). */
  conflict?: ConflictStrategy;
}

export interface UpdateOptions extends WriteOptions {
  /**
   * The version this write is based on (sent as `If-Match`). Default: the newest version
   * this client has seen (from live queries, reads and its own writes); none if it has
   * never seen the record (then the write is last-write-wins).
   */
  ifVersion?: number | null;
}

export type BatchOp<T extends object> =
  | { op: 'create'; id?: string; data: Patch<T> }
  | { op: 'update'; id: string; data: Patch<T>; ifVersion?: number | null }
  | { op: 'delete'; id: string; ifVersion?: number | null };

export interface BatchResult<T extends object> {
  op: 'create' | 'update' | 'delete';
  record: Row<T>;
}

/** The answer of a one-shot aggregate (`GET /api/collections/{c}/aggregate`). */
export interface AggregateResult<R extends object = Record<string, unknown>> {
  /** The change the values are current at. */
  seq: number;
  groups: R[];
}

export class Collection<T extends object = Record<string, unknown>> {
  constructor(
    readonly name: string,
    private readonly c: ClientInternals,
  ) {}

  private get path(): string {
    return `/api/collections/${encodeURIComponent(this.name)}`;
  }

  /** One page of records (`GET /api/collections/{c}/records`). */
  async list(opts: ListOptions = {}): Promise<ListResult<T>> {
    const parts: string[] = [];
    const f = filterToString(opts.filter);
    if (f) parts.push(f);
    if (opts.order) parts.push(`order=${encodeURIComponent(opts.order)}`);
    if (opts.limit !== undefined) parts.push(`limit=${opts.limit}`);
    if (opts.offset !== undefined) parts.push(`offset=${opts.offset}`);
    if (opts.cursor) parts.push(`cursor=${encodeURIComponent(opts.cursor)}`);
    if (opts.count) parts.push('count=exact');
    if (opts.select) parts.push(`select=${encodeURIComponent(Array.isArray(opts.select) ? opts.select.join(',') : opts.select)}`);
    const res = await this.c.rest.request<ListResult<T>>({ method: 'GET', path: `${this.path}/records`, query: parts.join('&') });
    if (!opts.select) for (const r of res.data.items) this.c.cache.acceptRow(this.name, r as AnyRow);
    return res.data;
  }

  /** Every page of a filtered list, following cursors (bounded by `max` rows, default 100 000). */
  async listAll(opts: Omit<ListOptions, 'cursor' | 'offset'> = {}, max = 100_000): Promise<Row<T>[]> {
    const out: Row<T>[] = [];
    let cursor: string | null = null;
    do {
      const page: ListResult<T> = await this.list({ ...opts, limit: opts.limit ?? 1000, cursor });
      out.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && out.length < max);
    return out;
  }

  /** One record (`GET /api/collections/{c}/records/{id}`). */
  async get(id: string): Promise<Row<T>> {
    const res = await this.c.rest.request<Row<T>>({ method: 'GET', path: `${this.path}/records/${encodeURIComponent(id)}` });
    this.c.cache.acceptRow(this.name, res.data as AnyRow);
    return res.data;
  }

  /**
   * A live query: the rows matching `filter`, kept equal to the server's, with pending
   * writes shown optimistically. Subscribed now; call `close()` when done. (`{ lazy: true }`
   * subscribes only while the store has listeners: what the React hooks use.)
   */
  live(query: LiveQueryOptions = {}, opts: { lazy?: boolean } = {}): LiveQuery<T> {
    const q = new LiveQuery<T>(this.c.hub, this.c.queue, this.c.cache, this.name, compileFilter(query.filter), parseOrder(query.order));
    return opts.lazy ? q : q.retain();
  }

  /**
   * A live aggregate: `fn` (`count`, `sum(f)`, `avg(f)`, `min(f)`, `max(f)`) over the rows
   * matching `filter` that the caller may see, grouped by `group` (zero, one or two
   * fields), kept current by the server and re-subscribed after reconnects. Groups are
   * sorted by their group fields. Subscribed now; call `close()` when done
   * (`{ lazy: true }`: only while the store has listeners, as the React hook uses it).
   *
   * ```ts
   * const kpi = client.collection('shipments').aggregate({ group: ['status'], fn: ['count', 'sum(weight_kg)'] });
   * kpi.subscribe(() => console.log(kpi.groups)); // [{ status: 'late', count: 2, 'sum(weight_kg)': 10.5 }, ...]
   * ```
   */
  aggregate<const G extends string = string, const F extends string = string>(
    query: AggregateQuery<G, F>,
    opts: { lazy?: boolean } = {},
  ): LiveAggregate<AggregateRow<T, G, F>> {
    const a = new LiveAggregate<AggregateRow<T, G, F>>(this.c.aggregates, this.name, compileFilter(query.filter), query.group ?? [], query.fn);
    return opts.lazy ? a : a.retain();
  }

  /**
   * The same numbers once, over REST (`GET /api/collections/{c}/aggregate`): `{ seq, groups }`.
   * A refused aggregate rejects with code `invalid_aggregate` (`details.field` names the field).
   */
  async aggregateOnce<const G extends string = string, const F extends string = string>(
    query: AggregateQuery<G, F>,
  ): Promise<AggregateResult<AggregateRow<T, G, F>>> {
    const parts: string[] = [];
    const f = filterToString(query.filter);
    if (f) parts.push(f);
    if (query.group?.length) parts.push(`group=${query.group.map(encodeURIComponent).join(',')}`);
    parts.push(`fn=${query.fn.map((x) => encodeURIComponent(normalizeFn(x))).join(',')}`);
    const res = await this.c.rest.request<AggregateResult<AggregateRow<T, G, F>>>({ method: 'GET', path: `${this.path}/aggregate`, query: parts.join('&') });
    return res.data;
  }

  /**
   * Raw change events of the collection (optionally filtered), resumed without gaps after
   * reconnects; a `resync` event says some were missed for good. Returns the unsubscribe.
   */
  subscribe(handler: (event: SubscriptionEvent<T>) => void, opts: { filter?: FilterInput } = {}): () => void {
    return this.c.hub.attachHandler(this.name, compileFilter(opts.filter), handler as (e: SubscriptionEvent) => void);
  }

  /**
   * Creates a record. Shown at once in matching live queries; resolves with the server's
   * record. The id is made on the client (so offline creates have one) unless given.
   *
   * Writes never need to be awaited: a failure is also reported through the client's
   * `error` event (and the optimistic rows roll back), so an ignored promise never
   * becomes an unhandled rejection.
   */
  create(data: Patch<T> & { id?: string }, opts: WriteOptions = {}): Promise<Row<T>> {
    return quiet(this.write([{ op: 'create', data: data as Record<string, unknown> }], false, opts.conflict).then((r) => r[0]!.record as unknown as Row<T>));
  }

  /** Updates fields of a record (a partial patch), optimistically. Resolves with the server's record. */
  update(id: string, patch: Patch<T>, opts: UpdateOptions = {}): Promise<Row<T>> {
    const w: WriteInput = { op: 'update', id, data: patch as Record<string, unknown> };
    if (opts.ifVersion !== undefined) w.ifVersion = opts.ifVersion;
    return quiet(this.write([w], false, opts.conflict).then((r) => r[0]!.record as unknown as Row<T>));
  }

  /**
   * Deletes a record, optimistically. Resolves with the deleted record, or null when it
   * was already gone (or a conflict kept it: see the `conflict` event).
   */
  delete(id: string, opts: UpdateOptions = {}): Promise<Row<T> | null> {
    const w: WriteInput = { op: 'delete', id };
    if (opts.ifVersion !== undefined) w.ifVersion = opts.ifVersion;
    return quiet(
      this.write([w], false, opts.conflict).then((r) => {
        const res = r[0];
        return res && res.op === 'delete' ? (res.record as unknown as Row<T>) : null;
      }),
    );
  }

  /** Several writes in one transaction (all or nothing), optimistically. */
  batch(ops: BatchOp<T>[], opts: WriteOptions = {}): Promise<BatchResult<T>[]> {
    const inputs: WriteInput[] = ops.map((o) => {
      const w: WriteInput = { op: o.op };
      if ('id' in o && o.id !== undefined) w.id = o.id;
      if ('data' in o) w.data = o.data as Record<string, unknown>;
      if ('ifVersion' in o && o.ifVersion !== undefined) w.ifVersion = o.ifVersion;
      return w;
    });
    return quiet(this.write(inputs, true, opts.conflict).then((r) => r as unknown as BatchResult<T>[]));
  }

  private write(inputs: WriteInput[], batch: boolean, strategy?: ConflictStrategy): Promise<OpResult[]> {
    try {
      return this.c.queue.enqueue(this.name, inputs, strategy ? { batch, strategy } : { batch });
    } catch (e) {
      return Promise.reject(e);
    }
  }
}

/** Marks a promise as handled (failures are reported through events too); awaiting it still throws. */
function quiet<R>(p: Promise<R>): Promise<R> {
  p.catch(() => {});
  return p;
}

export type { LivebaseError };
