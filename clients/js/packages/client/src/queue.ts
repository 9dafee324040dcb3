/**
 * The outbox: every write goes through it, online or not.
 *
 * A write is stored (IndexedDB, file or memory) with its idempotency key *before* it is
 * sent, shown optimistically in every live query while it waits, and sent strictly in
 * order, one at a time, while the realtime connection is up. The server's answer settles
 * it: confirmed (the returned record lands in every live query at once), a conflict (the
 * strategy or `onConflict` decides, and the write is retried under a derived key), or a
 * failure (the write is dropped: the optimistic rows roll back and an error is reported).
 * Network failures and 5xx answers keep the write at the head of the queue and retry it
 * with the *same* key, so a write whose answer was lost is never applied twice.
 *
 * Writes to one record are chained: a write queued behind another write to the same record
 * takes its base version (`If-Match`) from the answer to that earlier write.
 */
import { Backoff, type BackoffOptions } from './backoff.js';
import type { RecordCache } from './cache.js';
import {
  resolveConflict,
  type ConflictHandler,
  type ConflictOutcome,
  type ConflictResolution,
  type ConflictStrategy,
} from './conflict.js';
import { Emitter } from './emitter.js';
import { LivebaseError, toLivebaseError } from './errors.js';
import { recordId, uuid } from './ids.js';
import type { RestClient } from './rest.js';
import type { QueueStorage } from './storage.js';
import type { AnyRow } from './types.js';

/** One write inside a queued mutation. */
export interface QueuedOp {
  op: 'create' | 'update' | 'delete';
  id: string;
  /** Fields to create with, or the patch of an update. */
  data?: Record<string, unknown>;
  /** Sent as `If-Match` (`if_version` in a batch); null sends none (last write wins). */
  ifVersion?: number | null;
  /** The server's record this write was based on: the `base` of a conflict. */
  base?: AnyRow | null;
  /** Base version still to come from the answer to an earlier queued write to this record. */
  chained?: boolean;
}

/** A queued write as it is persisted. Plain JSON. */
export interface QueuedMutation {
  /** Stable local id (the first idempotency key). */
  qid: string;
  /** The idempotency key of the current attempt (a new one after each conflict resolution). */
  key: string;
  /** Position in the queue. */
  order: number;
  collection: string;
  /** Sent to the batch endpoint (one transaction) rather than a record endpoint. */
  batch: boolean;
  ops: QueuedOp[];
  createdAt: number;
  /** Conflict resolutions so far. */
  attempts: number;
  /** A strategy for this write only. */
  strategy?: ConflictStrategy;
}

export interface OpResult {
  op: 'create' | 'update' | 'delete';
  record: AnyRow;
}

export interface QueueStatus {
  /** Writes waiting or in flight. */
  readonly size: number;
  /** A write is on the wire (or waiting for `onConflict`). */
  readonly inFlight: boolean;
  /** Why nothing is being sent: `offline` (no connection), `auth` (credentials refused), or null. */
  readonly paused: 'offline' | 'auth' | null;
  /** Since the queue was last empty: writes confirmed, failed, and queued in all (progress). */
  readonly completed: number;
  readonly failed: number;
  readonly total: number;
  /** The stored queue has been read (writes from an earlier page load are in `size`). */
  readonly loaded: boolean;
}

export interface ConflictEvent {
  mutation: QueuedMutation;
  collection: string;
  id: string;
  base: AnyRow | null;
  local: AnyRow | null;
  server: AnyRow;
  resolution: ConflictResolution;
  outcome: ConflictOutcome;
}

export interface QueueEvents {
  status: QueueStatus;
  confirmed: { mutation: QueuedMutation; results: OpResult[] };
  failed: { mutation: QueuedMutation; error: LivebaseError };
  conflict: ConflictEvent;
  error: LivebaseError;
}

export interface QueueOptions {
  rest: RestClient;
  cache: RecordCache;
  storage: QueueStorage;
  isOnline: () => boolean;
  conflictStrategy: ConflictStrategy;
  onConflict?: ConflictHandler;
  maxConflictRetries: number;
  retry?: BackoffOptions;
  /** Re-reads the token after a 401; true when it changed (worth one more try). */
  refreshToken: () => Promise<boolean>;
  /** The server's answer to a write: put these records in the cache and live queries. */
  applyConfirmed: (collection: string, results: OpResult[]) => void;
  /** The pending writes to these records changed: live queries recompute them. */
  pendingChanged: (collection: string, ids: string[]) => void;
}

export interface WriteInput {
  op: 'create' | 'update' | 'delete';
  id?: string;
  data?: Record<string, unknown>;
  /** Explicit base version (overrides the one the cache knows). */
  ifVersion?: number | null;
}

interface Deferred {
  resolve: (r: OpResult[]) => void;
  reject: (e: LivebaseError) => void;
}

const SYSTEM = ['id', 'version', 'created_at', 'updated_at'];

function stripSystem(data: Record<string, unknown> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = { ...(data ?? {}) };
  for (const k of SYSTEM) delete out[k];
  return out;
}

type Step = 'done' | 'again' | 'wait' | 'stop';

function idsOf(m: QueuedMutation): string[] {
  return m.ops.map((op) => op.id);
}

/** Longest wait honoured from a server's Retry-After. */
const MAX_RETRY_AFTER_MS = 60_000;

export class MutationQueue extends Emitter<QueueEvents> {
  private items: QueuedMutation[] = [];
  private deferred = new Map<string, Deferred>();
  private persisted = new Map<string, Promise<void>>();
  private running = false;
  private inFlight: QueuedMutation | null = null;
  private pausedAuth = false;
  private closed = false;
  private isLoaded = false;
  private lastOrder = 0;
  private completed = 0;
  private failed = 0;
  private total = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private lastRemoval: Promise<void> = Promise.resolve();
  private retryAfterMs = 0;
  private readonly backoff: Backoff;
  private status: QueueStatus;
  readonly loaded: Promise<void>;

  constructor(private readonly o: QueueOptions) {
    super();
    this.backoff = new Backoff(o.retry ?? { baseMs: 250, capMs: 10_000 });
    this.status = this.computeStatus();
    this.loaded = this.load();
  }

  private async load(): Promise<void> {
    let stored: QueuedMutation[] = [];
    try {
      stored = await this.o.storage.load();
    } catch (e) {
      this.emit('error', new LivebaseError('storage_error', `could not read the offline queue: ${toLivebaseError(e).message}`));
    }
    stored.sort((a, b) => a.order - b.order);
    const known = new Set(this.items.map((m) => m.qid));
    const fresh = stored.filter((m) => !known.has(m.qid));
    // Writes made before the stored queue was read come after it.
    this.items = [...fresh, ...this.items];
    for (const m of fresh) {
      this.lastOrder = Math.max(this.lastOrder, m.order);
      this.persisted.set(m.qid, Promise.resolve());
    }
    this.total += fresh.length;
    this.isLoaded = true;
    for (const m of fresh) this.o.pendingChanged(m.collection, idsOf(m));
    this.emitStatus();
    this.kick();
  }

  /** Pending writes of a collection, in queue order (for optimistic projection). */
  pending(collection?: string): readonly QueuedMutation[] {
    return collection === undefined ? this.items : this.items.filter((m) => m.collection === collection);
  }

  getStatus(): QueueStatus {
    return this.status;
  }

  /** Adds a write; resolves with the server's answer (after any conflict resolution). */
  enqueue(collection: string, inputs: WriteInput[], opts: { batch: boolean; strategy?: ConflictStrategy }): Promise<OpResult[]> {
    if (this.closed) return Promise.reject(new LivebaseError('closed', 'the client is closed'));
    const touchedHere = new Set<string>();
    const ops: QueuedOp[] = inputs.map((w) => {
      if (w.op === 'create') {
        const data = stripSystem(w.data);
        const id = w.id ?? (typeof w.data?.id === 'string' ? w.data.id : recordId());
        touchedHere.add(id);
        return { op: 'create', id, data };
      }
      if (!w.id) throw new LivebaseError('bad_request', `${w.op} needs an id`);
      const op: QueuedOp = { op: w.op, id: w.id };
      if (w.op === 'update') op.data = stripSystem(w.data);
      const entry = this.o.cache.entry(collection, w.id);
      if (w.ifVersion !== undefined) {
        op.ifVersion = w.ifVersion;
        op.base = entry && !entry.deleted && entry.version === w.ifVersion ? entry.row : null;
      } else if (touchedHere.has(w.id)) {
        op.ifVersion = null; // an earlier op of this batch wrote it: same transaction
        op.base = null;
      } else if (this.touches(collection, w.id)) {
        op.chained = true;
        op.base = null;
      } else if (entry && !entry.deleted) {
        op.ifVersion = entry.version;
        op.base = entry.row;
      } else {
        op.ifVersion = null;
        op.base = null;
      }
      touchedHere.add(w.id);
      return op;
    });
    const qid = uuid();
    const order = this.nextOrder();
    const m: QueuedMutation = {
      qid,
      key: qid,
      order,
      collection,
      batch: opts.batch,
      ops,
      createdAt: Date.now(),
      attempts: 0,
      ...(opts.strategy ? { strategy: opts.strategy } : {}),
    };
    if (this.items.length === 0) {
      this.completed = 0;
      this.failed = 0;
      this.total = 0;
    }
    this.items.push(m);
    this.total++;
    this.persisted.set(
      qid,
      this.o.storage.put(m).catch((e) => {
        this.emit('error', new LivebaseError('storage_error', `could not store a queued write: ${toLivebaseError(e).message}`));
      }),
    );
    const promise = new Promise<OpResult[]>((resolve, reject) => this.deferred.set(qid, { resolve, reject }));
    promise.catch(() => {}); // reported through events too; awaiting it is optional
    this.o.pendingChanged(collection, idsOf(m));
    this.emitStatus();
    this.kick();
    return promise;
  }

  /** Tries to send now (after reconnecting, a new token, or a new write). */
  kick(): void {
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    void this.pump();
  }

  /** New credentials: resume a queue paused by a 401. */
  resumeAuth(): void {
    if (!this.pausedAuth) return;
    this.pausedAuth = false;
    this.emitStatus();
    this.kick();
  }

  /** Resolves when the queue is empty (or rejects after `timeoutMs`). */
  async drained(timeoutMs = 60_000): Promise<void> {
    await this.loaded;
    if (this.items.length === 0) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new LivebaseError('timeout', `the queue still holds ${this.items.length} writes after ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on('status', (s) => {
        if (s.size === 0) {
          clearTimeout(timer);
          off();
          resolve();
        }
      });
    });
  }

  /** Resolves once every write so far has reached storage. */
  async flush(): Promise<void> {
    await this.loaded;
    await Promise.all([...this.persisted.values()]);
    await this.lastRemoval;
  }

  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const d of this.deferred.values()) {
      d.reject(new LivebaseError('closed', 'the client closed before this write was confirmed; it stays queued in storage'));
    }
    this.deferred.clear();
  }

  // ---------------------------------------------------------------------------------------

  private nextOrder(): number {
    const o = Math.max(Date.now() * 1000, this.lastOrder + 1);
    this.lastOrder = o;
    return o;
  }

  private touches(collection: string, id: string, after?: QueuedMutation): boolean {
    let seen = after === undefined;
    for (const m of this.items) {
      if (!seen) {
        if (m === after) seen = true;
        continue;
      }
      if (m.collection === collection && m.ops.some((op) => op.id === id)) return true;
    }
    return false;
  }

  private computeStatus(): QueueStatus {
    return Object.freeze({
      size: this.items.length,
      inFlight: this.inFlight !== null,
      paused: this.pausedAuth ? 'auth' : this.o.isOnline() ? null : 'offline',
      completed: this.completed,
      failed: this.failed,
      total: this.total,
      loaded: this.isLoaded,
    });
  }

  /** Publishes a new status when something in it changed. */
  emitStatus(): void {
    const next = this.computeStatus();
    const s = this.status;
    if (
      next.size === s.size &&
      next.inFlight === s.inFlight &&
      next.paused === s.paused &&
      next.completed === s.completed &&
      next.failed === s.failed &&
      next.total === s.total &&
      next.loaded === s.loaded
    ) {
      return;
    }
    this.status = next;
    this.emit('status', next);
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      await this.loaded;
      while (!this.closed) {
        const m = this.items[0];
        if (!m || this.pausedAuth || !this.o.isOnline()) break;
        await this.persisted.get(m.qid);
        if (this.items[0] !== m) continue;
        this.inFlight = m;
        this.emitStatus();
        let step: Step;
        try {
          step = await this.attempt(m);
        } finally {
          this.inFlight = null;
        }
        if (this.closed) break;
        if (step === 'wait') {
          const delay = Math.max(this.backoff.next(), Math.min(this.retryAfterMs, MAX_RETRY_AFTER_MS));
          this.retryAfterMs = 0;
          this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            void this.pump();
          }, delay);
          break;
        }
        if (step === 'stop') break;
        if (step === 'done') this.backoff.reset();
      }
    } finally {
      this.running = false;
      this.emitStatus();
    }
  }

  private async attempt(m: QueuedMutation): Promise<Step> {
    let authRetried = false;
    for (;;) {
      try {
        const results = await this.send(m);
        this.complete(m, results);
        return 'done';
      } catch (e) {
        const err = toLivebaseError(e);
        if (err.status === 409 && err.code === 'version_conflict') {
          const step = await this.onConflict(m, err);
          if (step === 'again') continue;
          return step;
        }
        if (err.status === 401) {
          if (!authRetried && (await this.o.refreshToken().catch(() => false))) {
            authRetried = true;
            continue;
          }
          this.pausedAuth = true;
          this.emit('error', err);
          return 'stop';
        }
        if (err.isTransient) {
          this.retryAfterMs = err.retryAfterMs ?? 0;
          return 'wait';
        }
        const only = m.ops.length === 1 ? m.ops[0] : undefined;
        if (err.status === 404 && err.code === 'not_found' && !m.batch && only?.op === 'delete') {
          // Already gone: what the delete wanted.
          this.complete(m, []);
          return 'done';
        }
        this.fail(m, err);
        return 'done';
      }
    }
  }

  private async send(m: QueuedMutation): Promise<OpResult[]> {
    for (const op of m.ops) {
      if (op.chained) {
        // The earlier write to this record is settled but left no version here: use the newest known.
        const e = this.o.cache.entry(m.collection, op.id);
        op.ifVersion = e && !e.deleted ? e.version : null;
        op.base = e && !e.deleted ? e.row : null;
        op.chained = false;
      }
    }
    const c = encodeURIComponent(m.collection);
    const headers: Record<string, string> = { 'idempotency-key': m.key };
    if (m.batch) {
      const res = await this.o.rest.request<{ results: OpResult[] }>({
        method: 'POST',
        path: `/api/collections/${c}/batch`,
        headers,
        body: {
          ops: m.ops.map((op) => {
            const o: Record<string, unknown> = { op: op.op, id: op.id };
            if (op.op !== 'delete') o.data = op.data ?? {};
            if (op.op !== 'create' && op.ifVersion != null) o.if_version = op.ifVersion;
            return o;
          }),
        },
      });
      return res.data.results;
    }
    const op = m.ops[0]!;
    if (op.ifVersion != null && op.op !== 'create') headers['if-match'] = String(op.ifVersion);
    const path = `/api/collections/${c}/records`;
    switch (op.op) {
      case 'create': {
        const res = await this.o.rest.request<AnyRow>({ method: 'POST', path, headers, body: { ...op.data, id: op.id } });
        return [{ op: 'create', record: res.data }];
      }
      case 'update': {
        const res = await this.o.rest.request<AnyRow>({
          method: 'PATCH',
          path: `${path}/${encodeURIComponent(op.id)}`,
          headers,
          body: op.data ?? {},
        });
        return [{ op: 'update', record: res.data }];
      }
      case 'delete': {
        const res = await this.o.rest.request<AnyRow>({ method: 'DELETE', path: `${path}/${encodeURIComponent(op.id)}`, headers });
        return [{ op: 'delete', record: res.data }];
      }
    }
  }

  private remove(m: QueuedMutation): void {
    const i = this.items.indexOf(m);
    if (i >= 0) this.items.splice(i, 1);
    this.persisted.delete(m.qid);
    this.lastRemoval = this.o.storage.remove(m.qid).catch((e) => {
      this.emit('error', new LivebaseError('storage_error', `could not remove a settled write from storage: ${toLivebaseError(e).message}`));
    });
  }

  /** Later writes chained to this record take their base from `row` (null: unknown / deleted). */
  private unchain(m: QueuedMutation, id: string, row: AnyRow | null): void {
    let found = false;
    for (const later of this.items) {
      if (found) break;
      if (later === m || later.collection !== m.collection) continue;
      for (const op of later.ops) {
        if (op.id !== id) continue;
        found = true;
        if (op.chained) {
          op.chained = false;
          op.ifVersion = row ? row.version : null;
          op.base = row;
          const p = this.o.storage.put(later).catch((e) => {
            this.emit('error', new LivebaseError('storage_error', `could not update a queued write: ${toLivebaseError(e).message}`));
          });
          this.persisted.set(later.qid, p);
        }
        break;
      }
    }
  }

  private complete(m: QueuedMutation, results: OpResult[]): void {
    this.remove(m);
    this.o.applyConfirmed(m.collection, results);
    const byId = new Map<string, AnyRow | null>();
    for (const r of results) byId.set(r.record.id, r.op === 'delete' ? null : r.record);
    for (const op of m.ops) {
      const row = byId.has(op.id) ? byId.get(op.id)! : (this.o.cache.row(m.collection, op.id) ?? null);
      this.unchain(m, op.id, row);
    }
    this.completed++;
    const d = this.deferred.get(m.qid);
    this.deferred.delete(m.qid);
    d?.resolve(results);
    this.emit('confirmed', { mutation: m, results });
    this.o.pendingChanged(m.collection, idsOf(m));
    this.emitStatus();
  }

  private fail(m: QueuedMutation, err: LivebaseError): void {
    this.remove(m);
    for (const op of m.ops) this.unchain(m, op.id, this.o.cache.row(m.collection, op.id) ?? null);
    this.failed++;
    const d = this.deferred.get(m.qid);
    this.deferred.delete(m.qid);
    d?.reject(err);
    this.emit('failed', { mutation: m, error: err });
    this.emit('error', err);
    this.o.pendingChanged(m.collection, idsOf(m));
    this.emitStatus();
  }

  private async onConflict(m: QueuedMutation, err: LivebaseError): Promise<Step> {
    const details = (err.details ?? {}) as { current?: AnyRow; fields?: string[]; index?: number };
    const server = details.current;
    const index = m.batch ? (details.index ?? 0) : 0;
    const op = m.ops[index];
    if (!server || !op || op.op === 'create') {
      this.fail(m, err);
      return 'done';
    }
    this.o.cache.acceptRow(m.collection, server);
    if (m.attempts >= this.o.maxConflictRetries) {
      this.fail(
        m,
        new LivebaseError('version_conflict', `still conflicting after ${m.attempts} resolutions: ${err.message}`, 409, err.details),
      );
      return 'done';
    }
    const base = op.base ?? null;
    const patch = op.op === 'update' ? (op.data ?? {}) : null;
    const local = op.op === 'update' ? ({ ...(base ?? server), ...patch } as AnyRow) : null;
    const fields = Array.isArray(details.fields) ? details.fields : [];
    let resolution: ConflictResolution;
    try {
      if (m.strategy) resolution = m.strategy;
      else if (this.o.onConflict) {
        resolution = await this.o.onConflict(base, local, server, {
          collection: m.collection,
          id: op.id,
          op: op.op,
          fields,
          attempt: m.attempts,
        });
      } else resolution = this.o.conflictStrategy;
    } catch (e) {
      this.fail(m, new LivebaseError('conflict_handler_failed', `onConflict threw: ${toLivebaseError(e).message}`, 409, err.details));
      return 'done';
    }
    let outcome: ConflictOutcome;
    try {
      outcome = resolveConflict(resolution, op.op, base, patch, server, fields);
    } catch (e) {
      this.fail(m, new LivebaseError('bad_resolution', toLivebaseError(e).message, 409, err.details));
      return 'done';
    }
    m.attempts++;
    this.emit('conflict', { mutation: m, collection: m.collection, id: op.id, base, local, server, resolution, outcome });
    if (this.closed) return 'stop';
    const touched = idsOf(m);
    if (outcome.kind === 'drop') {
      if (!m.batch || m.ops.length === 1) {
        this.complete(m, [{ op: 'update', record: server }]);
        return 'done';
      }
      m.ops.splice(index, 1);
      this.o.applyConfirmed(m.collection, [{ op: 'update', record: server }]);
    } else if (outcome.kind === 'update') {
      op.op = 'update';
      op.data = outcome.data;
      op.ifVersion = outcome.ifVersion;
      op.base = server;
    } else {
      op.op = 'delete';
      delete op.data;
      op.ifVersion = outcome.ifVersion;
      op.base = server;
    }
    // The stored answer under the old key is the 409: the next attempt needs its own key.
    m.key = `${m.qid}~${m.attempts}`;
    const p = this.o.storage.put(m);
    this.persisted.set(m.qid, p.catch(() => {}));
    try {
      await p;
    } catch (e) {
      this.emit('error', new LivebaseError('storage_error', `could not store a resolved write: ${toLivebaseError(e).message}`));
    }
    this.o.pendingChanged(m.collection, touched);
    return 'again';
  }
}
